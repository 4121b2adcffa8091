"""The `ppp` command line: one grammar, help that says what each command needs and writes, failure
paths that end in one line, the hand-offs between commands, progress without a terminal, and no
TPU noise on a machine without a TPU (issue 14 items 3-7, issue 15's CLI items)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppp_jax import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
WORKFLOW = ["demo", "convert", "data", "sft", "train", "eval", "serve", "compile"]


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(extra)
    return env


# ---- grammar and help ---------------------------------------------------------------------------


def test_commands_in_workflow_order_and_version(capsys):
    assert list(cli.COMMANDS) == WORKFLOW
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    positions = [out.index(f"    {name}") for name in WORKFLOW]
    assert positions == sorted(positions)
    assert "exit codes:" in out
    assert cli.main(["--version"]) == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"ppp {version('ppp-jax')}"


@pytest.mark.parametrize("name", WORKFLOW)
def test_every_help_shows_needs_writes_exit_codes(name, capsys):
    assert cli.main([name, "--help"]) == 0
    out = capsys.readouterr().out
    for field in ("needs:", "writes:", "typical time:", "exit codes:", "2 bad input"):
        assert field in out, (name, field)
    if cli.COMMANDS[name].takes_overrides:
        assert "KEY=VALUE" in out


def test_help_shows_defaults(capsys):
    assert cli.main(["convert", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: data=1,fsdp=-1,tensor=1)" in out and "(default: 5GB)" in out
    assert cli.main(["eval", "--help"]) == 0
    assert "(default: eval)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["train", "eval", "sft", "demo", "serve", "compile"])
def test_overrides_are_positional_and_options_may_follow_them(name):
    parser = cli.command_parser(name)
    flag = {"serve": [], "compile": ["--topology", "v5p:2x2x2"]}.get(name, ["--verbose"])
    args = parser.parse_intermixed_args(["c.yaml", "a.b=1", *flag, "c=2"])
    assert args.config == "c.yaml" and args.overrides == ["a.b=1", "c=2"]


@pytest.mark.parametrize("name", ["serve", "compile"])
def test_dash_o_is_refused_with_the_new_spelling(name, capsys):
    assert cli.main([name, "x.yaml", "-o", "port=9000"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "write overrides directly after the config" in err and "port=9000" in err


def test_serve_config_error_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"checkpoint: {tmp_path / 'ckpt'}\n")
    assert cli.main(["serve", str(cfg), "prot=9000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prot" in err and "port" in err, err


def test_unknown_command(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


# ---- convert: mesh spelling, destination, tokenizer ---------------------------------------------


def test_convert_refuses_positional_mesh_with_named_equivalent(tmp_path, capsys):
    assert cli.main(["convert", "hf2orbax", str(tmp_path), str(tmp_path / "out"),
                     "--mesh", "1,-1,1"]) == 2
    err = capsys.readouterr().err
    assert "--mesh data=1,fsdp=-1,tensor=1" in err and len(err.strip().splitlines()) == 1


def test_convert_refuses_existing_destination_before_loading(tmp_path, capsys):
    # The source is not a checkpoint at all: had anything been loaded first, the error would be
    # about the source. The refusal uses the CLI spelling of the flag.
    (tmp_path / "src").mkdir()
    (tmp_path / "taken").mkdir()
    assert cli.main(["convert", "hf2orbax", str(tmp_path / "src"), str(tmp_path / "taken"),
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and "overwrite=True" not in err, err
    assert len(err.strip().splitlines()) == 1


def _raw_tokenizer_json(directory: Path) -> Path:
    """A bare `tokenizers` tokenizer.json with the Seed-OSS special tokens (like the demo's)."""
    from ppp_jax.sampling.testing import write_tiny_tokenizer

    write_tiny_tokenizer(directory / "hf_tok")
    return directory / "hf_tok" / "tokenizer.json"


def test_convert_carries_the_tokenizer_and_a_chat_template(tmp_path, capsys):
    from ppp_jax.model.testing import write_tiny_hf_checkpoint
    from ppp_jax.sampling.chat import load_tokenizer

    src = write_tiny_hf_checkpoint(tmp_path / "hf", seed=3, vocab_size=96)
    assert cli.main(["convert", "hf2orbax", str(src), str(tmp_path / "orbax"), "--quiet"]) == 0
    # A policy as `ppp train` writes it: orbax weights with a bare tokenizer.json beside them.
    (tmp_path / "orbax" / "tokenizer.json").write_bytes(_raw_tokenizer_json(tmp_path).read_bytes())
    assert cli.main(["convert", "orbax2hf", str(tmp_path / "orbax"), str(tmp_path / "export"),
                     "--quiet"]) == 0
    assert "tokenizer from" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "export")
    assert tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=True,
                                  add_generation_prompt=True)
    text = tok.decode(ids if isinstance(ids, list) else ids["input_ids"])
    assert text.startswith("<seed:bos>user") and text.endswith("<seed:bos>assistant\n")


