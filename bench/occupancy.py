"""Decode cost against engine size: 8 live requests on 8, 16 and 32 slots, same weights, one
process; with the decode row buckets (`EngineConfig.decode_rows`, default) and without them
(`decode_rows: [num_slots]`, every block computes every slot), both sides in the same run.

    uptime; .venv/bin/python bench/occupancy.py --single-thread; uptime   # ~5 min on 2 CPU cores
    .venv/bin/python bench/occupancy.py --live 4 --slots 4 32 --new 64

Model: a 32.5M-parameter Seed-OSS-shaped model (V=8192, D=512, F=1536, L=8, N=8, K=2, H=64),
random weights (numpy init), float32. Every engine has the same KV pool (pages, page size,
context) so only the slot count differs. The requests: `--live` prompts of 64 tokens, greedy,
`--new` new tokens, no stop ids (every request runs its whole budget).

Decode time per step: the best of `--repeats` runs of `--new` tokens minus the best of as many
runs of 1 token (prefill and the first token, the same programs in every engine), divided by
new - 1 (per-block host work included). The runs are interleaved across engines (every engine
once per round) so a change of the machine's load hits all of them. The tokens of every engine
are checked to be the same. CPU time (`time.process_time`, all threads of the process) is
measured the same way beside the wall time: with `--single-thread` it is the work done, which
the other jobs of a shared machine change much less than the wall time. The "vs live-size
engine" columns divide by the bucketed engine with as many slots as live requests (the goal:
within 1.15). With as many slots as live requests the two settings are the same program, so
the difference between those two rows is the measurement's noise.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _machine import pin_one_core


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--live", type=int, default=8)
    ap.add_argument("--slots", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--single-thread", action="store_true",
                    help="pin the process to one core, XLA single-threaded (steadier on a "
                         "shared machine: a 2-thread matmul waits for its slower thread)")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.single_thread:  # before jax starts its thread pools (as bench/engine_decode.py)
        pin_one_core()
    import jax

    from ppp_jax.model.config import tiny
    from ppp_jax.model.testing import make_model
    from ppp_jax.sampling import Engine, EngineConfig, Request, SamplingParams

    cfg = tiny(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_layers=8,
               num_heads=8, num_kv_heads=2, head_dim=64, max_position_embeddings=1024)
    model = make_model(cfg, seed=0, kernel_std=0.04)
    params = sum(x.size for x in jax.tree.leaves(__import__("flax").nnx.state(model)))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, size=64).tolist() for _ in range(args.live)]

    def requests(new: int):
        return [Request(p, SamplingParams(temperature=0.0, max_new_tokens=new)) for p in prompts]

    engines = {}
    for slots in args.slots:
        for bucketed in (True, False):
            ec = EngineConfig(num_slots=slots, page_size=16, num_pages=1 + 32 * 12,
                              max_seq_len=192, decode_steps=8, prefill_chunks=(64,),
                              prefill_rows=(1,), block_pages=4,
                              decode_rows=() if bucketed else (slots,))
            eng = Engine(model, ec)
            eng.warmup()
            engines[(slots, bucketed)] = eng
    # The program a block of `--live` rows runs, in each engine: the same HLO in every bucketed
    # engine (the shapes are the same), so any difference in their times is noise.
    hlo = {k: eng.lower_decode(rows=min(b for b in eng.config.decode_buckets if b >= args.live))
           .as_text() for k, eng in engines.items()}
    same_program = all(hlo[(s, True)] == hlo[(args.live, True)] for s in args.slots)
    tokens = {}
    # best wall and CPU seconds (the whole process: the engine's thread and XLA's) of a run of
    # 1 token and of `--new` tokens, per engine
    first, whole, cpu_first, cpu_whole = ({k: float("inf") for k in engines} for _ in range(4))
    for _ in range(args.repeats):
        for key, eng in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            eng.generate_batch(requests(1))
            t1, c1 = time.perf_counter(), time.process_time()
            out = eng.generate_batch(requests(args.new))
            t2, c2 = time.perf_counter(), time.process_time()
            first[key], whole[key] = min(first[key], t1 - t0), min(whole[key], t2 - t1)
            cpu_first[key] = min(cpu_first[key], c1 - c0)
            cpu_whole[key] = min(cpu_whole[key], c2 - c1)
            tokens[key] = [r.token_ids for r in out]
    best = {k: (whole[k] - first[k]) / (args.new - 1) for k in engines}
    cpu = {k: (cpu_whole[k] - cpu_first[k]) / (args.new - 1) for k in engines}
    for eng in engines.values():
        eng.close()
    reference = tokens[(args.slots[0], True)]
    same = all(t == reference for t in tokens.values())
    print(f"model {params / 1e6:.1f}M params, float32; {args.live} live requests, 64-token "
          f"prompts, {args.new} new tokens; best of {args.repeats}; "
          f"{'one core' if args.single_thread else 'all cores'}; same tokens in every "
          f"engine: {same}; bucketed engines run the same decode program as the "
          f"{args.live}-slot engine: {same_program}")
    base = {b: best.get((args.live, b)) for b in (True, False)}
    cpu_base = cpu.get((args.live, True))
    print("| slots | decode rows | wall ms per decode step | tokens/s | vs live-size engine | "
          "CPU ms per decode step | CPU vs live-size engine |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (slots, bucketed), per_step in best.items():
        ref = base[True]
        ratio = f"{per_step / ref:.2f}x" if ref else "-"
        cpu_ratio = f"{cpu[(slots, bucketed)] / cpu_base:.2f}x" if cpu_base else "-"
        rows = "bucket of the live slots" if bucketed else "all slots (`decode_rows: [num_slots]`)"
        print(f"| {slots} | {rows} | {per_step * 1e3:.1f} | {args.live / per_step:.0f} | "
              f"{ratio} | {cpu[(slots, bucketed)] * 1e3:.1f} | {cpu_ratio} |")


if __name__ == "__main__":
    main()
