"""The paged cache's attention equals plain causal attention over the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np

from ppp_jax.sampling.page_allocator import OutOfPages, PageAllocator
from ppp_jax.sampling.paged_cache import PagedKVCache
from tests import numerics as nm


def _reference(q, k, v):
    """Dense causal GQA attention, float64 numpy. q [T, N, H], k/v [T, K, H] -> [T, N, H]."""
    t, n, h = q.shape
    g = n // k.shape[1]
    kk = np.repeat(k, g, axis=1)
    vv = np.repeat(v, g, axis=1)
    s = np.einsum("tnh,snh->nts", q, kk) * h ** -0.5
    s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nts,snh->tnh", p, vv)


def test_chunked_writes_and_reads_match_dense_attention():
    # Two rows with different lengths, written in chunks of 5 through scattered pages; every
    # chunk's output must equal dense causal attention over the prefix.
    rng = np.random.default_rng(0)
    num_layers, num_pages, page_size, kvh, n, h = 2, 23, 4, 2, 6, 3
    lengths = [13, 7]
    chunk = 5
    qs = [rng.normal(size=(ln, n, h)).astype(np.float32) for ln in lengths]
    ks = [rng.normal(size=(ln, kvh, h)).astype(np.float32) for ln in lengths]
    vs = [rng.normal(size=(ln, kvh, h)).astype(np.float32) for ln in lengths]
    alloc = PageAllocator(num_pages)
    width = 8  # multiple of block_pages=2
    table = np.zeros((2, width), np.int32)
    for b, ln in enumerate(lengths):
        pages = alloc.alloc(-(-ln // page_size))
        pages = pages[::-1]  # non-contiguous, reversed order
        table[b, : len(pages)] = pages
    k_pool, v_pool = PagedKVCache.init_pool(num_layers, num_pages, page_size, kvh, h, jnp.float32)
    cache_lens = np.zeros(2, np.int32)
    layer = 1
    for start in range(0, max(lengths), chunk):
        q = np.zeros((2, chunk, n, h), np.float32)
        k = np.zeros((2, chunk, kvh, h), np.float32)
        v = np.zeros((2, chunk, kvh, h), np.float32)
        pos = np.zeros((2, chunk), np.int32)
        seg = np.zeros((2, chunk), np.int32)
        for b, ln in enumerate(lengths):
            m = max(0, min(chunk, ln - start))
            q[b, :m], k[b, :m], v[b, :m] = qs[b][start:start + m], ks[b][start:start + m], vs[b][start:start + m]
            pos[b, :m] = np.arange(start, start + m)
            seg[b, :m] = 1
        cache = PagedKVCache(k_pool, v_pool, jnp.asarray(table), jnp.asarray(cache_lens), block_pages=2)
        out, new = jax.jit(cache.attend)(jnp.int32(layer), q, k, v, pos, seg)
        stacked = jax.tree.map(lambda x: jnp.stack([x] * num_layers), new)
        cache = cache.replace_layer_states(stacked).advance(jnp.asarray(seg))
        k_pool, v_pool = cache.k_pages, cache.v_pages
        cache_lens = np.asarray(cache.cache_lens)
        for b, ln in enumerate(lengths):
            m = max(0, min(chunk, ln - start))
            if m == 0:
                continue
            ref = _reference(qs[b][: start + m], ks[b][: start + m], vs[b][: start + m])[start:]
            # one float32 attention vs float64, at this row's score and value magnitudes
            q64, k64 = qs[b].astype(np.float64), np.repeat(ks[b], n // kvh, axis=1)
            score_abs = np.einsum("tnh,snh->nts", np.abs(q64), np.abs(k64)).max() * h ** -0.5
            tol = nm.f32_attention_atol(h, start + m, score_abs, np.abs(vs[b]).max())
            np.testing.assert_allclose(np.asarray(out[b, :m]), ref, atol=tol, rtol=0)
    assert list(cache_lens) == lengths
    # The trash page absorbed the padding; the data pages hold exactly the keys.
    flat = np.asarray(k_pool[layer])
    for b, ln in enumerate(lengths):
        for p in range(ln):
            np.testing.assert_array_equal(flat[table[b, p // page_size], p % page_size], ks[b][p])


def test_allocator_refcounts_and_counters():
    alloc = PageAllocator(6)
    assert (alloc.capacity, alloc.num_free, alloc.num_used) == (5, 5, 0)
    a = alloc.alloc(3)
    assert 0 not in a and alloc.num_used == 3
    alloc.share(a[:2])
    alloc.free(a)
    assert alloc.num_used == 2 and alloc.refcount(a[0]) == 1 and alloc.refcount(a[2]) == 0
    try:
        alloc.alloc(4)
    except OutOfPages:
        pass
    else:
        raise AssertionError("expected OutOfPages")
    assert alloc.num_free == 3  # the failed allocation took nothing
    alloc.free(a[:2])
    assert alloc.num_used == 0
    try:
        alloc.free([a[0]])
    except ValueError:
        pass
    else:
        raise AssertionError("double free must raise")
