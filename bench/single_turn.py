"""Single-turn generation: our engine vs transformers `generate` vs tunix's sampler, same weights.

    uptime; .venv/bin/python bench/single_turn.py --single-thread --dir /tmp/bench_st; uptime
    .venv/bin/python bench/single_turn.py --batches 1 --new 8 --prompt 16 --repeats 1  # smoke

Model: the 124.7M-parameter Seed-OSS-shaped config of issue 21's first measurement (V=32000,
D=768, F=2048, L=12, N=12, K=4, H=64), random weights written once by transformers
(`save_pretrained`) into `--dir` and loaded from that checkpoint by every system, float32.
Every batch row is a `--prompt`-token prompt of random ids (fixed in `inputs.json`), every row
generates exactly `--new` tokens (greedy, no stop id on any side).

Systems, each in its own process (`--system NAME`; without it this script is the driver that
writes the checkpoint and the inputs, runs one process per system in turn and prints the table):
  - ours:   `Engine` (num_slots = batch, 16 decode steps per block, prefill chunk 128, rows
            1/8), the batch submitted at once (`submit_many`);
  - hf:     transformers `SeedOssForCausalLM.generate` (torch, SDPA), the batch at once;
  - tunix:  `tunix.generate.sampler.Sampler` (the "vanilla" sampler: a dense KV cache of
            `cache_size` positions per row, one jitted prefill, one jitted decode loop) on
            tunix's Qwen2 model (the same layer graph as Seed-OSS: q/k/v biases, no o bias,
            RMSNorm, RoPE, SwiGLU; loaded from the same safetensors by tunix's own loader).
            Prompts are passed as strings of ids to a minimal id tokenizer; EOS is an id no
            model produces (-1), so every row runs `--new` steps. Install: `.venv/bin/pip install
            --no-deps google-tunix` plus its sampler's imports (`jaxtyping`, `sentencepiece`);
            `import tunix` itself needs its trainers' dependencies, so the bench enters the
            package without running its `__init__`.

Timing per batch: the whole call (submission to the last token), best of `--repeats` after a
warm-up call of the same shapes (compiles excluded on the JAX sides); the process's CPU time
beside it. Decode only: the time from the first generated token to the last (ours: the first
token's callback, the first decode step being `prefill + 1 step`; transformers: a streamer's
first token; tunix: the jitted decode loop's own time, its prefill sampling the first token),
over batch x (new - 1) tokens.

Roofline (same process): the library's float32 matmul peak (best of 5 of a jitted
2048^3 `jnp.dot` / `torch.mm`) and a numpy memcpy bandwidth; a decode token costs
2 x (matmul weights incl. lm_head) + 4 x L x N x H x context FLOPs (context = prompt + new/2),
a decode step reads the weights once plus every row's K/V. `--single-thread` pins every process
to one core (XLA single-threaded, torch 1 thread). Run it by hand; it is not a test.
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

CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12,
              num_heads=12, num_kv_heads=4, head_dim=64, max_position_embeddings=4096)
SYSTEMS = ("ours", "hf", "tunix")
LABELS = {"ours": "ours (`Engine`)", "hf": "transformers `generate`",
          "tunix": "tunix `Sampler` (vanilla)"}


def _best(f, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def memcpy_bandwidth(nbytes: int = 1 << 28) -> float:
    """Bytes/s of a numpy copy (read + write counted), best of 5."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    return 2 * a.nbytes / _best(lambda: np.copyto(b, a), 5)


def _timed(run, repeats: int) -> dict:
    """run() -> (tokens, decode_s); best of `repeats` by wall time."""
    best = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        tokens, decode_s = run()
        r = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
             "decode_s": decode_s, "tokens": tokens}
        if best is None or r["wall_s"] < best["wall_s"]:
            best = r
    return best


# ---- the systems (each in its own process) -----------------------------------------------------


