"""The domain registry: name -> (the domain's config section, its builder).

Each domain module registers itself when it is imported:

    register_domain(DOMAIN, MySection, build_domain)

`MySection` is a frozen dataclass of the domain's own config keys, and `build_domain(section)`
returns `(tasks, domain)`: the domain's tasks and the `TaskDomain` the episode runner talks to
(whose `task_family` the records and the reward use). The run config's `domain.name` picks the
spec (`get_domain`); the trainer's `build_tasks` only looks it up and calls `spec.build` on
`spec.section_from(cfg.domain)`, so it never names a domain.

Adding a domain:
  1. write `envs/domains/<name>.py` with its `TaskDomain` (`name`, `task_family`, tools, score);
  2. in it, a frozen dataclass of its config keys (prefix them with the domain, e.g. `swe_rows`:
     they share the flat `domain:` YAML section) and a `build_domain(section) -> (tasks, domain)`;
  3. call `register_domain(DOMAIN, TheSection, build_domain)` at the bottom of the module;
  4. add the section to `ppp_jax.config.run.DomainSection`'s bases (importing the module there
     registers the domain and puts its keys in the typed YAML section; a domain with no keys
     of its own only needs to be imported before its config is built).
No trainer code changes: `ppp_jax.train.builders.build_tasks` finds it by `domain.name`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from ppp_jax.envs.domains.base import Task

Build = Callable[[Any], tuple[Sequence[Task], Any]]


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    """A registered domain.

    name: the `domain.name` that selects it (also the name its tasks and records carry).
    section: the frozen dataclass of its own config keys.
    build: `section -> (tasks, domain)`.
    """

    name: str
    section: type
    build: Build

    def section_from(self, config: Any) -> Any:
        """This domain's section, with each of its keys read from `config` (the run config's
        flat `domain` section, or any object with those attributes)."""
        values = {}
        for f in dataclasses.fields(self.section):
            if not f.init:
                continue
            if not hasattr(config, f.name):
                raise ValueError(
                    f"domain {self.name!r}: its config key {f.name!r} is not in "
                    f"{type(config).__name__} (add {self.section.__name__} to the bases of "
                    "ppp_jax.config.run.DomainSection)")
            values[f.name] = getattr(config, f.name)
        return self.section(**values)


_REGISTRY: dict[str, DomainSpec] = {}


def register_domain(name: str, section: type, build: Build, *, replace: bool = False) -> DomainSpec:
    """Registers a domain under `name`; a second registration of a name raises unless `replace`
    (or it comes from the same module again, e.g. a reload)."""
    if not name:
        raise ValueError("a domain needs a non-empty name")
    if not (isinstance(section, type) and dataclasses.is_dataclass(section)):
        raise TypeError(f"domain {name!r}: section must be a dataclass type, got {section!r}")
    old = _REGISTRY.get(name)
    if old is not None and not replace and old.build.__module__ != build.__module__:
        raise ValueError(f"domain {name!r} is already registered (by {old.build.__module__})")
    spec = DomainSpec(name, section, build)
    _REGISTRY[name] = spec
    return spec


def unregister_domain(name: str) -> None:
    """Removes a registration (tests); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def registered_domains() -> tuple[str, ...]:
    """The registered domain names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_domain(name: str) -> DomainSpec:
    """The spec registered under `name`; ValueError listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; registered domains: "
                         f"{list(registered_domains())}") from None
