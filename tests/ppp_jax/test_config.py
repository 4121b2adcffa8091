"""The config system: YAML into typed frozen dataclasses, overrides, clear errors."""

import dataclasses
from typing import Literal

import pytest

from ppp_jax.config.loader import ConfigError, from_dict, load_config, to_dict


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-6
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    optim: Optim = Optim()
    mesh: tuple[int, ...] = (1, 1, 1)
    seed: int | None = None
    debug: bool = False


def test_yaml_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\noptim:\n  lr: 0.001\n  warmup_steps: 5\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nname: run\nmesh: [2, 2, 2]\n")
    cfg = load_config(tmp_path / "run.yaml", Run, ["optim.lr=3e-6", "optim.schedule=cosine", "seed=7"])
    assert cfg == Run(name="run", optim=Optim(lr=3e-6, warmup_steps=5, schedule="cosine"), mesh=(2, 2, 2), seed=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"
    assert from_dict(Run, to_dict(cfg)) == cfg


def test_unknown_key_lists_valid_keys(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\noptim:\n  learning_rate: 1.0\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "r.yaml", Run)
    msg = str(e.value)
    assert "optim" in msg and "learning_rate" in msg and "['lr', 'schedule', 'warmup_steps']" in msg


def test_unknown_override_key(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sed'\].*valid keys"):
        load_config(tmp_path / "r.yaml", Run, ["sed=1"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.warmup_steps=1.5", "optim.warmup_steps: expected int"),
        ("optim.schedule=linear", "is not one of ['constant', 'cosine']"),
        ("debug=yes_please", "debug: expected bool"),
        ("mesh=3", "mesh: expected a list"),
        ("optim=3", "expected a mapping for Optim"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, override, fragment):
    (tmp_path / "r.yaml").write_text("name: r\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "r.yaml", Run, [override])
    assert fragment in str(e.value)


def test_missing_required_and_bad_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("debug: true\n")
    with pytest.raises(ConfigError, match="missing required key"):
        load_config(tmp_path / "r.yaml", Run)
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", Run)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", Run)


@dataclasses.dataclass(frozen=True)
class Pairs:
    pair: tuple[str, int] = ("a", 1)


def test_fixed_length_tuple(tmp_path):
    (tmp_path / "p.yaml").write_text("pair: [b, 2]\n")
    assert load_config(tmp_path / "p.yaml", Pairs).pair == ("b", 2)
    with pytest.raises(ConfigError, match=r"pair\[1\]: expected int"):
        load_config(tmp_path / "p.yaml", Pairs, ["pair=[b, c]"])
    with pytest.raises(ConfigError, match="expected 2 items"):
        load_config(tmp_path / "p.yaml", Pairs, ["pair=[b]"])
