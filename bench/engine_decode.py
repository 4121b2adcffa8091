"""Decode throughput and time to first token: our engine vs transformers `generate`, same weights.

    .venv/bin/python bench/engine_decode.py                    # batch 1, 8, 32 (about 10 min on CPU)
    .venv/bin/python bench/engine_decode.py --batches 1 8 --new 64
    .venv/bin/python bench/engine_decode.py --quick            # batch 1, 16 new tokens: a smoke run

A ~107M-parameter Seed-OSS-shaped model (V=32000, D=768, F=2304, L=8, N=8, K=2, H=128: GQA and
head_dim != D/N like the 36B) with random weights is written once with transformers, then:
  - ours: `Engine` (paged KV, continuous batching, multi-step jitted decode), float32;
  - reference: transformers `SeedOssForCausalLM.generate` (torch, float32, SDPA attention, greedy).
Both greedy, 128-token prompts, `--new` new tokens, every prompt forced to the full length (no
stop tokens). Time to first token (TTFT) is measured from submission to the first token of
each request (transformers: `generate(max_new_tokens=1)`). Decode tokens/s counts the tokens after
the first one over the time after the first one.

Memory bandwidth: bytes one decode step must read (all weights + the K/V of every live token, at
the mean context length) divided by the measured step time, as a fraction of this machine's
bandwidth measured with numpy in the same run (best of a copy and a read-only sum; with
--single-thread, one thread, like the engine).

Compute roofline: the same run measures this machine's float32 matmul peak, as the best of
`--peak-repeats` timings of one large square matmul (`--peak-n`, default 2048) jitted in JAX and
run by torch, under the benchmark's thread settings; and, per batch B, the rate of a decode-shaped
GEMM ([B, D] x [D, F], the MLP's up projection) in both. A decode token costs
2 x (weights in matmuls: q/k/v/o, gate/up/down, lm_head) + 4 x L x N x H x context FLOPs
(attention scores and values, at the mean context of the decode phase, prompt + new/2); the
achieved model FLOP/s of each side (that times its decode tokens/s) is reported as a fraction of
its own library's peak, and "5x needs" is what ours would have to reach, as a fraction of the
JAX peak, to be 5x transformers. A fraction near or above 100% means the goal is out of reach on
this machine whatever the engine does.

Prints a Markdown table. Run it by hand; it is not a test. On a shared machine the numbers move
with the other load; say so next to them (the load average before and after, from `uptime`).

How to run (from the repository root):

    uptime; .venv/bin/python bench/engine_decode.py --single-thread --dir /tmp/bench_ckpt; uptime

  --single-thread   one core for XLA and torch: the process is pinned to one CPU
                    (sched_setaffinity) and torch uses one thread. XLA's flags alone did not do
                    it: with them a jitted dot still used both cores (cpu/wall 1.99), so runs
                    before 2026-11-22 compared ours on 2 cores with torch on 1;
  --dir             keeps the random checkpoint between runs (written once, ~430 MB);
  --batches/--new   a quicker run, e.g. `--batches 32 --new 64` (~3 min);
  --skip-hf         ours only;
  --quick           batch 1, 16 new tokens, 3 peak repeats: checks that the script works;
  --top-logprobs K  our requests ask for K top log-probs (the cost of that program variant).

Where a batch-32 decode step goes on this CPU (float32, context ~256; component timings with one
thread, medians on a loaded machine, so +-30%): the layer matmuls (~59M weights) ~55%, the lm_head
(24.6M weights) plus the log-softmax/argmax ~20%, the paged attention over cached tokens ~25-35%
(it reads every live token's K/V through a page gather). The step is compute-bound in fp32 GEMMs
at M=32, the same class of kernels torch uses, so the issue's 5x at batch 32 is out of reach on
this CPU; two runs on 2026-11-21 (load average 6-9) gave 1.17x and 1.95x at batch 32, the
difference being the machine's other load (transformers' own step time moved by 30%).
Those runs had XLA on both cores and torch on one (see --single-thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import pin_one_core

CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2304, num_layers=8,
              num_heads=8, num_kv_heads=2, head_dim=128, max_position_embeddings=4096)


def numpy_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """This machine's memory bandwidth in bytes/s, seen from one numpy thread: the better of a
    large array copy (read + write counted) and a large array sum (read only), best of `repeats`.
    """
    a = np.ones(nbytes // 8, np.float64)
    b = np.empty_like(a)
    best = 0.0
    for fn, moved in ((lambda: np.copyto(b, a), 2 * nbytes), (a.sum, nbytes)):
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = max(best, moved / (time.perf_counter() - t))
    return best


def _best_seconds(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rates(m: int, k: int, n: int, repeats: int) -> dict:
    """float32 FLOP/s of an [m, k] x [k, n] matmul, best of `repeats`: a jitted `jnp.dot`
    (blocked until ready) and `torch.mm`, on the same random inputs, current thread settings."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    flops = 2.0 * m * k * n
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.dot)
    t_jax = _best_seconds(lambda: dot(ja, jb).block_until_ready(), repeats)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.no_grad():
        t_torch = _best_seconds(lambda: torch.mm(ta, tb), repeats)
    return {"jax": flops / t_jax, "torch": flops / t_torch}


