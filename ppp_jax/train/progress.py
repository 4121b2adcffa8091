"""Progress bars (tqdm) for training and evaluation loops.

A bar shows a few chosen metrics as its postfix. When stderr is not a terminal (a batch job's
log) no bar is drawn; one plain line is written instead every `log_every_s` seconds and at the
end, so a long evaluation or run still shows it is alive without filling the log.
"""

from __future__ import annotations

import math
import sys
import time
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
      force: draw the bar even when stderr is not a terminal.
      log_every_s: when no bar is drawn (stderr not a terminal), seconds between progress lines.
      stream: where the progress lines go (default: sys.stderr at the time of each line).
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
        log_every_s: float = 30.0,
        stream=None,
    ):
        show = enabled and (force or sys.stderr.isatty())
        self._postfix = tuple(postfix)
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if show else None
        # Plain-line fallback (enabled, but no terminal to draw on).
        self._lines = enabled and not show
        self._desc, self._total, self._done, self._initial = desc, total, initial, initial
        self._every, self._stream = log_every_s, stream
        self._start = self._last = time.monotonic()
        self._shown: dict[str, str] = {}

    def update(self, n: int = 1, metrics: Mapping[str, float] | None = None) -> None:
        if metrics:
            shown = {}
            for key, label in self._postfix:
                v = metrics.get(key)
                if v is not None and math.isfinite(v):
                    shown[label] = f"{v:.3g}"
            self._shown = shown
            if self._bar is not None:
                self._bar.set_postfix(shown, refresh=False)
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and time.monotonic() - self._last >= self._every:
            self._log_line()

    def _log_line(self) -> None:
        now = time.monotonic()
        self._last = now
        pct = f" ({100 * self._done / self._total:.0f}%)" if self._total else ""
        post = "".join(f" {k}={v}" for k, v in self._shown.items())
        rate = (self._done - self._initial) / max(now - self._start, 1e-9)
        eta = (f", about {(self._total - self._done) / rate:.0f} s left"
               if rate > 0 and self._total and self._done < self._total else "")
        print(f"[{self._desc}] {self._done}/{self._total}{pct} after {now - self._start:.0f} s"
              f"{eta}{post}", file=self._stream or sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines:
            self._log_line()
            self._lines = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
