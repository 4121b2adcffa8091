"""The persistent compilation cache (`compile_cache` section, `ppp_jax.commands._compile_cache`).

Each check runs fresh processes (this module is also their entry point,
`python -m tests.ppp_jax.test_compile_cache DIR`): a child sets the cache up as the commands do,
builds a tiny engine, warms it up (every prefill bucket and the decode program) and decodes, then
prints what JAX's monitoring counted (programs handed to XLA, cache hits) and its greedy tokens.
Whether a program was compiled or loaded is read from those counts and from the cache
directory's files, never from timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppp_jax.config import loader
from ppp_jax.config.compile_cache import CompileCacheConfig
from ppp_jax.config.run import RunConfig

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 38, 4, 6, 2, 6, 43]]


def _child(cache_dir: str) -> None:
    from ppp_jax.commands._compile_cache import use_compile_cache
    from ppp_jax.model.config import tiny
    from ppp_jax.model.testing import make_model
    from ppp_jax.sampling import Engine, EngineConfig, Request, SamplingParams

    stats = use_compile_cache(CompileCacheConfig(dir=cache_dir))
    engine_cfg = EngineConfig(num_slots=2, page_size=4, num_pages=33, max_seq_len=64,
                              decode_steps=4, prefill_chunks=(8, 16), prefill_rows=(1, 2),
                              block_pages=4)
    with Engine(make_model(tiny(), seed=3), engine_cfg) as engine:
        engine.warmup()
        results = engine.generate_batch([Request(p, SamplingParams(temperature=0.0,
                                                                   max_new_tokens=6))
                                         for p in PROMPTS])
    print(json.dumps({"programs": stats.programs, "hits": stats.hits,
                      "compiled": stats.compiled, "dir": stats.dir,
                      "tokens": [r.token_ids for r in results]}))


def _start(cache_dir: str | Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="true")
    return subprocess.Popen([sys.executable, "-m", "tests.ppp_jax.test_compile_cache",
                             str(cache_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    # JAX turns a failed cache read or write into a warning and compiles instead: none allowed
    assert "persistent compilation cache" not in err, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _entries(cache_dir: Path) -> set[str]:
    return {p.name for p in cache_dir.glob("*-cache")}


def test_second_process_loads_every_program_the_first_compiled(tmp_path):
    cache = tmp_path / "xla"
    first = _finish(_start(cache))
    written = _entries(cache)
    assert first["dir"] == str(cache)
    assert first["programs"] > 5 and first["hits"] == 0 and first["compiled"] == first["programs"]
    # every program is written, the sub-second CPU ones too (JAX's defaults would skip them)
    assert len(written) == first["compiled"]
    assert any(name.startswith("jit__decode_impl") for name in written), sorted(written)

    second = _finish(_start(cache))
    assert second["programs"] == first["programs"]
    assert second["hits"] == second["programs"] and second["compiled"] == 0
    assert _entries(cache) == written  # nothing compiled, so nothing new written
    assert second["tokens"] == first["tokens"]


def test_two_processes_share_one_directory_at_once(tmp_path):
    """Both start on an empty directory and write the same keys at the same time (under JAX's
    lock file); neither sees a torn entry (a warning would say so), and a third process then
    loads every program."""
    cache = tmp_path / "xla"
    a, b = _start(cache), _start(cache)
    ra, rb = _finish(a), _finish(b)
    assert ra["tokens"] == rb["tokens"]
    assert ra["hits"] + ra["compiled"] == ra["programs"] == rb["programs"]
    assert (cache / ".lockfile").exists()
    third = _finish(_start(cache))
    assert third["hits"] == third["programs"] == ra["programs"] and third["compiled"] == 0
    assert third["tokens"] == ra["tokens"]


def test_empty_dir_turns_the_cache_off(tmp_path):
    off = _finish(_start(""))
    assert off["dir"] == "" and off["hits"] == 0 and off["compiled"] == off["programs"] > 0


def test_the_section_is_typed_and_checked():
    assert RunConfig().compile_cache == CompileCacheConfig()
    cfg = loader.from_dict(RunConfig, {"compile_cache": {"dir": "", "min_compile_time_s": 0.5}})
    assert cfg.compile_cache.dir == "" and cfg.compile_cache.min_compile_time_s == 0.5
    with pytest.raises(loader.ConfigError, match="compile_cache.max_size_gb"):
        loader.from_dict(RunConfig, {"compile_cache": {"max_size_gb": 0}})
    with pytest.raises(loader.ConfigError, match="compile_cache.*dirs"):
        loader.from_dict(RunConfig, {"compile_cache": {"dirs": "/tmp/x"}})


if __name__ == "__main__":
    _child(sys.argv[1])
