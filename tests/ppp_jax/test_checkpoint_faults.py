"""The checkpoint fault matrix (issue 15): damage a finished run's folder, then resume it.

One trained run folder (tests/ppp_jax/_resume_run.py: the real data pipeline, loop, orbax
checkpoint manager and metrics writers on a toy problem with a 64 KiB parameter) is copied for
every case. Each fault must end in one of two ways:
- fallen back: training resumes from the newest intact step, with ONE warning line naming the
  damaged step and item; the damaged step is moved aside byte for byte; metrics.jsonl keeps its
  rows up to the restored step byte for byte, the cut rows are kept in metrics.discarded.jsonl,
  and the resumed run reproduces the original rows;
- refused: one line (no traceback text, no tensorstore dump) and not one file changed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from ppp_jax.train.checkpointing import MANIFEST, CheckpointError, CheckpointManager
from ppp_jax.train.loop import RunFolderError
from ppp_jax.train.metrics import read_jsonl
from tests.ppp_jax import _resume_run

ARGS = ["--steps", "6", "--save-every", "2", "--keep", "3", "--ballast", "16384", "--check-folder"]
ITEMS = ("params", "opt_state", "rng", "data", "meta")


def _run(run_dir: Path, *extra: str) -> None:
    assert _resume_run.main([str(run_dir), *ARGS, *extra]) == 0


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _deterministic(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def _largest_params_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    _run(run)
    assert CheckpointManager(run / "ckpt").all_steps() == [2, 4, 6]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert _largest_params_file(run / "ckpt" / "6").stat().st_size > 3 * 4096
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def _truncate(step_dir: Path) -> str:
    f = _largest_params_file(step_dir)
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return f.relative_to(step_dir).as_posix() + ": size"


def _zero_block(step_dir: Path) -> str:
    f = _largest_params_file(step_dir)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid - 2048: mid + 2048] = bytes(4096)  # 4 KiB of zeros inside; the size is unchanged
    f.write_bytes(bytes(data))
    return f.relative_to(step_dir).as_posix() + ": contents changed"


def _delete_item(item: str):
    def damage(step_dir: Path) -> str:
        shutil.rmtree(step_dir / item)
        return f"item {item!r} missing"
    return damage


def _empty_step(step_dir: Path) -> str:
    shutil.rmtree(step_dir)
    step_dir.mkdir()
    return "empty step directory"


def _delete_manifest(step_dir: Path) -> str:
    (step_dir / MANIFEST).unlink()
    return f"no {MANIFEST}"


FALLBACKS = {"truncate": _truncate, "zero_4k_block": _zero_block, "empty_step": _empty_step,
             "delete_manifest": _delete_manifest,
             **{f"delete_{item}": _delete_item(item) for item in ITEMS}}


@pytest.mark.parametrize("fault", sorted(FALLBACKS))
def test_damaged_latest_step_falls_back_to_the_previous_one(run, fault, caplog):
    metrics = run / "metrics.jsonl"
    original = metrics.read_bytes()
    lines = original.splitlines(keepends=True)
    original_rows = read_jsonl(metrics)
    tb_before = _snapshot(run / "tb")
    expected = FALLBACKS[fault](run / "ckpt" / "6")
    damaged_before = _snapshot(run / "ckpt" / "6")

    with caplog.at_level(logging.WARNING):
        _run(run)

    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("ppp_jax")]
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert "\n" not in line and "step 6: " in line and expected in line, line
    assert "restored step 4 instead" in line and "ckpt-damaged" in line, line
    # The damaged step is kept aside exactly as it was; the new step 6 is intact.
    aside = list((run / "ckpt-damaged").glob("step-6-*"))
    assert len(aside) == 1 and _snapshot(aside[0]) == damaged_before
    mgr = CheckpointManager(run / "ckpt")
    assert mgr.all_steps() == [2, 4, 6] and mgr.restore(6).step == 6 and not mgr.skipped
    # History up to the restored step byte for byte; the cut rows kept; the rerun reproduces them.
    now = metrics.read_bytes()
    assert now.startswith(b"".join(lines[:4]))
    assert (run / "metrics.discarded.jsonl").read_bytes() == b"".join(lines[4:])
    assert _deterministic(read_jsonl(metrics)) == _deterministic(original_rows)
    # TensorBoard: earlier event files untouched (a resumed run writes a new one).
    tb_after = _snapshot(run / "tb")
    assert all(tb_after.get(name) == digest for name, digest in tb_before.items())


def _assert_refused_untouched(run: Path, before: dict[str, str], err: BaseException, pattern: str):
    text = str(err)
    assert "\n" not in text and "Traceback" not in text and len(text) < 1000, text
    assert pattern in text, text
    after = _snapshot(run)
    assert after == before  # nothing written, moved or deleted


def test_no_intact_step_left_is_refused_and_nothing_changes(run):
    for step in (2, 4, 6):
        _truncate(run / "ckpt" / str(step))
    before = _snapshot(run)
    with pytest.raises(CheckpointError) as err:
        _run(run)
    _assert_refused_untouched(run, before, err.value, "no intact checkpoint in ")
    assert all(f"step {s}: params/" in str(err.value) for s in (2, 4, 6))


def test_checkpoint_folder_deleted_is_refused_then_restart_sets_the_run_aside(run):
    shutil.rmtree(run / "ckpt")
    original_metrics = (run / "metrics.jsonl").read_bytes()
    before = _snapshot(run)
    with pytest.raises(RunFolderError) as err:
        _run(run)
    _assert_refused_untouched(run, before, err.value, "holds metrics.jsonl, tb from an earlier run")
    assert "--restart" in str(err.value)
    # Starting over deliberately: the old files move into previous-<time>/, nothing is deleted.
    _run(run, "--restart")
    previous = list(run.glob("previous-*"))
    assert len(previous) == 1
    assert (previous[0] / "metrics.jsonl").read_bytes() == original_metrics
    assert {k: v for k, v in _snapshot(previous[0]).items()} == {
        k: v for k, v in before.items() if k.startswith(("metrics.jsonl", "tb/"))}
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert _deterministic(rows) == _deterministic(read_jsonl(previous[0] / "metrics.jsonl"))


def test_an_empty_checkpoint_folder_with_history_is_refused(run):
    shutil.rmtree(run / "ckpt")
    (run / "ckpt").mkdir()
    before = _snapshot(run)
    with pytest.raises(RunFolderError) as err:
        _run(run)
    _assert_refused_untouched(run, before, err.value, "has no checkpoint to resume from")


def test_ctrl_c_stops_gracefully_like_sigterm_and_twice_stops_at_once(tmp_path, caplog):
    import os
    import signal

    from ppp_jax.train import loop
    from ppp_jax.train.metrics import JsonlWriter

    ds, init, step_fn = _resume_run.toy_loop_parts()
    starts = []

    def interrupt_at(step, times):
        def hook(state, metrics):
            if state.step == step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
        return hook

    before = signal.getsignal(signal.SIGINT)
    with CheckpointManager(tmp_path / "ckpt", save_every=100) as ckpt:
        with caplog.at_level(logging.WARNING, logger="ppp_jax.train.loop"):
            final = loop.run_loop(init, ds.iterator(), step_fn, num_steps=8, ckpt=ckpt,
                                  writer=JsonlWriter(tmp_path / "m.jsonl"), hooks=[interrupt_at(3, 1)],
                                  on_start=starts.append)
        # Ctrl+C: step 3 finished, saved, returned (no KeyboardInterrupt); handler restored.
        assert final.step == 3 and ckpt.all_steps() == [3] and starts == [0]
        assert signal.getsignal(signal.SIGINT) == before
        assert any("SIGINT: stopping after the current step" in r.getMessage() for r in caplog.records)
        # Twice: the second one stops at once, without saving; the finished checkpoint stays.
        with pytest.raises(KeyboardInterrupt):
            loop.run_loop(init, ds.iterator(), step_fn, num_steps=8, ckpt=ckpt,
                          writer=JsonlWriter(tmp_path / "m.jsonl"), hooks=[interrupt_at(5, 2)],
                          on_start=starts.append)
        assert starts == [0, 3] and ckpt.all_steps() == [3]
        assert signal.getsignal(signal.SIGINT) == before
        # And the run resumes from step 3 to the end.
        final = loop.run_loop(init, ds.iterator(), step_fn, num_steps=8, ckpt=ckpt,
                              writer=JsonlWriter(tmp_path / "m.jsonl"), on_start=starts.append)
        assert final.step == 8 and starts == [0, 3, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == list(range(1, 9))


@pytest.mark.parametrize("where", ["flag", "config"])
def test_eval_on_a_checkpoint_path_that_does_not_exist_says_what_creates_it(tmp_path, capsys, where):
    """`ppp eval --checkpoint` (or `eval.checkpoint`) naming nothing: one line, before any build."""
    from ppp_jax import cli

    missing = tmp_path / "no_such_run" / "policy"
    argv = ["eval", "configs/tiny_cpu.yaml", f"run_dir={tmp_path}"]
    argv += ["--checkpoint", str(missing)] if where == "flag" else [f"eval.checkpoint={missing}"]
    assert cli.main(argv) == 2  # the config's input paths are checked when it is loaded
    err = capsys.readouterr().err.strip()
    origin = "--checkpoint" if where == "flag" else "eval.checkpoint"
    assert err.startswith(f"ppp eval: {origin}: '{missing}' does not exist")
    assert "`ppp train` writes <run>/policy" in err and "hf2orbax" in err
    assert "\n" not in err and "sft_policy" in err
    assert not (tmp_path / "tiny_cpu").exists()  # refused before anything was built or written


# ------------------------------------------------------------------ the real commands (slow)
def _cli_config(tmp_path: Path, **changes) -> Path:
    """The trainer tests' tiny config as a YAML file whose run goes under `tmp_path`."""
    import json

    import yaml

    from tests.ppp_jax.test_trainer import TINY

    data = json.loads(json.dumps(TINY))
    data["run_dir"] = str(tmp_path)
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ppp(*argv: str, signal_when=None, sig: int | None = None,
         timeout: float = 600) -> tuple[int, str, str]:
    """Runs `ppp ARGV` in a subprocess; with `signal_when` (a function), sends `sig` once it
    returns true. Returns (exit code, stdout, stderr)."""
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "ppp_jax.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if signal_when is not None:
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if signal_when():
                proc.send_signal(sig)
                break
            time.sleep(0.05)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _ppp_lines(err: str) -> list[str]:
    """stderr lines of our own (not jax/libtpu start-up noise)."""
    return [line for line in err.splitlines() if line.startswith(("ppp ", "WARNING ppp_jax"))]


