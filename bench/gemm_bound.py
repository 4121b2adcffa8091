"""How fast can the single-turn batch-32 call be with this machine's GEMMs? A lower bound.

    uptime; .venv/bin/python bench/gemm_bound.py --single-thread; uptime

`bench/single_turn.py` asks for 1.5x the faster of transformers and tunix at batch 32. Every
system there spends most of that call in float32 matmuls of a few fixed shapes, so the call
can be no faster than those matmuls alone. This script times each matmul of that workload on
its own, jitted `x @ w` in XLA and `torch.mm` in torch (one process, the same inputs, best of
5 timings of a loop of calls), and adds them up with their counts:

  prefill  32 rows x 128 prompt tokens in calls of 8 rows x 128 tokens (our engine's
           prefill_rows (1, 8), chunk 128): M = 1024, the 7 projections of each of the 12
           layers, 4 calls; no logits (the first decode step samples the first token);
  decode   64 steps of 32 rows: M = 32, the 7 projections of each layer and the lm_head.

Attention, norms, RoPE, sampling and all host work are left out, so the sum is a lower bound
on the whole call for an engine that uses that library's GEMMs. The model is single_turn.py's:
V=32000, D=768, F=2048, L=12, N/K=12/4, H=64. It also prints the 2048^3 peak of each library.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _machine import cpu_model, load_averages, pin_one_core

V, D, F, L, N, K, H = 32000, 768, 2048, 12, 12, 4, 64
BATCH, PROMPT, NEW, PREFILL_ROWS = 32, 128, 64, 8

# name -> (in, out) of each matmul of one layer, and the lm_head
LAYER = {"q": (D, N * H), "k": (D, K * H), "v": (D, K * H), "o": (N * H, D),
         "gate": (D, F), "up": (D, F), "down": (F, D)}
LM_HEAD = {"lm_head": (D, V)}


def workload() -> list[tuple[str, int, int, int, int]]:
    """(name, M, in, out, count) of every matmul of the batch-32 single-turn call."""
    calls = BATCH // PREFILL_ROWS
    prefill = [(f"prefill {n}", PREFILL_ROWS * PROMPT, i, o, L * calls)
               for n, (i, o) in LAYER.items()]
    decode = [(f"decode {n}", BATCH, i, o, L * NEW) for n, (i, o) in LAYER.items()]
    decode += [(f"decode {n}", BATCH, i, o, NEW) for n, (i, o) in LM_HEAD.items()]
    return prefill + decode


def _best(f, loops: int, repeats: int = 5) -> float:
    """Seconds per call: best of `repeats` timings of `loops` calls."""
    f()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(loops):
            f()
        best = min(best, (time.perf_counter() - t) / loops)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--single-thread", action="store_true",
                    help="pin to one core (XLA single-threaded, torch 1 thread), as the "
                         "single-turn bench runs every system")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.single_thread:
        pin_one_core()
    import jax
    import jax.numpy as jnp
    import torch

    if args.single_thread:
        torch.set_num_threads(1)
    load_before = load_averages()
    rng = np.random.default_rng(0)
    dot = jax.jit(lambda x, w: x @ w)
    big = rng.standard_normal((2048, 2048), np.float32)
    jb, tb = jnp.asarray(big), torch.from_numpy(big)
    peaks = {"xla": 2 * 2048**3 / _best(lambda: dot(jb, jb).block_until_ready(), 3),
             "torch": 2 * 2048**3 / _best(lambda: torch.mm(tb, tb), 3)}
    rows, total = [], {"xla": 0.0, "torch": 0.0}
    for name, m, i, o, count in workload():
        x = rng.standard_normal((m, i), np.float32)
        w = rng.standard_normal((i, o), np.float32)
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        loops = max(3, int(2e8 // (2 * m * i * o)))  # about 0.2 GFLOP per timing at least
        secs = {"xla": _best(lambda: dot(jx, jw).block_until_ready(), loops),
                "torch": _best(lambda: torch.mm(tx, tw), loops)}
        flops = 2 * m * i * o
        row = {"matmul": name, "m": m, "k": i, "n": o, "count": count,
               **{f"{s}_ms": secs[s] * 1e3 for s in secs},
               **{f"{s}_gflops": flops / secs[s] / 1e9 for s in secs}}
        rows.append(row)
        for s in secs:
            total[s] += secs[s] * count
        print(f"{name:15s} M={m:5d} {i:5d}x{o:<6d} x{count:4d}: XLA {row['xla_gflops']:6.1f} "
              f"GFLOP/s, torch {row['torch_gflops']:6.1f} GFLOP/s", flush=True)
    flops_all = sum(2 * m * i * o * c for _, m, i, o, c in workload())
    print(f"\nmachine: {cpu_model()}; load {' '.join(load_before)} -> "
          f"{' '.join(load_averages())}")
    print(f"2048^3 peak GFLOP/s: XLA {peaks['xla'] / 1e9:.1f}, torch {peaks['torch'] / 1e9:.1f}")
    print(f"batch-{BATCH} call: {flops_all / 1e9:.0f} GFLOP of matmuls; at the XLA peak "
          f"{flops_all / peaks['xla']:.2f} s")
    for s in ("xla", "torch"):
        print(f"sum of the matmuls alone, {s}: {total[s]:.2f} s "
              f"({flops_all / total[s] / 1e9:.1f} GFLOP/s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "total_s": total, "peak_flops": peaks,
                       "gflop": flops_all / 1e9, "cpu": cpu_model()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
