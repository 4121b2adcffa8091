"""Value rules applied when a config is loaded: ranges of numbers, choices of strings.

The loader (`ppp_jax.config.loader`) checks every field's type; these rules say which values
of a well-typed field make sense, so that `trainer.save_every=0` fails when the config is read,
naming `trainer.save_every` and the allowed range, before any model or engine is built, and not
in the middle of training. Each schema module registers the rules of its classes next to them
(`register_rules(TrainerSection, {"save_every": POSITIVE, ...})`), the run config's module also
those of the lower layers' schemas it uses (`sampling.EngineConfig`, `envs.EpisodeConfig`, ...),
which cannot import the config layer. A subclass inherits its bases' rules; a tuple field's rule
applies to each item.

Every int and float field of the run config has a rule or is listed in `UNCHECKED` with its
reason; `tests/ppp_jax/test_config_faults.py` walks the schema tree to keep it that way.
Cross-field rules (the engine's page pool holding one sequence, `rl.loss.temperature ==
rollout.temperature`) stay in the classes' `__post_init__`. This module imports no schema, so
every schema module (and the loader) can import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ppp_jax.model.config import DTYPES


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


_RULES: dict[type, dict[str, Check]] = {}

# Numeric fields of the run config with no rule, and why (the completeness test reads this).
UNCHECKED: dict[str, str] = {
    "sharding.mesh.shape": "checked by MeshConfig itself (sizes >= 1 or one -1)",
    "engine.mesh.shape": "checked by MeshConfig itself (sizes >= 1 or one -1)",
    "rl.loss.entropy_coef": "either sign is meaningful (bonus or penalty on entropy)",
}


def register_rules(cls: type, rules: dict[str, Check]) -> None:
    """Adds value rules for the fields of the schema `cls` (merged with earlier ones)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(rules) - fields)
    if unknown:
        raise ValueError(f"rules for {cls.__name__} name no field: {unknown}")
    _RULES.setdefault(cls, {}).update(rules)


def rules_for(cls: type) -> dict[str, Check]:
    """The rules of a schema class, its bases' rules included (a subclass's win)."""
    out: dict[str, Check] = {}
    for klass in reversed(cls.__mro__):
        out.update(_RULES.get(klass, {}))
    return out


def problem(check: Check, value: Any) -> str | None:
    """Why `value` breaks `check` (None if it is allowed). None values (an optional field left
    unset) are always allowed: the type check has already admitted them."""
    if value is None or check.allows(value):
        return None
    return f"{value!r} is not allowed; must be {check.describe()}"
