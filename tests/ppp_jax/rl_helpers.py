"""Shared helpers of the RL tests: a tiny policy, synthetic multi-turn token views, and a
subprocess runner for 8-fake-device checks.

jax is imported lazily inside functions that need it only where the 8-device subprocess must set
XLA_FLAGS first; importing this module in the pytest process is fine.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

# Tiny config whose sizes divide meshes up to 8 devices (D=32 over fsdp, N=4/K=2/F=48/V=96 over tensor=2).
TINY_SHARDABLE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=12)


def tiny_model(seed: int = 0, **overrides):
    from flax import nnx

    from ppp_jax.model.config import tiny
    from ppp_jax.model.transformer import SeedOssForCausalLM

    return SeedOssForCausalLM(tiny(**{**TINY_SHARDABLE, **overrides}), rngs=nnx.Rngs(seed))


def random_views(n: int, seed: int = 0, vocab: int = 96, max_len: int = 30):
    """n multi-turn episodes: prompt (mask 0), agent turn (mask 1), tool output (mask 0), agent turn."""
    from ppp_jax.envs.records import TokenView

    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n):
        parts = [(rng.integers(2, 6), 0), (rng.integers(1, 8), 1), (rng.integers(0, 5), 0), (rng.integers(1, 8), 1)]
        ids, mask, turn_starts = [], [], []
        for length, m in parts:
            if m:
                turn_starts.append(len(ids))
            ids += rng.integers(3, vocab, size=length).tolist()
            mask += [m] * length
        ids, mask = ids[:max_len], mask[:max_len]
        lp = [float(-rng.uniform(0.5, 4.0)) if m else 0.0 for m in mask]
        views.append(TokenView(tuple(ids), tuple(mask), tuple(lp), tuple(turn_starts)))
    return views


def run_multidevice(module: str, *args: str, devices: int = 8, timeout: int = 300) -> dict:
    """Runs `python -m module args` with `devices` fake CPU devices; returns its last stdout line
    parsed as JSON."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=8)
def tiny_split(seed: int = 0, **overrides):
    """(graphdef, params) of a tiny policy, params initialized under jit (much faster than eager).

    Cached: callers must not donate these params (copy them first, or use donate=False)."""
    import jax
    from flax import nnx

    from ppp_jax.model.config import tiny
    from ppp_jax.model.transformer import SeedOssForCausalLM

    cfg = tiny(**{**TINY_SHARDABLE, **overrides})
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: SeedOssForCausalLM(cfg, rngs=nnx.Rngs(seed))))
    params = jax.jit(lambda: nnx.state(SeedOssForCausalLM(cfg, rngs=nnx.Rngs(seed)), nnx.Param))()
    return graphdef, params


def make_sampler(graphdef, prompt_len: int, response_len: int, temperature: float = 1.0):
    """A minimal jitted sampler for the learning test (not an engine): each of the `response_len`
    steps runs the full forward pass over the fixed-length buffer (causal, so later, not yet
    written positions do not affect earlier ones) and samples from softmax(logits / τ).

    sample(params, prompts int32 [N, P], key) -> (tokens int32 [N, P+L], logp float32 [N, L]).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    total = prompt_len + response_len

    @jax.jit
    def sample(params, prompts, key):
        n = prompts.shape[0]
        model = nnx.merge(graphdef, params)
        tokens = jnp.concatenate([prompts, jnp.zeros((n, response_len), jnp.int32)], axis=1)
        positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (n, total))
        segments = jnp.ones((n, total), jnp.int32)

        def body(i, carry):
            tokens, logps, key = carry
            key, sub = jax.random.split(key)
            logits = model(tokens, positions, segments)  # [N, P+L, V]
            z = jax.lax.dynamic_index_in_dim(logits, prompt_len - 1 + i, axis=1, keepdims=False)
            z = z.astype(jnp.float32) / temperature
            tok = jax.random.categorical(sub, z).astype(jnp.int32)
            lp = jnp.take_along_axis(jax.nn.log_softmax(z), tok[:, None], axis=1)[:, 0]
            tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, prompt_len + i, axis=1)
            logps = jax.lax.dynamic_update_index_in_dim(logps, lp, i, axis=1)
            return tokens, logps, key

        logps = jnp.zeros((n, response_len), jnp.float32)
        tokens, logps, _ = jax.lax.fori_loop(0, response_len, body, (tokens, logps, key))
        return tokens, logps

    return sample


def policy_bounds(graphdef, params, batch, temperature: float = 1.0):
    """Sizes for the derived float32 bounds (tests/numerics.py) of the tiny policy on `batch`:
    a namespace with cfg, path (forward chain length), vocab, positions (tokens in the batch),
    logit_scale (max |logits / T|, measured), num_params, and logp_atol (two float32 evaluations
    of a token log-prob)."""
    import types

    import jax
    import numpy as np
    from flax import nnx

    from ppp_jax.model import testing as mt
    from tests import numerics as nm

    model = nnx.merge(graphdef, params)
    cfg = model.config
    tokens = np.asarray(batch.tokens)
    logits = mt.jit_logits(model, tokens, np.asarray(batch.positions), np.asarray(batch.segment_ids))
    zs = float(np.abs(logits[np.asarray(batch.segment_ids) > 0]).max()) / temperature
    path = nm.transformer_path_length(cfg, tokens.shape[1])
    return types.SimpleNamespace(
        cfg=cfg, path=path, vocab=cfg.vocab_size, positions=int(tokens.size), logit_scale=zs,
        logp_scale=2 * zs + float(np.log(cfg.vocab_size)),
        num_params=sum(int(np.size(x)) for x in jax.tree.leaves(params)),
        logp_atol=nm.f32_logprob_atol(path, cfg.vocab_size, zs, 2 * zs + np.log(cfg.vocab_size)))
