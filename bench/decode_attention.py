"""Decode attention over the paged KV pool, per decode step: the C++ kernel vs the XLA loop.

    uptime; .venv/bin/python bench/decode_attention.py --single-thread; uptime

One decode step's attention for every layer (a scan over layers, as the model runs it:
`PagedKVCache.attend` with T = 1), 32 rows, 8 layers, K=2 kv heads, G=4 query heads per kv head,
H=64, page size 16, block_pages 8 (bench/multiturn.py's engine), float32, every row holding the
same number of cached tokens in pages scattered over a pool sized like the multi-turn bench's
(1 + 32 x 105 pages). Both paths run in the same process, interleaved (xla, kernel, xla, ...),
best of --repeats timings of --steps calls each; CPU time (process_time) and wall time.

GB/s: the bytes of cached K and V the step must read (2 x L x B x len x K x H x 4) over the best
CPU time per step: the kernel reads each once; compare with the ~7.2 GB/s a contiguous slice of
the same size reached on this machine (docs/benchmarks.md). Not a test; on a shared machine, note
the load (`uptime`) beside the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import pin_one_core  # noqa: E402 (bench/ is on the path: the script's folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lens", type=int, nargs="+", default=[256, 1000, 1500])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--block-pages", type=int, default=8)
    ap.add_argument("--pages-per-row", type=int, default=105)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--layouts", nargs="+", default=["random", "sequential"],
                    choices=["random", "sequential"],
                    help="where each row's pages lie: a random permutation of the pool, or one "
                         "run of consecutive pages per row")
    ap.add_argument("--steps", type=int, default=5, help="calls per timing")
    ap.add_argument("--repeats", type=int, default=7, help="timings per path (best kept)")
    ap.add_argument("--single-thread", action="store_true",
                    help="pin to one core, XLA single-threaded (as bench/multiturn.py)")
    args = ap.parse_args(argv)
    if args.single_thread:
        pin_one_core()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ppp_jax.sampling import cpu_kernels
    from ppp_jax.sampling.paged_cache import PagedKVCache

    cpu_kernels.ensure_registered()
    L, B, K, G, H, S = (args.layers, args.rows, args.kv_heads, args.groups, args.head_dim,
                        args.page_size)
    dtype = jnp.dtype(args.dtype)
    P = 1 + B * args.pages_per_row
    W = -(-args.pages_per_row // args.block_pages) * args.block_pages
    rng = np.random.default_rng(0)
    k_pool = jnp.asarray(rng.normal(size=(L, P, S, K, H)), dtype)
    v_pool = jnp.asarray(rng.normal(size=(L, P, S, K, H)), dtype)
    tables = {}
    for layout in args.layouts:
        ids = rng.permutation(np.arange(1, P)) if layout == "random" else np.arange(1, P)
        table = np.zeros((B, W), np.int32)
        table[:, :args.pages_per_row] = ids[:B * args.pages_per_row].reshape(B, -1)
        tables[layout] = jnp.asarray(table)
    q = jnp.asarray(rng.normal(size=(L, B, 1, K * G, H)), dtype)
    kn = jnp.asarray(rng.normal(size=(L, B, 1, K, H)), dtype)
    vn = jnp.asarray(rng.normal(size=(L, B, 1, K, H)), dtype)
    seg = jnp.ones((B, 1), jnp.int32)

    def step(path, k_pool, v_pool, table, lens):
        cache = PagedKVCache(k_pool, v_pool, table, lens, args.block_pages, path)

        def layer(acc, xs):
            i, qi, ki, vi = xs
            out, _ = cache.attend(i, qi, ki, vi, lens[:, None], seg)
            return acc + jnp.sum(out.astype(jnp.float32)), None

        total, _ = jax.lax.scan(layer, jnp.float32(0), (jnp.arange(L, dtype=jnp.int32), q, kn,
                                                        vn))
        return total

    progs = {p: jax.jit(lambda kp, vp, table, lens, p=p: step(p, kp, vp, table, lens))
             for p in ("xla", "cpu_kernel")}
    print(f"# {L} layers, {B} rows, K={K}, G={G}, H={H}, page {S}, block_pages "
          f"{args.block_pages}, pool {P} pages ({2 * k_pool.nbytes / 2**20:.0f} MiB k+v), "
          f"{dtype.name}, load {os.getloadavg()[0]:.2f}")
    print("| pages | cached tokens | path | CPU ms/step | wall ms/step | GB/s (CPU) | out |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for layout, table in tables.items():
        for n in args.lens:
            lens = jnp.full((B,), n, jnp.int32)
            # compile and warm; `out` (the sum of the outputs) shows both paths agree
            outs = {p: float(f(k_pool, v_pool, table, lens)) for p, f in progs.items()}
            best = {p: (float("inf"), float("inf")) for p in progs}
            for _ in range(args.repeats):
                for p, f in progs.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    for _ in range(args.steps):
                        r = f(k_pool, v_pool, table, lens)
                    r.block_until_ready()
                    cpu = (time.process_time() - c0) / args.steps
                    wall = (time.perf_counter() - t0) / args.steps
                    best[p] = (min(best[p][0], cpu), min(best[p][1], wall))
            nbytes = 2 * L * B * n * K * H * dtype.itemsize
            for p in progs:
                cpu, wall = best[p]
                print(f"| {layout} | {n} | {p} | {cpu * 1e3:.1f} | {wall * 1e3:.1f} | "
                      f"{nbytes / cpu / 1e9:.2f} | {outs[p]:.6g} |")
            sys.stdout.flush()
    # The machine's own figures for the same bytes: a contiguous read of the K pool, and the
    # same random 8 KB pages gathered by numpy (best of 3 each; CPU time).
    a = np.asarray(k_pool).reshape(L * P, -1)
    idx = rng.permutation(L * P)[:B * args.pages_per_row * 2]
    best_sum = best_gather = float("inf")
    for _ in range(3):
        c0 = time.process_time()
        a.sum()
        best_sum = min(best_sum, time.process_time() - c0)
        c0 = time.process_time()
        a[idx].sum()
        best_gather = min(best_gather, time.process_time() - c0)
    print(f"# numpy, one core: contiguous sum of the K pool {a.nbytes / best_sum / 1e9:.2f} GB/s; "
          f"gather of {idx.size} random pages + sum {idx.size * a.shape[1] * a.itemsize / best_gather / 1e9:.2f} GB/s")
    print(f"# load {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
