"""Progress bars (tqdm) for training and evaluation loops.

A bar shows a few chosen metrics as its postfix and is silent when disabled or when stderr is not
a terminal and `force` is off, so logs of batch jobs stay clean.
"""

from __future__ import annotations

import math
import sys
from typing import Mapping, Sequence

from tqdm.auto import tqdm

# Metrics shown by the training bar, in order, with short labels; missing ones are skipped.
TRAIN_POSTFIX = (
    ("score/reward", "R"),
    ("score/productivity", "prod"),
    ("rollout/ask_ratio", "ask"),
    ("train/loss", "loss"),
    ("train/grad_norm", "gnorm"),
    ("time/step", "s/step"),
)


class ProgressBar:
    """A tqdm bar over steps (or episodes) with a metrics postfix.

    Args:
      total: number of steps in the whole run.
      initial: steps already done (a resumed run starts here).
      desc: label.
      enabled: False turns it into a no-op.
      postfix: (metric name, label) pairs to display.
      force: show even when stderr is not a terminal.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        enabled: bool = True,
        postfix: Sequence[tuple[str, str]] = TRAIN_POSTFIX,
        force: bool = False,
    ):
        show = enabled and (force or sys.stderr.isatty())
        self._postfix = tuple(postfix)
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if show else None

    def update(self, n: int = 1, metrics: Mapping[str, float] | None = None) -> None:
        if self._bar is None:
            return
        if metrics:
            shown = {}
            for key, label in self._postfix:
                v = metrics.get(key)
                if v is not None and math.isfinite(v):
                    shown[label] = f"{v:.3g}"
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
