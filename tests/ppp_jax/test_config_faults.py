"""Config faults: values out of range, unknown or ignored keys, and paths that are not there are
refused when the config is loaded, in one line naming the full dotted key and where it came
from (`file:line` or the override), before any model or engine is built."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest

from ppp_jax.config import rules
from ppp_jax.config.loader import ConfigError
from ppp_jax.config.paths import input_path_problems
from ppp_jax.config.run import RunConfig, load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = CONFIGS / "tiny_cpu.yaml"


@pytest.mark.parametrize("override, key, allowed", [
    ("trainer.save_every=0", "trainer.save_every", ">= 1"),
    ("trainer.keep=0", "trainer.keep", ">= 1"),
    ("trainer.num_steps=-3", "trainer.num_steps", ">= 1"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.seed=-1", "data.seed", "in [0, 2**32)"),
    ("data.num_epochs=0", "data.num_epochs", ">= 1"),
    ("data.vague_copies=-1", "data.vague_copies", ">= 0"),
    ("data.precise_preference=nobody", "data.precise_preference", "one of ['random', "),
    ("data.vague_preferences=[json, nope]", "data.vague_preferences[1]", "one of ["),
    ("rl.advantage.group_size=0", "rl.advantage.group_size", ">= 1"),
    ("rl.loss.clip_ratio_low=1.0", "rl.loss.clip_ratio_low", "in [0, 1)"),
    ("rl.loss.clip_ratio_c=0.5", "rl.loss.clip_ratio_c", "> 1"),
    ("rl.loss.temperature=0", "rl.loss.temperature", "> 0"),
    ("rl.optim.learning_rate=-1e-6", "rl.optim.learning_rate", ">= 0"),
    ("rl.optim.b2=1.0", "rl.optim.b2", "in [0, 1)"),
    ("rl.optim.final_lr_ratio=2", "rl.optim.final_lr_ratio", "in [0, 1]"),
    ("rl.num_micro_batches=0", "rl.num_micro_batches", ">= 1"),
    ("rl.dapo.max_gen_batches=-1", "rl.dapo.max_gen_batches", ">= 0"),
    ("rollout.top_p=0", "rollout.top_p", "in (0, 1]"),
    ("rollout.top_p=1.5", "rollout.top_p", "in (0, 1]"),
    ("rollout.top_k=-1", "rollout.top_k", ">= 0"),
    ("rollout.concurrency=0", "rollout.concurrency", ">= 1"),
    ("rollout.row_len=0", "rollout.row_len", ">= 1"),
    ("rollout.episode.max_turns=0", "rollout.episode.max_turns", ">= 1"),
    ("rollout.episode.tool_timeout_s=0", "rollout.episode.tool_timeout_s", "> 0"),
    ("engine.num_slots=0", "engine.num_slots", ">= 1"),
    ("engine.prefill_chunks=[0, 32]", "engine.prefill_chunks[0]", ">= 1"),
    ("engine.kv_dtype=int3", "engine.kv_dtype", "one of ['float32', 'bfloat16', 'float16']"),
    ("engine.dtype=float8", "engine.dtype", "one of ['float32'"),
    ("model.dtype=float8", "model.dtype", "one of ['float32'"),
    ("model.sizes.num_layers=0", "model.sizes.num_layers", ">= 1"),
    ("model.sizes.attention_dropout=1.0", "model.sizes.attention_dropout", "in [0, 1)"),
    ("policy.dropout=1.0", "policy.dropout", "in [0, 1)"),
    ("sft.ask_vague=1.5", "sft.ask_vague", "in [0, 1]"),
    ("sft.location_swap=-0.5", "sft.location_swap", "in [0, 1]"),
    ("sft.location_weight=0", "sft.location_weight", "> 0"),
    ("sft.effort_mix=[0.5, -0.1, 0.6]", "sft.effort_mix[1]", "in [0, 1]"),
    ("sft.num_steps=0", "sft.num_steps", ">= 1"),
    ("simulator.max_concurrency=0", "simulator.max_concurrency", ">= 1"),
    ("simulator.timeout_s=0", "simulator.timeout_s", "> 0"),
    ("simulator.max_retries=-1", "simulator.max_retries", ">= 0"),
    ("simulator.base_url=localhost:8000", "simulator.base_url", "an http:// or https:// URL"),
    ("reward.correct_threshold=2", "reward.correct_threshold", "in [0, 1]"),
    ("reward.proactivity_weight=-1", "reward.proactivity_weight", ">= 0"),
    ("eval.episodes_per_prompt=0", "eval.episodes_per_prompt", ">= 1"),
    ("eval.preference_ids=[nope]", "eval.preference_ids[0]", "one of ["),
    ("eval.openai_base_url=ftp://host", "eval.openai_base_url", "an http:// or https:// URL"),
    ("domain.stdlib.test_fraction=1.5", "domain.stdlib.test_fraction", "in [0, 1]"),
    ("domain.stdlib.num_tasks=0", "domain.stdlib.num_tasks", ">= 1"),
    ("compile.batch=-1", "compile.batch", ">= 0"),
    ("demo.tokenizer_vocab=10", "demo.tokenizer_vocab", ">= 256"),
    ("distributed.num_processes=0", "distributed.num_processes", ">= 1"),
    ("distributed.initialization_timeout_s=0", "distributed.initialization_timeout_s", ">= 1"),
])
def test_value_out_of_range_names_the_dotted_key_and_the_override(override, key, allowed):
    with pytest.raises(ConfigError) as e:
        load_run_config(TINY, [override])
    msg = str(e.value)
    assert msg.startswith(f"override {override!r}: {key}: "), msg
    assert f"must be {allowed}" in msg and "\n" not in msg
    assert str(TINY) not in msg  # the override is to blame, not the file


def test_value_in_a_yaml_file_names_its_file_and_line(tmp_path):
    (tmp_path / "base.yaml").write_text("name: b\ntrainer:\n  num_steps: 5\n  keep: 0\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nname: r\ntrainer:\n  save_every: 2\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(tmp_path / "run.yaml")
    assert str(e.value) == (f"{tmp_path / 'base.yaml'}:4: trainer.keep: 0 is not allowed; "
                            "must be >= 1")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nname: r\ntrainer:\n  keep: 2\n"
                                       "  save_every: 0\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:5: trainer\.save_every: 0 is not allowed"):
        load_run_config(tmp_path / "run.yaml")
    # an override that fixes the file's value wins; one that breaks it is blamed
    cfg = load_run_config(tmp_path / "run.yaml", ["trainer.save_every=3"])
    assert cfg.checkpoint.save_every == 3 and cfg.checkpoint.keep == 2


@pytest.mark.parametrize("override, fragment", [
    ("foo.bar=1", "override 'foo.bar=1': unknown key 'foo.bar' ('foo' is not a key at the top "
                  "level); valid keys for RunConfig: ["),
    ("trainer.save_evry=3", "override 'trainer.save_evry=3': unknown key 'trainer.save_evry' "
                            "('save_evry' is not a key in section 'trainer'); valid keys for "
                            "TrainerSection: ["),
    ("rl.loss.kl.coef=1", "override 'rl.loss.kl.coef=1': unknown key 'rl.loss.kl.coef'"),
    ("trainer.keep.x=1", "override 'trainer.keep.x=1': 'trainer.keep' is a value"),
    ("trainer.keep=three", "override 'trainer.keep=three': trainer.keep: 'three' does not match"),
])
def test_unknown_or_mistyped_override_is_named_in_full(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_run_config(TINY, [override])
    assert fragment in str(e.value) and str(TINY) not in str(e.value)


def test_unknown_key_in_a_file_names_the_file_and_line(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\ntrainer:\n  num_steps: 2\n  sav_every: 3\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:4: trainer: unknown key\(s\) \['sav_every'\]"):
        load_run_config(tmp_path / "r.yaml")


def test_keys_that_would_be_ignored_are_refused():
    """`data.train_path` was silently ignored (training ran on the built-in tasks, exit 0)."""
    with pytest.raises(ConfigError) as e:
        load_run_config(TINY, ["data.train_path=/nonexistent.jsonl"])
    assert "data.train_path: set to '/nonexistent.jsonl', but" in str(e.value)
    with pytest.raises(ConfigError, match="domain.swe_rows: set, but domain 'stdlib_loc' does "
                                          "not read it"):
        load_run_config(TINY, ["domain.swe_rows=rows.jsonl"])


def test_every_numeric_field_has_a_rule():
    """A new int or float field of the run config needs a rule in ppp_jax.config.rules (or a
    reason in UNCHECKED): that is what keeps `x=0` from reaching the trainer."""
    missing = []

    def walk(cls, prefix):
        own = rules.rules_for(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            tp = hints[f.name]
            args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) \
                else (tp,)
            args = [a for a in args if a is not type(None)]
            nested = [a for a in args if dataclasses.is_dataclass(a)]
            if nested:
                walk(nested[0], key)
                continue
            inner = [x for a in args for x in (typing.get_args(a) if typing.get_origin(a) is tuple
                                               else (a,))]
            numeric = any(x in (int, float) for x in inner)
            if numeric and f.name not in own and key not in rules.UNCHECKED:
                missing.append(key)

    walk(RunConfig, "")
    assert missing == []


def test_every_shipped_config_passes_the_checks():
    from ppp_jax.commands.data import load_data_config

    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name.startswith("serve"):
            continue
        if path.name.startswith("data_"):  # `ppp data` configs
            load_data_config(str(path), [])
            continue
        load_run_config(path)


# --- paths -------------------------------------------------------------------------------------

def _cfg(tmp_path, **sections):
    from ppp_jax.config.loader import from_dict

    return from_dict(RunConfig, {"run_dir": str(tmp_path / "runs"), **sections})


@pytest.mark.parametrize("command, sections, key", [
    ("train", {"policy": {"path": "/absent/model"}}, "policy.path"),
    ("eval", {"policy": {"path": "/absent/model"}}, "policy.path"),
    ("eval", {"policy": {"tokenizer": "/absent/tokenizer.json"}}, "policy.tokenizer"),
    ("train", {"policy": {"path": "{tmp}", "tokenizer": "/absent/tok.json"}}, "policy.tokenizer"),
    ("eval", {"eval": {"checkpoint": "/absent/run"}}, "eval.checkpoint"),
    ("train", {"domain": {"name": "swe_func_loc", "swe_rows": "/absent/rows.jsonl",
                          "swe_clone_root": "{tmp}", "swe_cache_dir": "{tmp}/c"}},
     "domain.swe_rows"),
    ("sft", {"domain": {"name": "swe_func_loc", "swe_rows": "{tmp}/rows.jsonl",
                        "swe_clone_root": "/absent/clones", "swe_cache_dir": "{tmp}/c"}},
     "domain.swe_clone_root"),
    ("eval", {"domain": {"name": "swe_func_loc", "swe_rows": "{tmp}/rows.jsonl",
                         "swe_clone_root": "{tmp}"}}, "domain.swe_cache_dir"),
    ("train", {"domain": {"name": "browsecomp_plus", "browsecomp_queries": "/absent/q.jsonl",
                          "browsecomp_corpus": "{tmp}/rows.jsonl"}}, "domain.browsecomp_queries"),
    ("demo", {"domain": {"name": "browsecomp_plus", "browsecomp_queries": "{tmp}/rows.jsonl",
                         "browsecomp_corpus": "/absent/c.jsonl"}}, "domain.browsecomp_corpus"),
    ("train", {"run_dir": "{tmp}/rows.jsonl"}, "run_dir"),
])
def test_a_missing_input_path_is_named_with_its_key(tmp_path, command, sections, key):
    (tmp_path / "rows.jsonl").write_text("{}\n")

    def fill(v):
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v

    cfg = _cfg(tmp_path, **fill(sections))
    problems = input_path_problems(cfg, command)
    assert problems and problems[0].startswith(f"{key}: "), problems


def test_paths_a_command_writes_or_does_not_read_are_not_required(tmp_path):
    # sft/demo train a tokenizer into policy.tokenizer; the openai backend loads no weights
    cfg = _cfg(tmp_path, policy={"tokenizer": str(tmp_path / "new" / "tok.json")})
    assert input_path_problems(cfg, "sft") == [] and input_path_problems(cfg, "demo") == []
    assert input_path_problems(cfg, "train") == []  # stdlib without a checkpoint trains it too
    cfg = _cfg(tmp_path, policy={"path": "/absent"}, eval={"backend": "openai"})
    assert input_path_problems(cfg, "eval") == []
    # --checkpoint takes the place of eval.checkpoint
    cfg = _cfg(tmp_path, eval={"checkpoint": "/absent"})
    assert input_path_problems(cfg, "eval", checkpoint_arg=str(tmp_path)) == []
    assert input_path_problems(cfg, "eval", checkpoint_arg="/nope")[0].startswith("--checkpoint")


def test_cli_refuses_before_building_anything(tmp_path, capsys):
    """`ppp train` exited 0 after training on the built-in tasks with a data path it ignored,
    and `trainer.save_every=0` failed after the model and engine were built."""
    from ppp_jax.cli import main

    run = f"run_dir={tmp_path / 'runs'}"
    for override in ("data.train_path=/nonexistent.jsonl", "trainer.save_every=0",
                     "policy.path=/nonexistent/model"):
        rc = main(["train", str(TINY), run, override, "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, (override, err)
        key = override.split("=")[0]
        assert err[0].startswith("ppp train: ") and key in err[0]
    assert not (tmp_path / "runs").exists()  # nothing was built or written


def test_unknown_domain_set_by_an_override_names_the_override_and_the_key():
    with pytest.raises(ConfigError) as e:
        load_run_config(CONFIGS / "tiny_cpu.yaml", ["domain.name=nope"])
    assert str(e.value).startswith("override 'domain.name=nope': domain.name: unknown domain 'nope'")
    assert "stdlib_loc" in str(e.value)
