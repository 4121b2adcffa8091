"""Forward+backward tokens/s of a ~125M-parameter Seed-OSS-shaped model: ours (JAX) vs transformers
(torch), same config, same weights, same batch, fp32, in the same run on this machine.

    .venv/bin/python bench/model_fwd_bwd.py [--batch 2] [--seq 128] [--steps 3]

The weights are written once by transformers (`save_pretrained`) and loaded into both sides, and
the two losses are compared, so both sides run the same computation: next-token cross-entropy over
the full [B, T, V] logits (upcast to float32), mean over B*(T-1) tokens, and its gradient with
respect to every parameter. torch runs with its default attention (SDPA) and all CPU threads; JAX
runs one jitted value_and_grad (XLA dot-product attention, no remat). Prints a Markdown table.
Not a test: a shared machine makes the numbers noisy, so the table reports the load average too.
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


def bench_torch(directory: Path, tokens, steps: int) -> tuple[float, float]:
    """-> (seconds per step, loss)."""
    import torch
    from transformers import SeedOssForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = SeedOssForCausalLM.from_pretrained(directory, dtype=torch.float32).train()
    x = torch.tensor(tokens, dtype=torch.long)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        return float(loss.detach())

    loss = step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, loss


def bench_jax(directory: Path, tokens, steps: int) -> tuple[float, float, float]:
    """-> (seconds per step, loss, compile seconds)."""
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
    start = time.perf_counter()
    loss, grads = grad_step(params, x)
    jax.block_until_ready(grads)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        _, grads = grad_step(params, x)
        jax.block_until_ready(grads)
    return (time.perf_counter() - start) / steps, float(loss), compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
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
        t_torch, loss_torch = bench_torch(Path(tmp), tokens, args.steps)
        t_jax, loss_jax, compile_s = bench_jax(Path(tmp), tokens, args.steps)
        load_after = os.getloadavg()[0]

    print(f"\nSeed-OSS-shaped model, {cfg.param_count() / 1e6:.1f}M parameters (L={cfg.num_layers}, "
          f"D={cfg.hidden_size}, N/K={cfg.num_heads}/{cfg.num_kv_heads}, H={cfg.head_dim}, "
          f"F={cfg.intermediate_size}, V={cfg.vocab_size}), fp32, batch {args.batch} x {args.seq} "
          f"tokens, forward+backward, mean of {args.steps} steps after a warm-up\n")
    print("| implementation | s/step | tokens/s | vs transformers | loss |")
    print("|---|---:|---:|---:|---:|")
    print(f"| transformers {transformers.__version__} (torch {torch.__version__}, SDPA) | {t_torch:.3f} | "
          f"{n_tokens / t_torch:,.0f} | 1.00x | {loss_torch:.5f} |")
    print(f"| ppp_jax (jax {jax.__version__}, XLA) | {t_jax:.3f} | {n_tokens / t_jax:,.0f} | "
          f"{t_torch / t_jax:.2f}x | {loss_jax:.5f} |")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}; load average {load_before:.1f} before, {load_after:.1f} "
          f"after (shared machine). JAX compile of the step: {compile_s:.1f}s (not counted). "
          f"|loss difference| = {abs(loss_jax - loss_torch):.2e}.")


if __name__ == "__main__":
    main()
