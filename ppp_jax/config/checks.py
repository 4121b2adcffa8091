"""Value checks applied when a config is loaded: ranges of numbers, choices of strings.

The loader (`ppp_jax.config.loader`) checks every field's type; this module says which values
of a well-typed field make sense, so that `trainer.save_every=0` fails when the config is read,
naming `trainer.save_every` and the allowed range, before any model or engine is built, and not
in the middle of training. The rules are data, keyed by schema class (a subclass inherits its
bases' rules), so the schemas of lower layers (`sampling.EngineConfig`, `envs.EpisodeConfig`,
...) get their checks here without importing the config layer.

Every int and float field of the run config has a rule here or is listed in `UNCHECKED` with
its reason; `tests/ppp_jax/test_config_faults.py` walks the schema tree to keep it that way.
Cross-field rules (the engine's page pool holding one sequence, `rl.loss.temperature ==
rollout.temperature`) stay in the classes' `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from ppp_jax.config.checkpoint import CheckpointConfig
from ppp_jax.config.compile import CompileSpec, EngineSpec, ModelSizes, ModelSpec
from ppp_jax.config.data import DataConfig
from ppp_jax.config.distributed import DistributedConfig
from ppp_jax.config.rl import AdvantageConfig, DapoConfig, LossConfig, OptimConfig, RLConfig
from ppp_jax.envs.domains.stdlib_loc import StdlibLocConfig
from ppp_jax.envs.episode import EpisodeConfig
from ppp_jax.envs.reward import RewardConfig
from ppp_jax.envs.simulator_backends import SimulatorConfig
from ppp_jax.model.config import DTYPES
from ppp_jax.sampling.config import EngineConfig


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or open interval of numbers; None leaves that side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "any number"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a set of strings, computed when checked (e.g. the preference registry's ids)."""

    choices: Callable[[], Sequence[str]]
    what: str = ""

    def allows(self, value: Any) -> bool:
        return value in self.choices()

    def describe(self) -> str:
        return f"one of {list(self.choices())}" + (f" ({self.what})" if self.what else "")


@dataclasses.dataclass(frozen=True)
class Url:
    """An http(s) URL (an endpoint's base URL)."""

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and value.startswith(("http://", "https://")) and \
            len(value) > len("https://")

    def describe(self) -> str:
        return "an http:// or https:// URL"


Check = Range | OneOf | Url


def _num(x: float) -> str:
    if x == 2**32:
        return "2**32"
    return str(int(x)) if float(x).is_integer() else repr(x)


def _preference_ids() -> tuple[str, ...]:
    from ppp_jax.envs import preferences  # the registry of the 20 preferences

    return tuple(preferences.TRAIN_IDS) + tuple(preferences.HELDOUT_IDS)


POSITIVE = Range(1)  # a count that must be at least one
NON_NEGATIVE = Range(0)
SEED = Range(0, 2**32, high_open=True)
PROBABILITY = Range(0, 1)
DROPOUT = Range(0, 1, high_open=True)
GT_ZERO = Range(0, low_open=True)
DTYPE = OneOf(lambda: DTYPES, "a dtype name")
PREFERENCE = OneOf(_preference_ids, "a preference id of ppp_jax.envs.preferences")
PRECISE_PREFERENCE = OneOf(lambda: ("random",) + _preference_ids(),
                           "a preference id, or 'random'")


@functools.lru_cache(maxsize=1)
def _run_sections() -> dict[type, dict[str, Check]]:
    # The run config's own sections live in run.py, which imports this module's neighbours;
    # imported here, when the first check is looked up, so run.py can import the loader freely.
    from ppp_jax.config import run

    return {
        run.RunConfig: {"seed": SEED},
        run.PolicySection: {"init_seed": SEED, "dropout": DROPOUT},
        run.RolloutConfig: {
            "temperature": NON_NEGATIVE, "top_p": Range(0, 1, low_open=True),
            "top_k": NON_NEGATIVE, "concurrency": POSITIVE, "max_episode_retries": NON_NEGATIVE,
            "row_len": POSITIVE, "pad_to_multiple": POSITIVE, "rows_multiple": POSITIVE},
        run.TrainerSection: {"num_steps": POSITIVE, "save_every": POSITIVE, "keep": POSITIVE},
        run.EvalSection: {
            "num_tasks": NON_NEGATIVE, "episodes_per_prompt": POSITIVE,
            "temperature": NON_NEGATIVE, "seed": SEED, "preference_ids": PREFERENCE,
            "openai_base_url": Url()},
        run.SFTSection: {
            "num_episodes": POSITIVE, "num_steps": POSITIVE, "batch_size": POSITIVE,
            "row_len": POSITIVE, "rows_multiple": POSITIVE, "learning_rate": NON_NEGATIVE,
            "warmup_steps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
            "ask_vague": PROBABILITY, "ask_precise": PROBABILITY,
            "follow_preference": PROBABILITY, "effort_mix": PROBABILITY, "seed": SEED},
        run.DemoSection: {"tokenizer_vocab": Range(256), "num_train_tasks": NON_NEGATIVE},
    }


