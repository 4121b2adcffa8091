"""The checkpoint section: where training checkpoints go and how often."""

from __future__ import annotations

import dataclasses

from ppp_jax.config.rules import POSITIVE, register_rules


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often the trainer checkpoints.

    Attributes:
      directory: root directory of the run's checkpoints ("" disables checkpointing).
      save_every: save when `step % save_every == 0` (released PPP script: every 10 steps).
      keep: finished checkpoints kept on disk (the newest ones); None keeps all.
      keep_period: additionally keep every checkpoint whose step is a multiple of this.
      async_save: write in a background thread while training continues.
    """

    directory: str = ""
    save_every: int = 10
    keep: int | None = 3
    keep_period: int | None = None
    async_save: bool = True

    def __post_init__(self):
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep must be >= 1 or None, got {self.keep}")


register_rules(CheckpointConfig, {"save_every": POSITIVE, "keep": POSITIVE,
                                  "keep_period": POSITIVE})
