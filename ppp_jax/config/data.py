"""The data section: how task records become training batches."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ppp_jax.config.rules import (
    NON_NEGATIVE,
    POSITIVE,
    PRECISE_PREFERENCE,
    PREFERENCE,
    SEED,
    register_rules,
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How task records become training batches.

    Attributes:
      train_path: a `.jsonl` file of task records (one JSON object a line) or a `.json` list, read
        by `ppp_jax.train.data.make_dataset` when it is called from code without records; ""
        when the records are passed in code. No `ppp` command reads it (they take their tasks
        from the `domain` section), so a run config that sets it is refused at load time.
      batch_size: prompts per optimizer step, over all processes (paper: 64; released script: 32).
        Each prompt is rolled out G times by the orchestrator; G is not a data setting.
      seed: shuffle seed; each epoch is reshuffled with a seed derived from it.
      num_epochs: passes over the expanded prompts; None repeats forever (the trainer stops by
        step count).
      vague_preferences: preference ids paired with the vague prompt; empty means the registry's
        training split (`ppp_jax.envs.preferences`, the paper's 12 seen preferences).
      vague_copies: copies of each (instance, preference, vague) prompt (paper: 1).
      include_precise: also add the precise-prompt copies (paper: yes, once per instance).
      precise_preference: the simulated user for the precise copy. "no_preference" (our default;
        the paper does not say), any preference id, or "random": one of `vague_preferences`,
        drawn per instance from `seed` (so it is fixed for the run).
      precise_copies: precise-prompt copies per instance (paper: 1).
      on_malformed: for task records (`make_dataset`): "error" stops at the first bad row, naming
        it and the field; "skip" drops bad rows, logs each, and counts them in `DataStats`. The
        domains' own data files always refuse a malformed row (`ppp_jax.envs.domains.rows`).
    """

    train_path: str = ""
    batch_size: int = 64
    seed: int = 0
    num_epochs: int | None = None
    vague_preferences: tuple[str, ...] = ()
    vague_copies: int = 1
    include_precise: bool = True
    precise_preference: str = "no_preference"
    precise_copies: int = 1
    on_malformed: Literal["error", "skip"] = "error"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.vague_copies < 0 or self.precise_copies < 0:
            raise ValueError("vague_copies and precise_copies must be >= 0")


register_rules(DataConfig, {
    "batch_size": POSITIVE, "seed": SEED, "num_epochs": POSITIVE,
    "vague_preferences": PREFERENCE, "vague_copies": NON_NEGATIVE,
    "precise_preference": PRECISE_PREFERENCE, "precise_copies": NON_NEGATIVE})
