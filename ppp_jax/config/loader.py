"""Configuration as data: YAML files loaded into typed, frozen dataclasses.

Every run config is a tree of frozen dataclasses. `load_config(path, Schema, overrides)` reads a
YAML file, applies `key.sub=value` command-line overrides, and builds the dataclass tree, checking
every key and every type on the way. Unknown keys and wrong types raise `ConfigError` with the
dotted path of the offending key and the list of valid keys at that level.

Supported field types: bool, int, float, str, `X | None`, `Literal[...]`, `tuple[X, ...]`,
`tuple[X, Y]`, `dict[str, X]`, and nested dataclasses. A YAML file may name a base file with
`base: other.yaml` (relative to itself); the file's keys are merged over the base's.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, get_args, get_origin

import yaml

from ppp_jax.config.rules import problem, rules_for

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match its schema.

    Attributes:
      keys: the dotted keys the error is about ("trainer.save_every"), so that `load_config`
        can say where each came from (a YAML file and line, or a command-line override).
    """

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = tuple(keys)


class FieldError(ValueError):
    """Raised by a schema's `__post_init__` about one of its fields (a dotted path relative to
    the class, e.g. "save_every" or "data.train_path"); the loader names the full dotted key."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Checks `value` against the type annotation `tp`, converting where lossless."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} does not match {_type_name(tp)}", (path,))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}", (path,))
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}",
                              (path,))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}", (path,))
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}", (path,))
        return {_convert(k, key_tp, path): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}",
                              (path,))
        return _build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected bool, got {type(value).__name__} {value!r}", (path,))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected int, got {type(value).__name__} {value!r}", (path,))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `1e-6` (no dot) as a string; accept it where a float is expected.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected float, got {type(value).__name__} {value!r}", (path,))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected str, got {type(value).__name__} {value!r}", (path,))
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}", (path,))


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or "<root>"
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys for {cls.__name__}: {sorted(fields)}",
            tuple(_key(path, k) for k in unknown))
    kwargs = {}
    rules = rules_for(cls)
    for name, value in data.items():
        key = _key(path, name)
        kwargs[name] = value = _convert(value, hints[name], key)
        rule = rules.get(name)
        if rule is None:
            continue
        items = list(enumerate(value)) if isinstance(value, tuple) else [(None, value)]
        for i, item in items:
            why = problem(rule, item)
            if why:
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"{where}: {why}", (key,))
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"{path or '<root>'}: missing required key(s) {missing} for {cls.__name__}",
            tuple(_key(path, n) for n in missing))
    try:
        return cls(**kwargs)
    except FieldError as e:
        key = _key(path, e.field)
        raise ConfigError(f"{key}: {e.reason}", (key,)) from None
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path or '<root>'}: {e}", (path,) if path else ()) from e


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Builds the dataclass `cls` from a plain nested dict, checking keys and types."""
    return _build(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """The inverse of `from_dict`: a plain nested dict (tuples become lists) for YAML/JSON."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def _read_yaml(path: Path, seen: tuple[Path, ...] = (),
               origins: dict[str, str] | None = None) -> dict[str, Any]:
    """The YAML mapping of `path` merged over its `base:` chain. With `origins`, also fills in
    where each dotted key was written ("file:line"; a later file's keys win)."""
    shown = str(path)
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular `base:` chain {[str(p) for p in seen]}")
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{shown}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}: not valid YAML: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{shown}: base: expected a file name, got {base!r}")
        merged = _read_yaml(Path(shown).parent / base, seen + (path,), origins)
        _deep_merge(merged, data)
        data = merged
    if origins is not None:
        _key_lines(yaml.compose(text), "", shown, origins)
        origins.pop("base", None)
    return data


def _key_lines(node: Any, prefix: str, shown: str, out: dict[str, str]) -> None:
    """Records "file:line" of every dotted key of a composed YAML mapping."""
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = _key(prefix, str(key_node.value))
        out[key] = f"{shown}:{key_node.start_mark.line + 1}"
        _key_lines(value_node, key, shown, out)


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses `a.b.c=value`; the value is read as YAML (so `3`, `1e-6`, `true`, `[1,2]` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Applies `key.sub=value` overrides to a nested dict (in place; also returned)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def check_override_key(cls: type, text: str) -> str:
    """The dotted key of the override `text` ("a.b=1" -> "a.b"), checked against the schema
    `cls`: an unknown key raises ConfigError naming the whole dotted key, the override, and the
    valid keys where it went wrong."""
    keys, _ = parse_override(text)
    tp: Any = cls
    for depth, k in enumerate(keys):
        tp = _unwrap_optional(tp)
        done = ".".join(keys[:depth])
        if dataclasses.is_dataclass(tp):
            fields = {f.name for f in dataclasses.fields(tp) if f.init}
            if k not in fields:
                where = f"in section {done!r}" if done else "at the top level"
                raise ConfigError(
                    f"override {text!r}: unknown key {'.'.join(keys)!r} ({k!r} is not a key "
                    f"{where}); valid keys for {tp.__name__}: {sorted(fields)}",
                    (".".join(keys),))
            tp = typing.get_type_hints(tp)[k]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif tp is Any:
            break
        else:
            raise ConfigError(f"override {text!r}: {done!r} is a value ({_type_name(tp)}), not a "
                              f"section, so it has no key {k!r}", (done,))
    return ".".join(keys)


def _blame(error: ConfigError, path: str | Path, origins: dict[str, str],
           overrides: dict[str, str]) -> str:
    """`error` prefixed with what caused it: the override that set its key (or a section
    above it), else the YAML file and line that wrote it, else the file."""
    for key in error.keys:
        for set_key, text in reversed(list(overrides.items())):
            if key == set_key or key.startswith((set_key + ".", set_key + "[")):
                return f"override {text!r}: {error}"
    for key in error.keys:
        probe = key
        while probe:
            if probe in origins:
                return f"{origins[probe]}: {error}"
            probe = probe.rpartition(".")[0]
    return f"{path}: {error}"


def load_config(
    path: str | Path, cls: type[T], overrides: list[str] | tuple[str, ...] = (),
    only_sections: tuple[str, ...] | None = None,
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> T:
    """Loads a YAML run config into the dataclass `cls`, with `key.sub=value` overrides.

    Raises ConfigError naming the bad key (dotted), what is wrong with it, and where it came
    from: `file:line` for a key written in a YAML file, `override 'k=v'` for one given on the
    command line. Unknown keys list the valid ones; values outside their allowed range
    (`ppp_jax.config.rules`) name it. With `only_sections`, the file's and the overrides'
    other top-level keys are left out (a command that reads part of a run config). `resolve`,
    if given, is applied to the merged data (file + overrides) before the schema builds it: it
    may fill keys the data leaves unset (`ppp_jax.config.profiles.resolve_profile`).
    """
    origins: dict[str, str] = {}
    data = _read_yaml(Path(path), origins=origins)
    if only_sections is not None:
        data = {k: v for k, v in data.items() if k in only_sections}
        overrides = [o for o in overrides
                     if parse_override(o)[0][0] in only_sections]
    set_by_override = {check_override_key(cls, text): text for text in overrides}
    apply_overrides(data, overrides)
    if resolve is not None:
        data = resolve(data)
    try:
        return _build(cls, data)
    except ConfigError as e:
        raise ConfigError(_blame(e, path, origins, set_by_override), e.keys) from None


def file_sections(path: str | Path) -> set[str]:
    """The top-level keys of a YAML config, its `base:` chain merged (which sections it writes)."""
    return set(_read_yaml(Path(path)))


def replace(config: T, **changes: Any) -> T:
    """`dataclasses.replace` re-exported, for frozen configs."""
    return dataclasses.replace(config, **changes)