@pytest.mark.slow
def test_ppp_train_resume_summary_fallback_refusal_restart_and_ctrl_c(tmp_path):
    import signal

    cfg = str(_cli_config(tmp_path))
    run = tmp_path / "t"
    rc, out, err = _ppp("train", "--no-progress", cfg, "trainer.num_steps=2")
    assert rc == 0 and "ppp train: 2 steps in" in out, err[-3000:]
    rc, out, err = _ppp("train", "--no-progress", cfg, "trainer.num_steps=3")
    assert rc == 0 and "ppp train: 1 step (resumed after step 2, now at 3) in" in out, err[-3000:]
    # A 4 KiB block zeroed inside a parameter file of the latest step: back to step 2.
    _zero_block(run / "checkpoints" / "3")
    rc, out, err = _ppp("train", "--no-progress", cfg, "trainer.num_steps=3")
    assert rc == 0 and "1 step (resumed after step 2, now at 3)" in out, err[-3000:]
    assert "Traceback" not in err
    damaged = [line for line in err.splitlines() if "damaged" in line]
    assert len(damaged) == 1 and "step 3: params/" in damaged[0] and "restored step 2" in damaged[0]
    # The checkpoints folder gone: refused in one line, nothing touched.
    shutil.move(str(run / "checkpoints"), str(tmp_path / "checkpoints.moved"))
    before = _snapshot(run)
    rc, out, err = _ppp("train", "--no-progress", cfg, "trainer.num_steps=3")
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    assert _ppp_lines(err) == [line for line in err.splitlines() if line.startswith("ppp train:")]
    assert len(_ppp_lines(err)) == 1 and "has no checkpoint to resume from" in _ppp_lines(err)[0]
    assert "metrics.jsonl" in _ppp_lines(err)[0] and "policy" in _ppp_lines(err)[0]
    assert _snapshot(run) == {k: v for k, v in before.items()}
    # --restart sets the old run aside; Ctrl+C after the first step stops it with a checkpoint.
    rc, out, err = _ppp("train", "--no-progress", "--restart", cfg, "trainer.num_steps=3",
                        signal_when=lambda: (any(run.glob("previous-*"))
                                             and bool(read_jsonl(run / "metrics.jsonl"))),
                        sig=signal.SIGINT)
    assert rc == 3 and "Traceback" not in err, err[-3000:]
    assert "(checkpoint saved); run the same command again to resume" in err
    previous = list(run.glob("previous-*"))
    assert len(previous) == 1 and (previous[0] / "metrics.jsonl").exists() and (previous[0] / "policy").is_dir()
    steps = CheckpointManager(run / "checkpoints").all_steps()
    assert steps and steps[-1] == len(read_jsonl(run / "metrics.jsonl"))


