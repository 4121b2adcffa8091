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
    with pytest.raises(ConfigError, match=r"override 'sed=1': unknown key 'sed'.*valid keys"):
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


def test_run_configs_domain_section_reads_into_the_registered_sections():
    """The flat `domain:` YAML section keeps loading; `name` picks the registered domain, whose
    builder gets only its own keys."""
    from pathlib import Path

    from ppp_jax.config.run import RunConfig, load_run_config
    from ppp_jax.envs.domains.registry import get_domain

    root = Path(__file__).resolve().parents[2] / "configs"
    seen = {}
    for name in ("tiny_cpu", "eval_seed_oss_36b_funcloc", "seed_oss_36b_browsecomp"):
        d = load_run_config(root / f"{name}.yaml").domain
        seen[d.name] = get_domain(d.name).section_from(d)
        assert from_dict(RunConfig, to_dict(RunConfig(domain=d))).domain == d
    assert seen["stdlib_loc"].stdlib.num_tasks == 200 and seen["stdlib_loc"].tool_style == "native"
    assert (seen["swe_func_loc"].swe_split, seen["swe_func_loc"].tool_style) == ("test", "openhands")
    assert seen["browsecomp_plus"].browsecomp_corpus == "data/browsecomp_plus/corpus.jsonl"
    with pytest.raises(ConfigError, match=r"domain.swe_split: 'dev' is not one of"):
        load_run_config(root / "tiny_cpu.yaml", ["domain.swe_split=dev"])


def test_one_engine_section_and_typed_model_sizes(tmp_path):
    """The run config has one `engine` section (one replica's shape); a config still written with
    the old `sampler` section is refused with how to move it. Model sizes are typed: a misspelt
    size names the valid ones, and the given sizes replace the preset's."""
    from ppp_jax.config.run import load_run_config

    base = "name: x\nmodel: {preset: tiny, sizes: {num_layers: 3, head_dim: 8}}\n"
    (tmp_path / "ok.yaml").write_text(base + "engine: {num_slots: 4, max_seq_len: 256}\n")
    cfg = load_run_config(tmp_path / "ok.yaml")
    assert cfg.engine.replica_config().num_slots == 4
    assert cfg.engine.replica_config().max_seq_len == 256
    built = cfg.model.build()
    assert built.num_layers == 3 and built.head_dim == 8
    (tmp_path / "old.yaml").write_text(base + "sampler: {num_slots: 4}\n")
    with pytest.raises(ConfigError, match="`sampler` section is now part of `engine`"):
        load_run_config(tmp_path / "old.yaml")
    (tmp_path / "typo.yaml").write_text("model: {preset: tiny, sizes: {num_layer: 3}}\n")
    with pytest.raises(ConfigError, match="num_layer.*num_layers"):
        load_run_config(tmp_path / "typo.yaml")


def test_model_dot_chunk_reaches_random_init_and_pretrained_policies(tmp_path):
    """`model.dot_chunk` (the float32 CPU parity option, docs/model_io.md) is a run-config key:
    the random-init policy and a policy loaded from `policy.path` both get it."""
    from ppp_jax.config.run import load_run_config
    from ppp_jax.model.testing import write_tiny_hf_checkpoint
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.train.builders import build_model

    cfg = load_run_config("configs/tiny_cpu.yaml", ["model.dot_chunk=64"])
    assert cfg.model.build().dot_chunk == 64
    assert build_model(cfg, tiny_seed_tokenizer()).config.dot_chunk == 64
    ckpt = write_tiny_hf_checkpoint(tmp_path / "hf")
    loaded = build_model(load_run_config("configs/tiny_cpu.yaml", [
        "model.dot_chunk=64", f"policy.path={ckpt}"]), tiny_seed_tokenizer())
    assert loaded.config.dot_chunk == 64
