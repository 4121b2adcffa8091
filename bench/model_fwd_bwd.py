"""Forward+backward tokens/s of a ~125M-parameter Seed-OSS-shaped model: ours (JAX) vs transformers
(torch), same config, same weights, same batch, fp32, in the same run on this machine.

    .venv/bin/python bench/model_fwd_bwd.py [--batch 2] [--seq 128] [--steps 3]

The weights are written once by transformers (`save_pretrained`) and loaded into both sides, and
the two losses are compared, so both sides run the same computation: next-token cross-entropy over
the full [B, T, V] logits (upcast to float32), mean over B*(T-1) tokens, and its gradient with
respect to every parameter. torch runs with its default attention (SDPA), timed with 1 thread and
with all cores (the faster is the baseline: on a loaded 2-core machine torch's thread pool can be
several times slower with 2 threads than with 1); JAX
runs one jitted value_and_grad (XLA dot-product attention, no remat). After one warm-up step each,
the two sides alternate step by step (so both see the same load on a shared machine) and the
median step time of each is reported, as a Markdown table with the machine and its load average.
Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

BENCH_CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12,
                    num_heads=12, num_kv_heads=4, head_dim=64, rope_theta=1e7,
                    max_position_embeddings=4096)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_checkpoint(directory: Path) -> None:
    import torch
    from transformers import SeedOssConfig, SeedOssForCausalLM

    from ppp_jax.model.config import ModelConfig

    d = ModelConfig(**BENCH_CONFIG).to_hf_dict()
    d.pop("architectures"), d.pop("model_type")
    torch.manual_seed(0)
    SeedOssForCausalLM(SeedOssConfig(**d)).save_pretrained(directory)


def torch_steps(directory: Path, tokens, thread_counts: list[int]):
    """-> {threads: function running one forward+backward in transformers with that many
    torch threads, returning the loss}."""
    import torch
    from transformers import SeedOssForCausalLM

    model = SeedOssForCausalLM.from_pretrained(directory, dtype=torch.float32).train()
    x = torch.tensor(tokens, dtype=torch.long)

    def step(threads: int) -> float:
        torch.set_num_threads(threads)
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        return float(loss.detach())

    return {n: (lambda n=n: step(n)) for n in thread_counts}


def jax_step(directory: Path, tokens):
    """-> a function running one jitted forward+backward of ours, returning the loss."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ppp_jax.model.hf_io import load_hf

    model, _ = load_hf(directory)
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.asarray(tokens, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape)

    def loss_fn(params, x):
        logits = nnx.merge(graphdef, params)(x, positions).astype(jnp.float32)  # [B, T, V]
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, x[:, 1:, None], axis=-1))

    grad_step = jax.jit(jax.value_and_grad(loss_fn))

    def step() -> float:
        loss, grads = grad_step(params, x)
        jax.block_until_ready(grads)
        return float(loss)

    return step


def timed(step) -> tuple[float, float]:
    start = time.perf_counter()
    loss = step()
    return time.perf_counter() - start, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side after one warm-up step")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: time both 1 and all cores; the faster "
                             "is the baseline, since torch's thread pool degrades badly on a loaded "
                             "machine)")
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    import transformers

    from ppp_jax.model.config import ModelConfig

    cfg = ModelConfig(**BENCH_CONFIG)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.seq))
    n_tokens = args.batch * args.seq
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        load_before = os.getloadavg()[0]
        threads = sorted({1, os.cpu_count() or 1}) if args.torch_threads is None else [args.torch_threads]
        run_torch = torch_steps(Path(tmp), tokens, threads)
        run_jax = jax_step(Path(tmp), tokens)
        for run in run_torch.values():
            timed(run)  # warm-up
        compile_s, _ = timed(run_jax)  # warm-up, includes the XLA compile
        # Interleaved, so every variant sees the same load on a shared machine; median per variant.
        times: dict[str, list[float]] = {}
        losses: dict[str, float] = {}
        variants = {f"torch{n}": run for n, run in run_torch.items()} | {"jax": run_jax}
        for _ in range(args.steps):
            for name, run in variants.items():
                t, losses[name] = timed(run)
                times.setdefault(name, []).append(t)
        load_after = os.getloadavg()[0]
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    best_torch = min((k for k in med if k != "jax"), key=med.get)

    print(f"\nSeed-OSS-shaped model, {cfg.param_count() / 1e6:.1f}M parameters (L={cfg.num_layers}, "
          f"D={cfg.hidden_size}, N/K={cfg.num_heads}/{cfg.num_kv_heads}, H={cfg.head_dim}, "
          f"F={cfg.intermediate_size}, V={cfg.vocab_size}), fp32, batch {args.batch} x {args.seq} "
          f"tokens, forward+backward, median of {args.steps} interleaved steps per side after a "
          f"warm-up\n")
    print("| implementation | s/step | tokens/s | vs best transformers | loss |")
    print("|---|---:|---:|---:|---:|")
    for name in variants:
        label = (f"ppp_jax (jax {jax.__version__}, XLA CPU)" if name == "jax" else
                 f"transformers {transformers.__version__} (torch {torch.__version__}, SDPA, "
                 f"{name[5:]} thread{'s' if name[5:] != '1' else ''})")
        print(f"| {label} | {med[name]:.3f} | {n_tokens / med[name]:,.0f} | "
              f"{med[best_torch] / med[name]:.2f}x | {losses[name]:.5f} |")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}; load average {load_before:.1f} before, {load_after:.1f} "
          f"after (shared machine). JAX first call (compile + one step): {compile_s:.1f}s, not counted. "
          f"|loss difference| = {abs(losses['jax'] - losses[best_torch]):.2e}.")


if __name__ == "__main__":
    main()