def decode_flops_per_token(cfg, context: float) -> float:
    """Model FLOPs of one decode token at `context` cached keys: 2 x matmul weights (q, k, v, o,
    gate, up, down per layer, plus the lm_head) + 4 x L x N x H x context (scores and values)."""
    d, h = cfg.hidden_size, cfg.head_dim
    per_layer = (d * cfg.num_heads * h + 2 * d * cfg.num_kv_heads * h + cfg.num_heads * h * d
                 + 3 * d * cfg.intermediate_size)
    matmul_weights = cfg.num_layers * per_layer + d * cfg.vocab_size
    return 2.0 * matmul_weights + 4.0 * cfg.num_layers * cfg.num_heads * h * context


def bench_ours(model, batch: int, prompts: list[list[int]], new: int,
               top_logprobs: int = 0) -> dict:
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.params import Request, SamplingParams
    from ppp_jax.sampling.config import EngineConfig

    page = 16
    max_len = len(prompts[0]) + new + 16
    cfg = EngineConfig(num_slots=batch, page_size=page, max_seq_len=max_len,
                       num_pages=batch * -(-max_len // page) + 2, decode_steps=16,
                       prefill_chunks=(128,), prefill_rows=tuple(sorted({1, batch})),
                       block_pages=8)
    with Engine(model, cfg) as eng:
        eng.warmup(top_logprobs=top_logprobs > 0)  # compile every prefill bucket and decode block
        firsts: dict[str, float] = {}
        reqs = [Request(p, SamplingParams(temperature=0.0, max_new_tokens=new,
                                          top_logprobs=top_logprobs)) for p in prompts]
        t0 = time.perf_counter()
        futs = []
        for r in reqs:  # submitted back to back, as concurrent clients would
            def on_tokens(ids, logps, tops=None, rid=r.request_id):
                firsts.setdefault(rid, time.perf_counter())
            futs.append(eng.submit(r, on_tokens))
        results = [f.result() for f in futs]
        t_end = time.perf_counter()
    assert all(len(r.token_ids) == new for r in results)
    ttft = np.mean([firsts[r.request_id] - t0 for r in reqs])
    last_first = max(firsts.values())
    decode_tokens = batch * (new - 1)
    return {"ttft_s": float(ttft), "decode_tok_s": decode_tokens / (t_end - last_first),
            "step_s": (t_end - last_first) / (new - 1), "total_s": t_end - t0}


def bench_hf(hf, batch: int, prompts: list[list[int]], new: int) -> dict:
    import torch

    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, attention_mask=mask, pad_token_id=1)
    with torch.no_grad():
        hf.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm up
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        total = time.perf_counter() - t
    assert out.shape[1] == len(prompts[0]) + new
    decode = max(total - ttft, 1e-9)
    return {"ttft_s": ttft, "decode_tok_s": batch * (new - 1) / decode,
            "step_s": decode / (new - 1), "total_s": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--dir", default=None, help="checkpoint dir (default: a temp dir)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="batch 1, 16 new tokens, 3 peak repeats (checks that the script runs)")
    ap.add_argument("--peak-n", type=int, default=2048, help="size of the square peak matmul")
    ap.add_argument("--peak-repeats", type=int, default=10)
    ap.add_argument("--top-logprobs", type=int, default=0,
                    help="our requests ask for this many top log-probs per token")
    ap.add_argument("--single-thread", action="store_true",
                    help="one compute thread for both XLA and torch (fairer, and much faster, on "
                         "an oversubscribed shared machine)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.new, args.peak_repeats = [1], 16, 3
    if args.single_thread:  # must happen before jax/torch start their thread pools
        # Pinning is what makes XLA single-core: its CPU runtime sizes its own thread pool,
        # whatever the Eigen flags below say.
        pin_one_core()

    import jax
    import torch
    from transformers import SeedOssForCausalLM

    from ppp_jax.model import api
    from ppp_jax.model import testing as mt

    if args.single_thread:
        torch.set_num_threads(1)

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="bench_engine_"))
    if not (workdir / "config.json").exists():
        mt.write_tiny_hf_checkpoint(workdir, seed=0, **CONFIG)
    model = api.load_pretrained(workdir)
    cfg = model.config
    n_params = cfg.param_count() if hasattr(cfg, "param_count") else None
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
        __import__("flax").nnx.state(model)))
    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    bw = numpy_bandwidth()
    peak = matmul_rates(args.peak_n, args.peak_n, args.peak_n, args.peak_repeats)
    print(json.dumps({"peak_flops": peak, "n": args.peak_n}), flush=True)
    gemm = {b: matmul_rates(b, cfg.hidden_size, cfg.intermediate_size, args.peak_repeats)
            for b in args.batches}
    mean_ctx = args.prompt + args.new / 2
    flops_tok = decode_flops_per_token(cfg, mean_ctx)
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(3, cfg.vocab_size, size=(b, args.prompt)).tolist() for b in args.batches}
    # transformers first, for all batches, then ours: XLA's idle CPU thread pool must not compete
    # with torch's threads.
    refs = {}
    if not args.skip_hf:
        hf = SeedOssForCausalLM.from_pretrained(workdir, dtype=torch.float32).eval()
        for batch in args.batches:
            refs[batch] = bench_hf(hf, batch, prompts[batch], args.new)
            print(json.dumps({"batch": batch, "hf": refs[batch]}), flush=True)
        del hf
    rows = []
    for batch in args.batches:
        ours = bench_ours(model, batch, prompts[batch], args.new, args.top_logprobs)
        step_bytes = weight_bytes + batch * mean_ctx * kv_bytes_per_token
        frac = step_bytes / ours["step_s"] / bw
        ref = refs.get(batch)
        roof = {"ours_flops": flops_tok * ours["decode_tok_s"],
                "ours_peak_fraction": flops_tok * ours["decode_tok_s"] / peak["jax"],
                "gemm_jax": gemm[batch]["jax"], "gemm_torch": gemm[batch]["torch"]}
        if ref:
            roof.update(hf_flops=flops_tok * ref["decode_tok_s"],
                        hf_peak_fraction=flops_tok * ref["decode_tok_s"] / peak["torch"],
                        five_x_needs=5 * flops_tok * ref["decode_tok_s"] / peak["jax"])
        rows.append({"batch": batch, "ours": ours, "hf": ref, "bw_fraction": frac, **roof})
        print(json.dumps(rows[-1]), flush=True)

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{len(os.sched_getaffinity(0))} usable by this process, "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); numpy bandwidth {bw / 1e9:.1f} GB/s")
    print(f"float32 matmul peak ({args.peak_n}^3, best of {args.peak_repeats}): "
          f"jax {peak['jax'] / 1e9:.1f} GFLOP/s, torch {peak['torch'] / 1e9:.1f} GFLOP/s; "
          f"model FLOPs per decode token {flops_tok / 1e6:.1f}M (mean context {mean_ctx:.0f})")
    print(f"model: {n_params / 1e6 if n_params else weight_bytes / 4e6:.0f}M params, float32; "
          f"prompt {args.prompt}, new {args.new}"
          + (f", our requests ask for {args.top_logprobs} top log-probs"
             if args.top_logprobs else ""))
    print()
    print("| batch | ours TTFT (s) | HF TTFT (s) | ours decode tok/s | HF decode tok/s | speed-up | "
          "ours step (ms) | bandwidth used | ours GFLOP/s (% jax peak) | HF GFLOP/s (% torch peak) "
          "| 5x HF needs (% jax peak) | [B,D]x[D,F] GEMM jax / torch GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, h = r["ours"], r["hf"]
        hs = (f"{h['ttft_s']:.3f} | " if h else "- | ")
        hd = (f"{h['decode_tok_s']:.1f} | {o['decode_tok_s'] / h['decode_tok_s']:.2f}x | "
              if h else "- | - | ")
        hf_roof = (f"{r['hf_flops'] / 1e9:.1f} ({r['hf_peak_fraction'] * 100:.0f}%) | "
                   f"{r['five_x_needs'] * 100:.0f}% | " if h else "- | - | ")
        print(f"| {r['batch']} | {o['ttft_s']:.3f} | {hs}{o['decode_tok_s']:.1f} | {hd}"
              f"{o['step_s'] * 1e3:.1f} | {r['bw_fraction'] * 100:.0f}% | "
              f"{r['ours_flops'] / 1e9:.1f} ({r['ours_peak_fraction'] * 100:.0f}%) | {hf_roof}"
              f"{r['gemm_jax'] / 1e9:.1f} / {r['gemm_torch'] / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