def test_hf2orbax_copies_the_tokenizer(tmp_path):
    from ppp_jax.sampling.chat import has_tokenizer
    from ppp_jax.sampling.testing import write_tiny_serving_checkpoint

    src = write_tiny_serving_checkpoint(tmp_path / "hf")
    assert cli.main(["convert", "hf2orbax", str(src), str(tmp_path / "orbax"), "--quiet"]) == 0
    assert has_tokenizer(tmp_path / "orbax")
    assert json.loads((tmp_path / "orbax" / "tokenizer_config.json").read_text()) == \
        json.loads((src / "tokenizer_config.json").read_text())


# ---- hand-offs: starting weights and tokenizer ---------------------------------------------------


def _cfg(tmp_path, *overrides):
    from ppp_jax.config.run import load_run_config

    return load_run_config(TINY, [f"run_dir={tmp_path}", *overrides])


def test_train_says_random_weights_or_picks_the_sft_policy(tmp_path):
    from ppp_jax.commands._policy import starting_policy

    cfg = _cfg(tmp_path)
    same, line = starting_policy(cfg)
    assert same.policy.path == "" and "RANDOM" in line and "ppp sft" in line
    sft = cfg.output_dir / "sft_policy"
    sft.mkdir(parents=True)
    (sft / "model_config.json").write_text("{}")
    warm, line = starting_policy(cfg)
    assert warm.policy.path == str(sft) and "SFT warm start" in line
    explicit, line = starting_policy(_cfg(tmp_path, f"policy.path={tmp_path / 'w'}"))
    assert explicit.policy.path == str(tmp_path / "w") and "policy.path" in line
    assert "takes precedence" not in line
    (cfg.output_dir / "checkpoints" / "4").mkdir(parents=True)
    _, line = starting_policy(cfg)
    assert "SFT warm start" in line and "checkpoints takes precedence (resume)" in line


def test_tokenizer_found_beside_weights_else_named_with_resolved_paths(tmp_path, monkeypatch):
    from ppp_jax.commands._policy import tokenizer_candidates
    from ppp_jax.sampling.chat import TokenizerNotFound, find_tokenizer, load_tokenizer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TokenizerNotFound) as e:
        load_tokenizer(".")
    assert f"no tokenizer at {tmp_path}" in str(e.value)
    weights = tmp_path / "runs" / "tiny_cpu" / "sft_policy"
    cfg = _cfg(tmp_path / "runs", f"policy.path={weights}")
    with pytest.raises(TokenizerNotFound) as e:
        find_tokenizer(tokenizer_candidates(cfg, weights))
    msg = str(e.value)
    assert str(weights) in msg and "ppp sft" in msg and "policy.tokenizer" in msg
    weights.mkdir(parents=True)
    (weights / "tokenizer.json").write_bytes(_raw_tokenizer_json(tmp_path).read_bytes())
    assert find_tokenizer(tokenizer_candidates(cfg, weights)) == weights