@pytest.mark.slow
def test_ppp_sft_stopped_by_sigterm_or_ctrl_c_exits_cleanly_and_resumes(tmp_path):
    import signal

    cfg = str(_cli_config(tmp_path, sft={"num_episodes": 16, "num_steps": 30, "batch_size": 4,
                                         "row_len": 512}))
    metrics = tmp_path / "t" / "sft" / "metrics.jsonl"
    done = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        rc, out, err = _ppp("sft", "--no-progress", cfg, sig=sig,
                            signal_when=lambda: len(read_jsonl(metrics)) > done)
        assert rc == 3 and "Traceback" not in err, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("ppp sft:")]
        assert len(lines) == 1 and "warm start stopped at step" in lines[0], err[-3000:]
        rows = read_jsonl(metrics)
        assert len(rows) > done and [r["step"] for r in rows] == list(range(1, len(rows) + 1))
        assert CheckpointManager(metrics.parent / "checkpoints").all_steps()[-1] == len(rows)
        done = len(rows)


def test_ppp_train_preflight_refuses_before_building_and_restart_moves_the_run(tmp_path):
    """`ppp train` checks the run folder before it builds the model and engine."""
    import jax
    import jax.numpy as jnp

    from ppp_jax.train.trainer import preflight

    run = tmp_path / "run"
    run.mkdir()
    preflight(run)  # a new folder is fine
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunFolderError, match="holds metrics.jsonl from an earlier run"):
        preflight(run)
    assert not (run / "checkpoints").exists()  # refusing created nothing
    with CheckpointManager(run / "checkpoints") as mgr:
        mgr.save(1, params={"w": jnp.ones(2048)}, opt_state={}, rng=jax.random.key(0))
    preflight(run)  # an intact step: fine
    _zero_block(run / "checkpoints" / "1")
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .* step 1: params/"):
        preflight(run)
    assert _snapshot(run) == before
    preflight(run, restart=True)
    moved = list(run.glob("previous-*"))
    assert len(moved) == 1 and sorted(p.name for p in moved[0].iterdir()) == ["checkpoints", "metrics.jsonl"]
    assert _snapshot(moved[0]) == before  # moved whole, byte for byte
