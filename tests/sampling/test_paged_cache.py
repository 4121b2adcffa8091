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


def _attend_one_layout(cache, layer, q, k, v, q_positions, q_segment_ids):
    """The cached attention as it was computed before the prefill layout (queries kept as
    [B, T, K, G, H] in every dot, as decode still does): the reference of the prefill path."""
    f32, neg = jnp.float32, -1e30
    b, t, n, h = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, n // kvh, h)

    def scores(keys):
        s = jnp.einsum("btkgh,bskh->bkgts", qg, keys, preferred_element_type=f32)
        return (s * f32(h ** -0.5)).astype(f32)

    def pv(p, values):
        return jnp.einsum("bkgts,bskh->bkgth", p, values)

    valid_new = ((q_positions[:, None, :] <= q_positions[:, :, None])
                 & (q_segment_ids[:, None, :] != 0))[:, None, None]
    s = jnp.where(valid_new, scores(k), neg)
    m = jnp.max(s, axis=-1)
    p = jnp.where(valid_new, jnp.exp(s - m[..., None]), 0.0)
    l, acc = jnp.sum(p, axis=-1), pv(p, v)
    block = cache.block_pages * cache.page_size

    def body(i, carry):
        m, l, acc = carry
        pages = jax.lax.dynamic_slice_in_dim(cache.page_table, i * cache.block_pages,
                                             cache.block_pages, axis=1)
        kb = cache.k_pages[layer, pages].reshape(b, block, kvh, h)
        vb = cache.v_pages[layer, pages].reshape(b, block, kvh, h)
        valid = ((i * block + jnp.arange(block))[None, :]
                 < cache.cache_lens[:, None])[:, None, None, None, :]
        s = jnp.where(valid, scores(kb), neg)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        corr = jnp.exp(m - m_new)
        p = jnp.where(valid, jnp.exp(s - m_new[..., None]), 0.0)
        return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv(p, vb)

    num_blocks = (jnp.max(cache.cache_lens) + block - 1) // block
    m, l, acc = jax.lax.fori_loop(0, num_blocks, body, (m, l, acc))
    out = acc / jnp.maximum(l, jnp.finfo(f32).tiny)[..., None]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _random_case(rng, *, num_layers, page_size, kvh, h, n, t, width, cache_lens, real):
    rows = len(cache_lens)
    num_pages = 1 + rows * width
    k_pool = jnp.asarray(rng.normal(size=(num_layers, num_pages, page_size, kvh, h)), jnp.float32)
    v_pool = jnp.asarray(rng.normal(size=(num_layers, num_pages, page_size, kvh, h)), jnp.float32)
    table = np.stack([1 + r * width + rng.permutation(width) for r in range(rows)]).astype(np.int32)
    q = jnp.asarray(rng.normal(size=(rows, t, n, h)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(rows, t, kvh, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(rows, t, kvh, h)), jnp.float32)
    seg = (np.arange(t)[None] < np.asarray(real)[:, None]).astype(np.int32)
    pos = (np.asarray(cache_lens)[:, None] + np.arange(t)[None]).astype(np.int32) * seg
    return k_pool, v_pool, table, q, k, v, pos, seg


def _both_layouts(k_pool, v_pool, table, cache_lens, block_pages, q, k, v, pos, seg):
    cache = PagedKVCache(k_pool, v_pool, jnp.asarray(table), jnp.asarray(cache_lens, jnp.int32),
                         block_pages=block_pages)
    out, _ = jax.jit(cache.attend)(jnp.int32(1), q, k, v, pos, seg)
    ref = jax.jit(_attend_one_layout)(cache, jnp.int32(1), q, k, v, pos, seg)
    real_rows = seg.astype(bool)  # padding queries' outputs are never used
    return np.asarray(out)[real_rows], np.asarray(ref)[real_rows]


def test_prefill_layout_equals_the_decode_layout():
    # Prefill (T > 1) runs its dots on [B, K, G*T, H] queries and [B, K, S', H] blocks (no
    # transposes inside the loop over cached blocks); decode keeps [B, T, K, G, H]. Same
    # products, summed in another order by XLA's CPU dot kernels for some shapes, so equal up
    # to float32 rounding (the last bits of some outputs), not bit for bit; greedy tokens are
    # checked end to end in test_engine_parity (a session's later turn against `generate`).
    # Rows with partial blocks, padding, no cache, GQA groups of 1, 2 and 4; tiny blocks and
    # the engine's default block (8 pages of 16 tokens) with a real head size.
    rng = np.random.default_rng(3)
    for n, t, cache_lens, real in ((4, 7, [0, 5, 19, 37], [7, 7, 3, 6]),
                                   (8, 16, [29, 0, 8, 45], [16, 11, 16, 1]),
                                   (2, 3, [0, 0, 0, 0], [3, 3, 3, 3])):
        case = _random_case(rng, num_layers=2, page_size=4, kvh=2, h=8, n=n, t=t, width=12,
                            cache_lens=cache_lens, real=real)
        out, ref = _both_layouts(*case[:3], cache_lens, 2, *case[3:])
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)
    for n, t, cache_lens, real in ((8, 40, [0, 130, 300, 77], [40, 40, 9, 33]),
                                   (4, 201, [456, 20], [201, 150])):
        case = _random_case(rng, num_layers=2, page_size=16, kvh=2, h=64, n=n, t=t, width=32,
                            cache_lens=cache_lens, real=real)
        out, ref = _both_layouts(*case[:3], cache_lens, 8, *case[3:])
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)


