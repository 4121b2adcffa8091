"""Multi-turn agent episodes: our engine's sessions vs transformers `generate`, same weights.

    uptime; .venv/bin/python bench/multiturn.py --single-thread --dir /tmp/bench_mt; uptime
    .venv/bin/python bench/multiturn.py --sessions 4 --turns 2 --obs 32 --new 8 --first 32  # smoke

The workload is PPP's: `--sessions` episodes run concurrently, each `--turns` turns long. Turn 0
is a `--first`-token prompt (system prompt + task); every later turn appends a `--obs`-token
observation (a tool result or the user's answer) to the conversation so far; every turn
generates exactly `--new` tokens (greedy, no stop ids: EOS is ignored on both sides, so both
generate the same number of tokens). The prompts and observations are random token ids, fixed
in advance (`inputs.json`), so they do not depend on what either side generated.

Model: a 32.5M-parameter Seed-OSS-shaped model (V=8192, D=512, F=1536, L=8, N=8, K=2, H=64: GQA
as the 36B), random weights written once with transformers (`save_pretrained`) into `--dir`,
then loaded by both sides from that checkpoint; float32 on both sides.

Systems, each in its own process (`--system NAME`; without it this script is the driver that
writes the checkpoint and the inputs, launches one process per system in turn and prints the
table):
  - ours:     `Engine` with one session per episode: a turn's request carries only the appended
              tokens (`Request(obs, session_id=...)`), the session keeps its KV pages between
              turns; the episodes are asyncio coroutines feeding one continuous batch
              (`--sessions` slots);
  - hf:       transformers `SeedOssForCausalLM.generate`, all episodes batched (left padding,
              attention mask), the whole conversation re-prefilled every turn;
  - hf-cache: the same, but one `DynamicCache` kept across turns and passed back in with the
              whole conversation, so `generate` prefills only the uncached (appended) tokens.
              One batched cache, a row per episode: this works here because every episode
              appends the same number of tokens per turn, so turn 0's left padding stays the
              only padding; episodes of different lengths would need a cache per episode
              (batch 1) or padding in the middle of the cache.

Timing: the wall time of all episodes from the first request to the last result, best of
`--repeats` runs in the same process after a warm-up (ours: `warmup()` compiles every program
first, its time reported separately; transformers: one small `generate`); the process's CPU time
(all threads) of the same run beside it. Tokens/s = generated tokens (sessions x turns x new) /
wall. Per turn: the time from the previous turn's last result to this turn's last result (the
episodes stay in step, all turns having the same lengths). The driver also reports how many of
the (episode, turn) outputs are token-for-token the same as ours (fp32 greedy on random
weights: near-ties can flip an argmax, and the conversations diverge from there).

--single-thread pins every process to one core (XLA single-threaded, torch 1 thread), as the
other benches do on this shared 2-core machine. `--new 1` (every turn a prefill and one token)
splits each side's time into prefill and decode. Run it by hand; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _machine import cpu_model, ensure_checkpoint, load_averages, pin_one_core

CONFIG = dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_layers=8,
              num_heads=8, num_kv_heads=2, head_dim=64, max_position_embeddings=4096)
SYSTEMS = ("ours", "hf", "hf-cache")
LABELS = {
    "ours": "ours: `Engine` sessions (append only the new turn)",
    "hf": "transformers `generate`, whole conversation re-prefilled each turn",
    "hf-cache": "transformers `generate`, one `DynamicCache` kept across turns",
}


# ---- the systems (each in its own process) -----------------------------------------------------


def run_ours(ckpt: Path, inp: dict, repeats: int, prefill_chunks: tuple[int, ...],
             decode_attention: str = "auto") -> dict:
    import asyncio

    from ppp_jax.model import api
    from ppp_jax.sampling import Engine, EngineConfig, Request, SamplingParams

    S, T, new = inp["sessions"], inp["turns"], inp["new"]
    obs_len = len(inp["obs"][0][0]) if T > 1 else 0
    total = len(inp["first"][0]) + (T - 1) * obs_len + T * new
    page = 16
    max_len = -(-(total + 16) // page) * page
    cfg = EngineConfig(num_slots=S, page_size=page, max_seq_len=max_len,
                       num_pages=1 + S * -(-max_len // page), decode_steps=16,
                       prefill_chunks=prefill_chunks, prefill_rows=(1, 8), block_pages=8,
                       decode_attention=decode_attention)
    model = api.load_pretrained(ckpt)
    params = SamplingParams(temperature=0.0, max_new_tokens=new)  # no stop ids
    with Engine(model, cfg) as eng:
        t = time.perf_counter()
        eng.warmup()
        warmup_s = time.perf_counter() - t

        done_at = [0.0] * T  # when the last episode finished each turn

        async def episode(rep: int, i: int) -> list[list[int]]:
            sid = f"r{rep}-s{i}"
            out = []
            for turn in range(T):
                prompt = inp["first"][i] if turn == 0 else inp["obs"][i][turn - 1]
                res = await eng.generate(Request(prompt, params, session_id=sid))
                assert len(res.token_ids) == new, (len(res.token_ids), res.finish_reason)
                done_at[turn] = max(done_at[turn], time.perf_counter())
                out.append(res.token_ids)
            eng.end_session(sid)
            return out

        async def all_episodes(rep: int):
            return await asyncio.gather(*(episode(rep, i) for i in range(S)))

        runs = []
        for rep in range(repeats):
            before = dict(eng._core.counters)
            t0, c0 = time.perf_counter(), time.process_time()
            tokens = asyncio.run(all_episodes(rep))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            after = dict(eng._core.counters)
            ends = [t0] + done_at  # the episodes stay in step: every turn has the same lengths
            runs.append({"wall_s": wall, "cpu_s": cpu,
                         "turn_s": [b - a for a, b in zip(ends, ends[1:])], **{
                k: after.get(k, 0) - before.get(k, 0)
                for k in ("prefill_tokens", "decode_tokens", "decode_blocks", "session_evictions",
                          "preemptions", "prefix_hits")}})
            print(json.dumps({"system": "ours", "repeat": rep, **runs[-1]}), flush=True)
    return {"runs": runs, "tokens": tokens, "warmup_s": warmup_s,
            "engine": {"num_slots": S, "max_seq_len": max_len, "num_pages": cfg.num_pages,
                       "prefill_chunks": list(cfg.prefill_chunks),
                       "prefill_rows": list(cfg.prefill_rows), "decode_steps": cfg.decode_steps,
                       "decode_attention": eng.decode_attention}}


def run_hf(ckpt: Path, inp: dict, repeats: int, keep_cache: bool) -> dict:
    import torch
    from transformers import DynamicCache, SeedOssForCausalLM

    S, T, new = inp["sessions"], inp["turns"], inp["new"]
    hf = SeedOssForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # ignore EOS: exactly `new` tokens per turn
    pad = 0
    kw = dict(do_sample=False, max_new_tokens=new, pad_token_id=pad, top_p=None, top_k=None,
              temperature=None)

    def batch(convs: list[list[int]]):
        """Left-padded ids and attention mask."""
        width = max(map(len, convs))
        ids = torch.full((len(convs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(convs), width), dtype=torch.long)
        for r, c in enumerate(convs):
            ids[r, width - len(c):] = torch.tensor(c)
            mask[r, width - len(c):] = 1
        return ids, mask

    def episodes() -> tuple[list[list[list[int]]], int, list[float]]:
        turn_s = []
        convs = [list(p) for p in inp["first"]]
        out: list[list[list[int]]] = [[] for _ in range(S)]
        cache = DynamicCache() if keep_cache else None
        fed = 0  # tokens `generate` ran through the model as prompt (prefill), all rows
        for turn in range(T):
            if turn:
                for i in range(S):
                    convs[i] += inp["obs"][i][turn - 1]
            t = time.perf_counter()
            ids, mask = batch(convs)
            if keep_cache:
                assert mask.sum(1).tolist() == [len(c) for c in convs]
                # the batch's padding is turn 0's: every row grew by the same amount since
                fed += S * (ids.shape[1] - cache.get_seq_length())
                res = hf.generate(ids, attention_mask=mask, past_key_values=cache, **kw)
            else:
                fed += S * ids.shape[1]
                res = hf.generate(ids, attention_mask=mask, **kw)
            gen = res[:, ids.shape[1]:]
            assert gen.shape[1] == new, gen.shape
            for i in range(S):
                toks = gen[i].tolist()
                out[i].append(toks)
                convs[i] += toks
            turn_s.append(time.perf_counter() - t)
        return out, fed, turn_s

    with torch.inference_mode():
        t = time.perf_counter()
        hf.generate(torch.tensor([inp["first"][0][:16]]), **{**kw, "max_new_tokens": 2})
        warmup_s = time.perf_counter() - t
        runs = []
        for rep in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            tokens, fed, turn_s = episodes()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append({"wall_s": wall, "cpu_s": cpu, "prefill_tokens": fed, "turn_s": turn_s})
            print(json.dumps({"system": "hf-cache" if keep_cache else "hf", "repeat": rep,
                              **runs[-1]}), flush=True)
    return {"runs": runs, "tokens": tokens, "warmup_s": warmup_s,
            "torch_threads": torch.get_num_threads()}


def child(args) -> int:
    if args.single_thread:
        pin_one_core()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    ckpt = Path(args.dir)
    inp = json.loads((ckpt / "inputs.json").read_text())
    if args.system == "ours":
        res = run_ours(ckpt, inp, args.repeats, tuple(args.prefill_chunks),
                       args.decode_attention)
    else:
        import torch
        if args.single_thread:
            torch.set_num_threads(1)
        res = run_hf(ckpt, inp, args.repeats, keep_cache=args.system == "hf-cache")
    res.update(system=args.system, single_thread=args.single_thread,
               cpus=sorted(os.sched_getaffinity(0)))
    Path(args.out).write_text(json.dumps(res))
    return 0


# ---- the driver ---------------------------------------------------------------------------------


def driver(args) -> int:
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_checkpoint(workdir, CONFIG)
    rng = np.random.default_rng(args.seed)
    S, T = args.sessions, args.turns
    inp = {"sessions": S, "turns": T, "new": args.new,
           "first": rng.integers(3, CONFIG["vocab_size"], size=(S, args.first)).tolist(),
           "obs": rng.integers(3, CONFIG["vocab_size"], size=(S, T - 1, args.obs)).tolist()}
    (workdir / "inputs.json").write_text(json.dumps(inp))

    results, loads = {}, {}
    for system in args.systems:
        out = workdir / f"result_{system}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--system", system, "--dir", str(workdir), "--out",
               str(out), "--repeats", str(args.repeats), "--prefill-chunks",
               *map(str, args.prefill_chunks), "--decode-attention", args.decode_attention] + (
                   ["--single-thread"] if args.single_thread else [])
        load_before = load_averages()
        print(f"# {system}: load {load_before}", flush=True)
        subprocess.run(cmd, check=True)
        loads[system] = (load_before, load_averages())
        results[system] = json.loads(out.read_text())

    gen_tokens = S * T * args.new
    ctx = args.first + (T - 1) * args.obs + T * args.new
    print()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; "
          f"{'each process pinned to one core' if args.single_thread else 'all cores'}")
    print(f"workload: {S} sessions x {T} turns, first prompt {args.first}, observation "
          f"{args.obs}, {args.new} new tokens per turn (greedy, EOS ignored), final context "
          f"{ctx} tokens; {gen_tokens} generated tokens per run; best of {args.repeats}; "
          f"model {CONFIG}, float32")
    if "ours" in results:
        print(f"ours: engine {results['ours']['engine']}, warm-up (compiles) "
              f"{results['ours']['warmup_s']:.1f} s")
    print()
    base = None
    for system in ("hf", "hf-cache"):
        if system in results:
            base = base or system
    ours_tok = results.get("ours", {}).get("tokens")
    print("| system | wall (s) | generated tok/s | CPU (s) | prompt tokens run | ours vs it (wall) "
          "| ours vs it (CPU) | outputs equal to ours | load before -> after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    best = {s: min(r["runs"], key=lambda x: x["wall_s"]) for s, r in results.items()}
    for system, r in results.items():
        b = best[system]
        same = "-"
        if ours_tok is not None and system != "ours":
            pairs = [(a, c) for ea, ec in zip(ours_tok, r["tokens"]) for a, c in zip(ea, ec)]
            same = f"{sum(a == c for a, c in pairs)}/{len(pairs)}"
        if "ours" in best and system != "ours":
            vs = f"{b['wall_s'] / best['ours']['wall_s']:.2f}x"
            vs_cpu = f"{b['cpu_s'] / best['ours']['cpu_s']:.2f}x"
        else:
            vs = vs_cpu = "-"
        lb, la = loads[system]
        print(f"| {LABELS[system]} | {b['wall_s']:.1f} | {gen_tokens / b['wall_s']:.1f} | "
              f"{b['cpu_s']:.1f} | {b['prefill_tokens']} | {vs} | {vs_cpu} | {same} | "
              f"{lb[0]} -> {la[0]} |")
    print()
    print("all runs (wall s):", json.dumps({s: [round(x["wall_s"], 2) for x in r["runs"]]
                                            for s, r in results.items()}))
    print("per turn, best run (wall s):", json.dumps(
        {s: [round(x, 2) for x in b["turn_s"]] for s, b in best.items()}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=SYSTEMS, help="run one system (a child process)")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                    help="driver: the systems to run, in this order")
    ap.add_argument("--dir", default="/tmp/bench_multiturn",
                    help="checkpoint + inputs folder (the checkpoint is written once)")
    ap.add_argument("--out", help="child: where to write its result JSON")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--first", type=int, default=256, help="tokens of turn 0's prompt")
    ap.add_argument("--obs", type=int, default=200, help="tokens appended by each later turn")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per turn")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefill-chunks", type=int, nargs="+", default=[16, 64, 128, 256],
                    help="ours: EngineConfig.prefill_chunks (a 200-token turn runs as 128 + 64 + "
                         "16; before 2026-12-03 13:00 the bench used 64 256: one padded 256)")
    ap.add_argument("--decode-attention", default="auto", choices=["auto", "xla", "cpu_kernel"],
                    help="ours: EngineConfig.decode_attention (auto: the C++ kernel on a CPU; "
                         "runs before 2026-12-03 17:00 used the XLA loop)")
    ap.add_argument("--single-thread", action="store_true",
                    help="pin each process to one core (XLA single-threaded, torch 1 thread)")
    args = ap.parse_args(argv)
    return child(args) if args.system else driver(args)


if __name__ == "__main__":
    sys.exit(main())