def run_ours(ckpt: Path, inp: dict, batches, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from ppp_jax.model import api
    from ppp_jax.sampling import Engine, EngineConfig, Request, SamplingParams

    a = jnp.ones((2048, 2048), jnp.float32)
    dot = jax.jit(lambda a: a @ a)
    dot(a).block_until_ready()
    peak = 2 * 2048**3 / _best(lambda: dot(a).block_until_ready(), 5)
    new = inp["new"]
    model = api.load_pretrained(ckpt)
    params = SamplingParams(temperature=0.0, max_new_tokens=new)
    out = {}
    for b in batches:
        prompts = inp["prompts"][:b]
        page = 16
        max_len = -(-(len(prompts[0]) + new + 16) // page) * page
        cfg = EngineConfig(num_slots=b, page_size=page, max_seq_len=max_len,
                           num_pages=1 + b * (max_len // page), decode_steps=16,
                           prefill_chunks=(128,), prefill_rows=(1, 8), block_pages=8)
        with Engine(model, cfg) as eng:
            eng.warmup()

            def run():
                first = [None] * b

                def cb(i):
                    def on_tokens(ids, *_):
                        if first[i] is None:
                            first[i] = time.perf_counter()
                    return on_tokens

                futs = eng.submit_many([Request(p, params) for p in prompts],
                                       [cb(i) for i in range(b)])
                res = [f.result() for f in futs]
                end = time.perf_counter()
                assert all(len(r.token_ids) == new for r in res)
                return [r.token_ids for r in res], end - max(first)

            run()  # warm-up call (host paths, caches)
            out[b] = _timed(run, repeats)
        print(json.dumps({"system": "ours", "batch": b, **{k: v for k, v in out[b].items()
                                                          if k != "tokens"}}), flush=True)
    return {"results": out, "peak_flops": peak}


def run_hf(ckpt: Path, inp: dict, batches, repeats: int) -> dict:
    import torch
    from transformers import SeedOssForCausalLM
    from transformers.generation.streamers import BaseStreamer

    a = torch.ones(2048, 2048)
    peak = 2 * 2048**3 / _best(lambda: torch.mm(a, a), 5)
    new = inp["new"]
    hf = SeedOssForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    kw = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=1,
              top_p=None, top_k=None, temperature=None)

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):  # first call: the prompt; second: the first new token
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    out = {}
    with torch.inference_mode():
        for b in batches:
            ids = torch.tensor(inp["prompts"][:b])
            mask = torch.ones_like(ids)

            def run():
                s = FirstToken()
                res = hf.generate(ids, attention_mask=mask, streamer=s, **kw)
                end = time.perf_counter()
                gen = res[:, ids.shape[1]:]
                assert gen.shape[1] == new
                return gen.tolist(), end - s.first

            run()
            out[b] = _timed(run, repeats)
            print(json.dumps({"system": "hf", "batch": b, **{k: v for k, v in out[b].items()
                                                            if k != "tokens"}}), flush=True)
    return {"results": out, "peak_flops": peak, "torch_threads": torch.get_num_threads()}


def run_tunix(ckpt: Path, inp: dict, batches, repeats: int) -> dict:
    import types

    import jax
    import jax.numpy as jnp

    # `import tunix` pulls in its trainers (and their dependencies); the sampler and the models
    # need none of that, so the package is entered without running its __init__.
    import importlib.util
    spec = importlib.util.find_spec("tunix")
    pkg = types.ModuleType("tunix")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["tunix"] = pkg
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen2 import model as qwen2
    from tunix.models.qwen2 import params as qwen2_params

    a = jnp.ones((2048, 2048), jnp.float32)
    dot = jax.jit(lambda a: a @ a)
    dot(a).block_until_ready()
    peak = 2 * 2048**3 / _best(lambda: dot(a).block_until_ready(), 5)

    cfg_json = json.loads((ckpt / "config.json").read_text())
    rope = cfg_json.get("rope_parameters", {}).get("rope_theta", cfg_json.get("rope_theta"))
    mcfg = qwen2.ModelConfig(num_layers=CONFIG["num_layers"], vocab_size=CONFIG["vocab_size"],
                             embed_dim=CONFIG["hidden_size"],
                             hidden_dim=CONFIG["intermediate_size"],
                             num_heads=CONFIG["num_heads"], head_dim=CONFIG["head_dim"],
                             num_kv_heads=CONFIG["num_kv_heads"], rope_theta=int(rope),
                             norm_eps=cfg_json["rms_norm_eps"], use_tied_embedding=False)
    model = qwen2_params.create_model_from_safe_tensors(str(ckpt), mcfg, dtype=jnp.float32)

    class IdTokenizer:
        """Prompts are strings of ids; no BOS added; pad 1 (no prompt id is 1); EOS never."""

        def encode(self, text, **_):
            return [int(t) for t in text.split()]

        def decode(self, ids, **_):
            return " ".join(map(str, ids))

        def bos_id(self):
            return 0  # falsy: the sampler adds no BOS

        def eos_id(self):
            return -1

        def pad_id(self):
            return 1

    new = inp["new"]
    plen = len(inp["prompts"][0])
    cache = -(-(plen + new) // 128) * 128
    sampler = sampler_lib.Sampler(model, IdTokenizer(), sampler_lib.CacheConfig(
        cache_size=cache, num_layers=CONFIG["num_layers"], num_kv_heads=CONFIG["num_kv_heads"],
        head_dim=CONFIG["head_dim"]))
    decode_fn = sampler._compiled_decode_fn
    spent = []

    def timed_decode(*args, **kwargs):
        t = time.perf_counter()
        state = decode_fn(*args, **kwargs)
        jax.block_until_ready(state.token_buffer)
        spent.append(time.perf_counter() - t)
        return state

    sampler._compiled_decode_fn = timed_decode
    out = {}
    for b in batches:
        texts = [" ".join(map(str, p)) for p in inp["prompts"][:b]]

        def run():
            spent.clear()
            res = sampler(texts, max_generation_steps=new, max_prompt_length=plen,
                          eos_tokens=[-1], temperature=0.0)
            toks = [list(map(int, t)) for t in res.tokens]
            assert all(len(t) == new for t in toks), [len(t) for t in toks]
            return toks, spent[-1]

        run()
        out[b] = _timed(run, repeats)
        print(json.dumps({"system": "tunix", "batch": b, **{k: v for k, v in out[b].items()
                                                           if k != "tokens"}}), flush=True)
    from importlib.metadata import version
    return {"results": out, "peak_flops": peak, "version": version("google-tunix")}


def child(args) -> int:
    if args.single_thread:
        pin_one_core()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    ckpt = Path(args.dir)
    inp = json.loads((ckpt / "inputs.json").read_text())
    if args.system == "hf":
        import torch
        if args.single_thread:
            torch.set_num_threads(1)
    run = {"ours": run_ours, "hf": run_hf, "tunix": run_tunix}[args.system]
    res = run(ckpt, inp, args.batches, args.repeats)
    res.update(system=args.system, bandwidth=memcpy_bandwidth(),
               cpus=sorted(os.sched_getaffinity(0)))
    Path(args.out).write_text(json.dumps(res))
    return 0


# ---- the driver ---------------------------------------------------------------------------------


def driver(args) -> int:
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_checkpoint(workdir, CONFIG)
    rng = np.random.default_rng(args.seed)
    inp = {"new": args.new, "prompts": rng.integers(
        3, CONFIG["vocab_size"], size=(max(args.batches), args.prompt)).tolist()}
    (workdir / "inputs.json").write_text(json.dumps(inp))

    results, loads = {}, {}
    for system in args.systems:
        out = workdir / f"result_{system}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--system", system, "--dir", str(workdir), "--out",
               str(out), "--repeats", str(args.repeats), "--batches",
               *map(str, args.batches)] + (["--single-thread"] if args.single_thread else [])
        before = load_averages()[0]
        print(f"# {system}: load {before}", flush=True)
        subprocess.run(cmd, check=True)
        loads[system] = (before, load_averages()[0])
        results[system] = json.loads(out.read_text())

    c = CONFIG
    d, f, L, n, k, h, v = (c["hidden_size"], c["intermediate_size"], c["num_layers"],
                           c["num_heads"], c["num_kv_heads"], c["head_dim"], c["vocab_size"])
    wmat = L * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f) + d * v  # matmul weights
    weights_bytes = 4 * (wmat + L * (n * h + 2 * k * h + 2 * d) + d)  # + biases, norms
    ctx = args.prompt + args.new / 2
    tok_flops = 2 * wmat + 4 * L * n * h * ctx
    print()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; "
          f"{'each process pinned to one core' if args.single_thread else 'all cores'}")
    print(f"model {c}, float32, {wmat / 1e6:.1f}M matmul weights; batch rows of {args.prompt} "
          f"prompt tokens, {args.new} new tokens each (greedy, no stop); best of {args.repeats}")
    print("peak float32 matmul GFLOP/s: " + ", ".join(
        f"{s} {r['peak_flops'] / 1e9:.1f}" for s, r in results.items())
          + "; memcpy GB/s: " + ", ".join(f"{s} {r['bandwidth'] / 1e9:.1f}"
                                          for s, r in results.items()))
    print()
    print("| batch | system | whole call (s) | tok/s | CPU (s) | decode only (s) | decode tok/s "
          "| decode % of peak FLOP/s | decode % of memcpy bandwidth | outputs equal to ours "
          "| load before -> after |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    ratios = {}
    for b in args.batches:
        for system, r in results.items():
            x = r["results"][str(b)]
            dec_tok = b * (args.new - 1) / x["decode_s"]
            step_s = x["decode_s"] / (args.new - 1)
            kv_bytes = 4 * 2 * L * k * h * ctx * b
            same = "-"
            if system != "ours" and "ours" in results:
                ours = results["ours"]["results"][str(b)]["tokens"]
                same = f"{sum(a == t for a, t in zip(ours, x['tokens']))}/{b}"
            lb, la = loads[system]
            print(f"| {b} | {LABELS[system]} | {x['wall_s']:.2f} | "
                  f"{b * args.new / x['wall_s']:.1f} | {x['cpu_s']:.2f} | {x['decode_s']:.2f} | "
                  f"{dec_tok:.1f} | {dec_tok * tok_flops / r['peak_flops']:.0%} | "
                  f"{(weights_bytes + kv_bytes) / step_s / r['bandwidth']:.0%} | {same} | "
                  f"{lb} -> {la} |")
            ratios.setdefault(b, {})[system] = (x["wall_s"], x["decode_s"], x["cpu_s"])
    if "ours" in results:
        print()
        for b, rs in ratios.items():
            o = rs["ours"]
            print(f"batch {b}: " + "; ".join(
                f"ours vs {s}: whole call {w / o[0]:.2f}x (CPU {cc / o[2]:.2f}x), decode only "
                f"{dd / o[1]:.2f}x" for s, (w, dd, cc) in rs.items() if s != "ours"))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=SYSTEMS, help="run one system (a child process)")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    ap.add_argument("--dir", default="/tmp/bench_single_turn",
                    help="checkpoint + inputs folder (the checkpoint is written once)")
    ap.add_argument("--out", help="child: where to write its result JSON")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per row")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single-thread", action="store_true",
                    help="pin each process to one core (XLA single-threaded, torch 1 thread)")
    args = ap.parse_args(argv)
    return child(args) if args.system else driver(args)


if __name__ == "__main__":
    sys.exit(main())