def test_masked_cache_slots_contribute_exactly_nothing():
    # The loop over cached blocks masks the scores of slots at or past a row's cache length
    # once (to -1e30) and then takes p = exp(s - max) without masking p again: every real
    # query attends to itself, so its max is a real score and exp(-1e30 - max) is exactly 0.
    # So whatever a masked slot holds (stale K/V of a freed sequence, the trash page), a real
    # query's output is bit for bit the one with those slots zeroed; padding rows and queries
    # (segment 0) may differ, their outputs are never used. Prefill (T > 1) and the XLA
    # decode path (T = 1), partial last blocks, a row with nothing cached.
    rng = np.random.default_rng(7)
    for t, cache_lens, real in ((5, [0, 6, 13, 21], [5, 5, 2, 0]), (1, [3, 16, 0, 9], [1, 1, 1, 0])):
        k_pool, v_pool, table, q, k, v, pos, seg = _random_case(
            rng, num_layers=2, page_size=4, kvh=2, h=8, n=4, t=t, width=8,
            cache_lens=cache_lens, real=real)
        slots = np.arange(k_pool.shape[1] * k_pool.shape[2]).reshape(k_pool.shape[1:3])
        cached = np.zeros(slots.shape, bool)  # [P, S]: slots some row reads as cached
        for row, n_cached in zip(table, cache_lens):
            for p in range(n_cached):
                cached[row[p // 4], p % 4] = True
        keep = jnp.asarray(cached)[None, :, :, None, None]
        outs = []
        for k_fill, v_fill in ((0.0, 0.0), (1e3, 1e6)):  # masked slots: zeros, then garbage
            kp = jnp.where(keep, k_pool, k_fill * jnp.sign(k_pool))
            vp = jnp.where(keep, v_pool, v_fill * jnp.sign(v_pool))
            cache = PagedKVCache(kp, vp, jnp.asarray(table), jnp.asarray(cache_lens, jnp.int32),
                                 block_pages=2)
            out, _ = jax.jit(cache.attend)(jnp.int32(1), q, k, v, pos, seg)
            outs.append(np.asarray(out)[seg.astype(bool)])
        assert np.isfinite(outs[1]).all()
        np.testing.assert_array_equal(outs[1], outs[0])