def test_eval_without_tokenizer_is_one_line_before_building(tmp_path, capsys):
    assert cli.main(["eval", str(TINY), f"run_dir={tmp_path}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'tiny_cpu' / 'tokenizer.json'}" in err and "ppp sft" in err
    assert "at ." not in err


def test_eval_missing_checkpoint_says_what_writes_one(tmp_path, capsys):
    assert cli.main(["eval", str(TINY), f"run_dir={tmp_path}", "--checkpoint",
                     str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "ppp train" in err


# ---- compile: hint and heartbeat -----------------------------------------------------------------


def test_compile_hint_leaves_out_remat_full_when_already_full():
    from ppp_jax.scale.chips import DoesNotFit
    from ppp_jax.scale.step_report import StepReport, check_fits

    big = StepReport(step="train", topology="v5p:2x2x2", mesh={"fsdp": 8}, argument_bytes=0,
                     output_bytes=0, alias_bytes=0, temp_bytes=0, peak_bytes=200 * 2**30,
                     compiler_peak_bytes=0, generated_code_bytes=0, flops=1.0, model_flops=1.0,
                     tokens=1, lower_s=0.0, compile_s=0.0, hbm_bytes=95.74 * 2**30)
    with pytest.raises(DoesNotFit) as full:
        check_fits([big], remat="full")
    assert "remat=full" not in str(full.value) and "more chips" in str(full.value)
    with pytest.raises(DoesNotFit) as none:
        check_fits([big], remat="none")
    assert "remat=full" in str(none.value)


def test_compile_heartbeat_speaks_during_a_long_step(capsys):
    from ppp_jax.commands.compile import heartbeat

    with heartbeat("step 'train'", every_s=0.05):
        time.sleep(0.3)
    out = capsys.readouterr().out
    assert out.startswith("ppp compile: compiling step 'train' ...")
    assert out.count("still compiling step 'train'") >= 2


# ---- progress without a terminal, --verbose, TPU noise -------------------------------------------


def test_progress_falls_back_to_log_lines_without_a_terminal():
    from ppp_jax.train.progress import ProgressBar

    stream = io.StringIO()
    assert not sys.stderr.isatty()  # pytest captures stderr
    with ProgressBar(10, desc="eval before", log_every_s=0.0, stream=stream) as bar:
        for _ in range(5):
            bar.update(1, {"score/reward": 0.5})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[eval before] 1/10 (10%)") and "R=0.5" in lines[0]
    assert lines[4].startswith("[eval before] 5/10 (50%)")
    quiet = io.StringIO()
    with ProgressBar(10, log_every_s=3600.0, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue().splitlines() == [quiet.getvalue().splitlines()[0]]  # only the end
    assert quiet.getvalue().startswith("[train] 3/10 (30%)")
    off = io.StringIO()
    with ProgressBar(10, enabled=False, log_every_s=0.0, stream=off) as bar:
        bar.update(3)
    assert off.getvalue() == ""


def test_verbose_shows_our_info_even_when_a_library_configured_logging_first(tmp_path):
    script = (
        "import argparse, logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(name)s| %(message)s')\n"
        "from ppp_jax.commands._common import load\n"
        f"ns = argparse.Namespace(verbose=sys.argv[1] == '1', config={str(TINY)!r}, overrides=[])\n"
        "assert load(ns, 'ppp train') is not None\n"
        "logging.getLogger('ppp_jax.train.loop').info('resumed from checkpoint step 7')\n"
        "logging.getLogger('absl').info('orbax chatter')\n")
    runs = {v: subprocess.run([sys.executable, "-c", script, v], cwd=ROOT, text=True,
                              capture_output=True, timeout=300,
                              env=_subprocess_env(JAX_PLATFORMS="cpu")) for v in ("1", "0")}
    for proc in runs.values():
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from checkpoint step 7" in runs["1"].stderr
    assert "orbax chatter" not in runs["1"].stderr
    assert "resumed from checkpoint step 7" not in runs["0"].stderr


def test_default_jax_platforms(tmp_path):
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        assert cli.default_jax_platforms({}, sys_root=str(tmp_path)) is None
        return
    assert cli.default_jax_platforms({}, sys_root=str(tmp_path)) == "cpu"
    assert cli.default_jax_platforms({"JAX_PLATFORMS": "tpu"}, sys_root=str(tmp_path)) is None
    dev = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:04.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1ae0\n")
    (dev / "device").write_text("0x0042\n")  # gVNIC: a Google device that is not a TPU
    assert cli.default_jax_platforms({}, sys_root=str(tmp_path)) == "cpu"
    (dev / "device").write_text("0x0062\n")  # TPU v5p
    assert cli.default_jax_platforms({}, sys_root=str(tmp_path)) is None


def test_no_libtpu_noise_on_a_machine_without_tpu(tmp_path):
    import importlib.util

    from ppp_jax.model.testing import write_tiny_hf_checkpoint

    import glob

    tpu_devices = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")
    if importlib.util.find_spec("libtpu") is None or tpu_devices:
        pytest.skip("needs libtpu installed on a machine without a TPU")
    src = write_tiny_hf_checkpoint(tmp_path / "hf", seed=1)
    proc = subprocess.run([sys.executable, "-m", "ppp_jax.cli", "convert", "hf2orbax", str(src),
                           str(tmp_path / "orbax"), "--quiet"], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("TPU_WORKER_HOSTNAMES", "libtpu.so", "lockfile", "InitGoogle"):
        assert noise not in proc.stderr, proc.stderr[-3000:]


# ---- the chain, end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_sft_train_convert_then_eval_and_serve(tmp_path, capsys):
    """`ppp sft` -> `ppp train` (from the warm start, found by itself) -> `ppp convert orbax2hf`
    -> `ppp eval --checkpoint EXPORT` and `ppp serve` on the export, with no file copied by hand."""
    import httpx

    from ppp_jax.commands.serve import ServeConfig
    from ppp_jax.config.loader import load_config
    from tests.sampling.serving import free_port, running_server

    run = [f"run_dir={tmp_path}", "sft.num_episodes=40", "sft.num_steps=2", "sft.batch_size=4"]
    assert cli.main(["sft", str(TINY), *run, "--no-progress"]) == 0
    warm = tmp_path / "tiny_cpu" / "sft_policy"
    assert (warm / "tokenizer.json").exists()
    capsys.readouterr()

    assert cli.main(["train", str(TINY), *run, "trainer.num_steps=1", "trainer.save_every=1",
                     "data.batch_size=1", "rl.advantage.group_size=2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"starting from the SFT warm start {warm}" in out, out
    policy = tmp_path / "tiny_cpu" / "policy"
    assert (policy / "tokenizer.json").exists()

    export = tmp_path / "export"
    assert cli.main(["convert", "orbax2hf", str(policy), str(export), "--quiet"]) == 0
    assert (export / "config.json").exists() and (export / "tokenizer_config.json").exists()

    assert cli.main(["eval", str(TINY), *run, "--checkpoint", str(export), "eval.num_tasks=1",
                     "eval.prompt_kinds=[vague]", "--name", "export_eval", "--no-progress"]) == 0
    result = json.loads((tmp_path / "tiny_cpu" / "export_eval.json").read_text())
    assert result["policy"] == f"model checkpoint {export}"
    # The export is the same policy with the same text around it: the same episodes.
    assert cli.main(["eval", str(TINY), *run, "eval.num_tasks=1", "eval.prompt_kinds=[vague]",
                     "--name", "policy_eval", "--no-progress"]) == 0
    direct = json.loads((tmp_path / "tiny_cpu" / "policy_eval.json").read_text())
    assert direct["policy"] == f"model checkpoint {policy}"
    assert direct["vague"] == result["vague"] and direct["avg"] == result["avg"]

    cfg = load_config(ROOT / "configs" / "serve_tiny.yaml", ServeConfig,
                      [f"checkpoint={export}", "warmup=false", f"port={free_port()}",
                       "build_tiny_if_missing=false"])
    with running_server(cfg) as (base, _):
        reply = httpx.post(f"{base}/chat/completions", timeout=120, json={
            "model": cfg.model_name, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Which file?"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def test_ctrl_c_ends_in_one_line_not_a_traceback(tmp_path):
    """SIGINT during `ppp sft` (which has no signal handler of its own): one line, exit 130."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "ppp_jax.cli", "sft", str(TINY),
                             f"run_dir={tmp_path}", "sft.num_episodes=40", "--no-progress"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_subprocess_env(JAX_PLATFORMS="cpu"),
                            # As from a terminal: a test run started as a background job (`cmd &`
                            # in a script) inherits SIGINT ignored, and the child would never see it.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # wait until it is working
            if "scripted warm-start episodes" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "ppp sft: interrupted" in err, err[-3000:]


def test_export_template_renders_the_system_turn_the_policy_was_trained_on(tmp_path):
    """A tokenizer exported without a template of its own gets one whose system turn is exactly
    the tokenizer-free rendering `ChatTokenizer` used in training (with and without tools), so a
    policy evaluated or served from the export sees the same text."""
    from ppp_jax.config.run import load_run_config
    from ppp_jax.envs.domains.base import ask_user_schema
    from ppp_jax.sampling.chat import ChatTokenizer, load_tokenizer, save_serving_tokenizer
    from ppp_jax.train.builders import agent_domain, build_tasks

    assert save_serving_tokenizer(_raw_tokenizer_json(tmp_path), tmp_path / "export")
    exported = ChatTokenizer(load_tokenizer(tmp_path / "export"))
    trained = ChatTokenizer(load_tokenizer(_raw_tokenizer_json(tmp_path)))
    assert exported._hf and not trained._hf
    cfg = load_run_config(TINY, [f"run_dir={tmp_path}", "domain.stdlib.num_tasks=4"])
    tasks, inner = build_tasks(cfg)
    domain = agent_domain(cfg, inner)
    demo_tools = list(domain.tool_schemas(tasks[0])) + [ask_user_schema()]
    every_type = [{"type": "function", "function": {
        "name": "probe", "description": "all types",
        "parameters": {"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "description": "x"}, "b": {"type": "integer"},
            "c": {"type": "boolean", "description": "z"}, "d": {"type": "object"}}}}}]
    for tools in (demo_tools, every_type, demo_tools + every_type, []):
        assert exported.render_system("Be brief.", tools) == trained.render_system("Be brief.", tools)


@pytest.mark.parametrize("name", ["train", "eval", "sft", "demo", "compile", "serve", "data"])
def test_help_override_examples_are_keys_of_that_commands_config(name):
    """The `e.g. ...` overrides each command's help shows exist in the config it reads (serve's
    once showed trainer.num_steps=3, a key serve configs do not have)."""
    import re

    from ppp_jax.commands.data import DataPrepConfig
    from ppp_jax.commands.serve import ServeConfig
    from ppp_jax.config.loader import check_override_key
    from ppp_jax.config.run import RunConfig

    parser = cli.command_parser(name)
    overrides = next(a for a in parser._actions if a.dest == "overrides")
    example = re.search(r"e\.g\. (.*?);", overrides.help).group(1).split()
    assert example
    schema = {"serve": ServeConfig, "data": DataPrepConfig}.get(name, RunConfig)
    for text in example:
        check_override_key(schema, text)
