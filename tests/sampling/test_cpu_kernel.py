"""The C++ decode-attention kernel (sampling/cpu_kernels) against the XLA path it replaces: its
softmax state, the whole `attend` output, an engine's greedy tokens, and its build errors."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.sampling import cpu_kernels
from ppp_jax.sampling.config import EngineConfig
from ppp_jax.sampling.paged_cache import PagedKVCache
from tests import numerics as nm

pytestmark = pytest.mark.skipif(
    shutil.which((os.environ.get("CXX") or "g++").split()[0]) is None,
    reason="no C++ compiler ($CXX, else g++) to build the CPU kernel")

NEG = -1e30


def _pool(rng, dtype, *, layers=3, pages=29, page_size=5, kvh=2, h=12):
    shape = (layers, pages, page_size, kvh, h)
    return (jnp.asarray(rng.normal(size=shape), dtype), jnp.asarray(rng.normal(size=shape), dtype))


def _tables(rng, cache_lens, page_size, width, pages):
    """Each row's pages a random sample of the pool (shuffled, no page 0), rest of row 0s."""
    table = np.zeros((len(cache_lens), width), np.int32)
    for b, ln in enumerate(cache_lens):
        need = -(-ln // page_size)
        table[b, :need] = rng.choice(np.arange(1, pages), size=need, replace=False)
    return jnp.asarray(table)


def _reference_state(q, k_pages, v_pages, table, cache_lens, layer, dtype):
    """(m, l, acc) over each row's cached tokens in float64 from the same rounded scores the
    XLA path uses (dot in f32 -> dtype -> * H**-0.5 in f32 -> dtype)."""
    b, kvh, g, h = q.shape
    s_pages = k_pages.shape[2]
    scale = np.float32(h ** -0.5)
    m = np.full((b, kvh, g), NEG)
    l = np.zeros((b, kvh, g))
    acc = np.zeros((b, kvh, g, h))
    kp, vp = np.asarray(k_pages[layer], np.float32), np.asarray(v_pages[layer], np.float32)
    for r, ln in enumerate(np.asarray(cache_lens)):
        if ln == 0:
            continue
        pos = np.arange(ln)
        pages = np.asarray(table)[r, pos // s_pages]
        keys, vals = kp[pages, pos % s_pages], vp[pages, pos % s_pages]  # [len, K, H]
        s = np.einsum("kgh,skh->kgs", np.asarray(q[r], np.float32), keys)
        s = jnp.asarray(s).astype(dtype).astype(jnp.float32) * scale
        s = np.asarray(s.astype(dtype).astype(jnp.float32), np.float64)
        m[r] = s.max(-1)
        p = np.exp(s - m[r][..., None])
        l[r] = p.sum(-1)
        acc[r] = np.einsum("kgs,skh->kgh", p, vals.astype(np.float64))
    return m, l, acc


# (G, H): H % 8 != 0 takes the portable loops, the others the AVX2 ones where the CPU has them
# (groups in tiles of 4, 2 or 1 and slots in tiles of 2, 4 or 8: a page of 5 leaves a tail).
@pytest.mark.parametrize("g, h", [(3, 12), (4, 16), (2, 24), (1, 8), (8, 64)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_state_matches_reference(dtype, g, h):
    rng = np.random.default_rng(0)
    kvh, page_size, pages = 2, 5, 29
    k_pages, v_pages = _pool(rng, dtype, pages=pages, page_size=page_size, kvh=kvh, h=h)
    cache_lens = np.array([0, 7, 23, 1, 15, 11], np.int32)  # 7, 23, 11: partial last page
    table = _tables(rng, cache_lens, page_size, width=6, pages=pages)
    q = jnp.asarray(rng.normal(size=(len(cache_lens), kvh, g, h)), dtype)
    layer = 2
    fn = jax.jit(lambda *a: cpu_kernels.paged_decode_attention(*a, compute_dtype=dtype))
    m, l, acc = (np.asarray(x) for x in fn(q, k_pages, v_pages, table, jnp.asarray(cache_lens),
                                           jnp.int32(layer)))
    rm, rl, racc = _reference_state(q, k_pages, v_pages, table, cache_lens, layer, dtype)
    assert m.shape == (6, kvh, g) and l.shape == (6, kvh, g) and acc.shape == (6, kvh, g, h)
    # The row with nothing cached: the XLA loop's initial state.
    assert np.all(m[0] == np.float32(NEG)) and np.all(l[0] == 0) and np.all(acc[0] == 0)
    # float32: the same products summed in another order: relative 1e-5 of each output's
    # scale (exp is a ~2 ulp polynomial). bfloat16: a score whose f32 sum lands on the other
    # side of a bfloat16 rounding boundary moves by one bfloat16 ulp (2**-8 relative), which
    # moves l and acc by about as much.
    tol = 1e-5 if dtype == jnp.float32 else 2.0 ** -7
    np.testing.assert_allclose(m[1:], rm[1:], rtol=0, atol=tol * np.abs(rm[1:]).max())
    np.testing.assert_allclose(l, rl, rtol=tol, atol=0)
    np.testing.assert_allclose(acc, racc, rtol=0, atol=tol * np.abs(racc).max())


def _attend_both(dtype, pool_dtype, rng):
    """attend() through the kernel and through the XLA loop, same inputs, decode (T == 1)."""
    layers, pages, page_size, kvh, g, h = 3, 37, 4, 2, 4, 16
    k_pages, v_pages = _pool(rng, pool_dtype, layers=layers, pages=pages, page_size=page_size,
                             kvh=kvh, h=h)
    cache_lens = np.array([9, 0, 31, 4, 17], np.int32)
    b = len(cache_lens)
    table = _tables(rng, cache_lens, page_size, width=12, pages=pages)  # multiple of block_pages
    q = jnp.asarray(rng.normal(size=(b, 1, kvh * g, h)), dtype)
    k = jnp.asarray(rng.normal(size=(b, 1, kvh, h)), dtype)
    v = jnp.asarray(rng.normal(size=(b, 1, kvh, h)), dtype)
    pos = jnp.asarray(cache_lens[:, None])
    seg = jnp.asarray(np.array([[1], [1], [1], [0], [1]], np.int32))  # row 3: padding
    # Inputs of the float32 bound (tests/numerics.py): the largest sum |q||k| / sqrt(H) over
    # every key a query sees, the largest |v|, the most keys of a row.
    kp = np.abs(np.asarray(k_pages[1], np.float32)).reshape(-1, kvh, h).max(0)  # [K, H]
    qa = np.abs(np.asarray(q, np.float32)).reshape(b, kvh, g, h)
    score_abs = float(np.einsum("bkgh,kh->bkg", qa, np.maximum(kp, np.abs(
        np.asarray(k, np.float32)).max((0, 1)))).max()) * h ** -0.5
    v_abs = float(max(np.abs(np.asarray(v_pages[1], np.float32)).max(),
                      np.abs(np.asarray(v, np.float32)).max()))
    outs = {"bound": (h, int(cache_lens.max()) + 1, score_abs, v_abs)}
    for path in ("xla", "cpu_kernel"):
        cache = PagedKVCache(k_pages, v_pages, table, jnp.asarray(cache_lens), block_pages=3,
                             decode_attention=path)
        out, new = jax.jit(cache.attend)(jnp.int32(1), q, k, v, pos, seg)
        outs[path] = (np.asarray(out.astype(jnp.float32)), np.asarray(new["slot"]))
    return outs


def test_attend_float32_matches_xla_path():
    outs = _attend_both(jnp.float32, jnp.float32, np.random.default_rng(1))
    ref, got = outs["xla"], outs["cpu_kernel"]
    np.testing.assert_array_equal(got[1], ref[1])
    # two float32 evaluations of the same attention (summation orders, exp implementations)
    atol = nm.f32_attention_atol(*outs["bound"], evaluations=2)
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=atol)
    assert atol < 1e-3 * np.abs(ref[0]).max()  # the bound is tight enough to mean something


@pytest.mark.parametrize("pool_dtype", [jnp.bfloat16, jnp.float32])
def test_attend_bfloat16_matches_xla_path(pool_dtype):
    outs = _attend_both(jnp.bfloat16, pool_dtype, np.random.default_rng(2))
    ref, got = outs["xla"][0], outs["cpu_kernel"][0]
    # The output is rounded to bfloat16 (8 bits of mantissa) on both paths from float32 values
    # that differ in summation order: at most a couple of bfloat16 ulps of the output's scale.
    ulp = 2.0 ** -7 * np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=2 * ulp)
    assert np.mean(got == ref) > 0.9  # most elements round to the same bfloat16


def test_engine_greedy_tokens_equal_xla_path(tiny_model):
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.params import Request, SamplingParams
    from tests.sampling.conftest import SMALL_ENGINE, logprob_atol

    rng = np.random.default_rng(3)
    prompts = [[int(x) for x in rng.integers(1, 97, size=n)] for n in (5, 23, 41, 2)]
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    results = {}
    for path in ("xla", "cpu_kernel"):
        cfg = dataclasses.replace(SMALL_ENGINE, decode_attention=path)
        with Engine(tiny_model, cfg) as eng:
            assert eng.decode_attention == path
            results[path] = eng.generate_batch([Request(p, params) for p in prompts])
    atol = logprob_atol(tiny_model, [p + r.token_ids for p, r in zip(prompts, results["xla"])])
    for a, b in zip(results["xla"], results["cpu_kernel"]):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=atol)


def test_auto_resolves_to_kernel_on_one_cpu_device():
    assert cpu_kernels.resolve_decode_attention("auto", platform="cpu", num_devices=1) == \
        "cpu_kernel"
    assert cpu_kernels.resolve_decode_attention("auto", platform="cpu", num_devices=4) == "xla"
    assert cpu_kernels.resolve_decode_attention("auto", platform="tpu", num_devices=1) == "xla"
    assert cpu_kernels.resolve_decode_attention("xla", platform="cpu", num_devices=1) == "xla"
    with pytest.raises(ValueError, match="one CPU device"):
        cpu_kernels.resolve_decode_attention("cpu_kernel", platform="cpu", num_devices=2)
    with pytest.raises(ValueError):
        EngineConfig(decode_attention="pallas")


@pytest.fixture
def unbuilt(monkeypatch, tmp_path):
    """The module as in a fresh process with an empty kernel cache and a broken $CXX."""
    monkeypatch.setattr(cpu_kernels, "_registered", None)
    monkeypatch.setattr(cpu_kernels, "_failed", None)
    monkeypatch.setenv("PPP_JAX_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))


def test_forced_kernel_with_a_broken_compiler_is_a_clear_error(unbuilt):
    with pytest.raises(cpu_kernels.KernelBuildError, match="no C\\+\\+ compiler.*no-such-g\\+\\+"):
        cpu_kernels.resolve_decode_attention("cpu_kernel", platform="cpu", num_devices=1)


def test_auto_with_a_broken_compiler_warns_once_and_uses_xla(unbuilt, caplog):
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        for _ in range(2):
            assert cpu_kernels.resolve_decode_attention("auto", platform="cpu",
                                                        num_devices=1) == "xla"
    warnings = [r for r in caplog.records if "using the XLA path" in r.getMessage()]
    assert len(warnings) == 1


def test_compile_error_carries_the_compilers_message(monkeypatch, tmp_path):
    # A "compiler" that runs but fails, as a broken toolchain would.
    fake = tmp_path / "fake-cxx"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                    "echo 'fatal error: ffi.h: No such file' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(cpu_kernels.KernelBuildError, match="ffi.h: No such file"):
        cpu_kernels.build(tmp_path / "kernels")
    assert not list((tmp_path / "kernels").glob("*.so"))  # no half-written library left


def test_build_is_cached_by_content(tmp_path):
    first = cpu_kernels.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert cpu_kernels.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp files left


def test_run_config_key_is_checked():
    from pathlib import Path

    from ppp_jax.config.loader import ConfigError
    from ppp_jax.config.run import load_run_config

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    assert load_run_config(str(tiny), ["engine.decode_attention=xla"]).engine.decode_attention \
        == "xla"
    with pytest.raises(ConfigError, match=r"engine.decode_attention: 'pallas' is not one of "
                                          r"\['auto', 'xla', 'cpu_kernel'\]"):
        load_run_config(str(tiny), ["engine.decode_attention=pallas"])