# Rules of the schemas defined outside run.py (a tuple field's rule applies to each item).
RULES: dict[type, dict[str, Check]] = {
    ModelSpec: {"param_dtype": DTYPE, "dtype": DTYPE},
    ModelSizes: {
        "vocab_size": POSITIVE, "hidden_size": POSITIVE, "intermediate_size": POSITIVE,
        "num_layers": POSITIVE, "num_heads": POSITIVE, "num_kv_heads": POSITIVE,
        "head_dim": POSITIVE, "rope_theta": GT_ZERO, "rms_norm_eps": GT_ZERO,
        "attention_dropout": DROPOUT, "residual_dropout": DROPOUT,
        "max_position_embeddings": POSITIVE, "bos_token_id": NON_NEGATIVE,
        "pad_token_id": NON_NEGATIVE, "eos_token_id": NON_NEGATIVE},
    CompileSpec: {"batch": POSITIVE, "seq_len": POSITIVE},
    EngineConfig: {
        "num_slots": POSITIVE, "page_size": POSITIVE, "num_pages": Range(2),
        "max_seq_len": POSITIVE, "decode_steps": POSITIVE, "prefill_chunks": POSITIVE,
        "prefill_rows": POSITIVE, "block_pages": POSITIVE, "max_stop_tokens": POSITIVE,
        "kv_dtype": DTYPE},
    EngineSpec: {"dtype": DTYPE},
    AdvantageConfig: {"group_size": POSITIVE, "eps": NON_NEGATIVE},
    LossConfig: {
        "clip_ratio_low": Range(0, 1, high_open=True), "clip_ratio_high": NON_NEGATIVE,
        "clip_ratio_c": Range(1, low_open=True), "log_ratio_clamp": GT_ZERO,
        "loss_scale_factor": POSITIVE, "kl_coef": NON_NEGATIVE, "tis_cap": GT_ZERO,
        "temperature": GT_ZERO},
    DapoConfig: {"max_gen_batches": NON_NEGATIVE, "overlong_buffer_len": POSITIVE,
                 "overlong_penalty_factor": NON_NEGATIVE, "max_response_len": POSITIVE},
    OptimConfig: {
        "learning_rate": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
        "b1": Range(0, 1, high_open=True), "b2": Range(0, 1, high_open=True),
        "eps": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "total_steps": POSITIVE,
        "final_lr_ratio": PROBABILITY, "max_grad_norm": GT_ZERO},
    RLConfig: {"num_micro_batches": POSITIVE, "logprob_chunk_size": POSITIVE},
    StdlibLocConfig: {
        "num_tasks": POSITIVE, "seed": SEED, "per_file": POSITIVE, "test_fraction": PROBABILITY,
        "min_doc_words": NON_NEGATIVE, "min_body_statements": NON_NEGATIVE,
        "max_doc_words": POSITIVE},
    DataConfig: {
        "batch_size": POSITIVE, "seed": SEED, "num_epochs": POSITIVE,
        "vague_preferences": PREFERENCE, "vague_copies": NON_NEGATIVE,
        "precise_preference": PRECISE_PREFERENCE, "precise_copies": NON_NEGATIVE},
    SimulatorConfig: {
        "max_questions": NON_NEGATIVE, "base_url": Url(), "timeout_s": GT_ZERO,
        "max_retries": NON_NEGATIVE, "max_concurrency": POSITIVE},
    RewardConfig: {"proactivity_weight": NON_NEGATIVE, "personalization_weight": NON_NEGATIVE,
                   "correct_threshold": PROBABILITY},
    EpisodeConfig: {
        "max_turns": POSITIVE, "max_context_tokens": POSITIVE, "turn_max_new_tokens": POSITIVE,
        "min_turn_tokens": NON_NEGATIVE, "tool_timeout_s": GT_ZERO,
        "simulator_timeout_s": GT_ZERO},
    CheckpointConfig: {"save_every": POSITIVE, "keep": POSITIVE, "keep_period": POSITIVE},
    DistributedConfig: {"num_processes": POSITIVE, "process_id": NON_NEGATIVE,
                        "local_device_count": POSITIVE, "initialization_timeout_s": POSITIVE},
}

# Numeric fields with no rule, and why (the completeness test reads this).
UNCHECKED: dict[str, str] = {
    "sharding.mesh.shape": "checked by MeshConfig itself (sizes >= 1 or one -1)",
    "engine.mesh.shape": "checked by MeshConfig itself (sizes >= 1 or one -1)",
    "rl.loss.entropy_coef": "either sign is meaningful (bonus or penalty on entropy)",
}

_EXTRA: dict[type, dict[str, Check]] = {}


def register_checks(cls: type, rules: dict[str, Check]) -> None:
    """Adds rules for a schema defined in a higher layer (e.g. a command's own config)."""
    _EXTRA.setdefault(cls, {}).update(rules)


def checks_for(cls: type) -> dict[str, Check]:
    """The rules of a schema class, its bases' rules included (a subclass's win)."""
    table = {**RULES, **_run_sections(), **_EXTRA}
    out: dict[str, Check] = {}
    for klass in reversed(cls.__mro__):
        out.update(table.get(klass, {}))
    return out


def problem(check: Check, value: Any) -> str | None:
    """Why `value` breaks `check` (None if it is allowed). None values (an optional field left
    unset) are always allowed: the type check has already admitted them."""
    if value is None or check.allows(value):
        return None
    return f"{value!r} is not allowed; must be {check.describe()}"
