"""Sequence (context) sharding vs one device, run as a subprocess with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.model._sequence_check

Prints one JSON line of measurements; `test_sequence_sharding.py` asserts on it. For each mesh with
a `sequence` axis: the logits and the gradient of a chunked log-prob loss (padded and packed rows
included) against the single-device program, the per-device shapes of the hidden states, and
the all-gathers of k/v in the compiled HLO. Also splash attention (Pallas, interpret mode) with
its queries split over `sequence` against XLA attention, forward and gradients.
"""

from __future__ import annotations

import json
import re
import sys
import time

# D=32 divides fsdp x sequence = 8; N=4 / K=2 / F=48 / V=96 divide tensor = 2; T=16 and the
# log-prob chunk 8 divide sequence = 4; B=4 divides data x fsdp on every mesh below.
TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=12, attention_out_bias=True, dtype="float32",
            param_dtype="float32")
MESHES = {
    "data2_seq2_tp2": {"data": 2, "fsdp": 1, "sequence": 2, "tensor": 2},
    "fsdp2_seq4": {"data": 1, "fsdp": 2, "sequence": 4, "tensor": 1},
}
B, T = 4, 16


def _batch():
    """tokens, positions, segment ids, targets, loss mask [B, T]: a plain row, a left-padded
    row, a row packing two sequences (the second starting inside a later sequence shard) and a
    right-padded row."""
    import numpy as np

    rng = np.random.RandomState(0)
    tokens = rng.randint(0, TINY["vocab_size"], (B, T)).astype(np.int32)
    positions = np.tile(np.arange(T, dtype=np.int32), (B, 1))
    segments = np.ones((B, T), np.int32)
    segments[1, :5] = 0
    positions[1] = np.maximum(np.arange(T) - 5, 0)
    segments[2, 7:] = 2
    positions[2, 7:] = np.arange(T - 7)
    segments[3, 11:] = 0
    targets = np.roll(tokens, -1, axis=1)
    mask = ((segments > 0) & (np.roll(segments, -1, axis=1) == segments)).astype(np.float32)
    mask[:, -1] = 0
    return tokens, positions, segments, targets, mask


def _kv_all_gathers(hlo: str, shape: str) -> int:
    """Number of all-gather instructions producing an f32 array of `shape` ("2,16,1,12")."""
    return len(re.findall(rf"= f32\[{shape}\][^ ]* all-gather\(", hlo))


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ppp_jax.model import sharding as shd
    from ppp_jax.model import splash
    from ppp_jax.model.attention import segment_causal_mask, xla_attention
    from ppp_jax.model.config import tiny
    from ppp_jax.model.logprobs import token_logprobs
    from ppp_jax.model.transformer import SeedOssForCausalLM

    t0 = time.perf_counter()

    def lap(what):
        print(f"{what}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    cfg = tiny(**TINY)
    graphdef, params = nnx.split(SeedOssForCausalLM(cfg, rngs=nnx.Rngs(7)))
    tokens, positions, segments, targets, mask = _batch()

    def logits_fn(params, tokens, positions, segments):
        return nnx.merge(graphdef, params)(tokens, positions, segments)

    def hidden_fn(params, tokens, positions, segments):
        return nnx.merge(graphdef, params).hidden(tokens, positions, segments)[0]

    def loss_fn(params, tokens, positions, segments, targets, mask):
        model = nnx.merge(graphdef, params)
        hidden, _ = model.hidden(tokens, positions, segments)
        logp, _ = token_logprobs(model, hidden, targets, chunk_size=8)
        return jnp.sum(logp * mask)

    grad_fn = jax.grad(loss_fn)
    args = (tokens, positions, segments)
    ref_logits = np.asarray(jax.jit(logits_fn)(params, *args))
    ref_grads = jax.tree.leaves(jax.jit(grad_fn)(params, *args, targets, mask))
    lap("reference")
    valid = segments > 0
    # derived float32 bounds for two evaluations (tests/numerics.py): logits, and gradients of
    # the summed log-probs over B·T positions relative to their largest component
    from tests import numerics as nm

    path = nm.transformer_path_length(cfg, T)
    out = {"devices": len(jax.devices()), "meshes": {},
           "logits_atol": nm.f32_forward_atol(path, float(np.abs(ref_logits[valid]).max())),
           "grad_rel": nm.f32_grad_atol(path, cfg.vocab_size, B * T, 1.0)}
    for name, sizes in MESHES.items():
        mesh = shd.make_mesh(sizes)
        sharded = shd.shard_state(params, mesh)
        r = {}
        with shd.using_mesh(mesh):
            lowered = jax.jit(logits_fn).lower(sharded, *args)
            compiled = lowered.compile()
            logits = compiled(sharded, *args)
            hidden = jax.jit(hidden_fn)(sharded, *args)
            grads = jax.tree.leaves(jax.jit(grad_fn)(sharded, *args, targets, mask))
        r["max_abs_logits"] = float(np.abs(np.asarray(logits) - ref_logits)[valid].max())
        r["max_abs_grad"] = max(float(np.abs(np.asarray(g) - np.asarray(h)).max())
                                for g, h in zip(grads, ref_grads))
        r["max_grad"] = max(float(np.abs(np.asarray(h)).max()) for h in ref_grads)
        r["logits_spec"] = str(logits.sharding.spec)
        r["hidden_spec"] = str(hidden.sharding.spec)
        r["hidden_shard_shape"] = list(hidden.addressable_shards[0].data.shape)
        # k/v [B, T, K, H] per device: B / (data*fsdp), whole T, K / tensor.
        rows = B // (sizes["data"] * sizes["fsdp"])
        kv_shape = f"{rows},{T},{TINY['num_kv_heads'] // sizes['tensor']},{TINY['head_dim']}"
        r["kv_all_gathers"] = _kv_all_gathers(compiled.as_text(), kv_shape)
        # The same program traced outside `using_mesh`: no activation constraints, no gathers.
        plain = jax.jit(logits_fn).lower(sharded, *args).compile()
        r["kv_all_gathers_unconstrained"] = _kv_all_gathers(plain.as_text(), kv_shape)
        out["meshes"][name] = r
        lap(name)

    # Splash (Pallas, interpret mode on CPU): queries over sequence = 4 with the kernel's mask
    # metadata split alike, against XLA attention. 128-token tiles, so each device holds one.
    rng = np.random.RandomState(1)
    b, t, n, kv, h = 2, 512, 4, 2, 128
    q = rng.randn(b, t, n, h).astype(np.float32)
    k = rng.randn(b, t, kv, h).astype(np.float32)
    v = rng.randn(b, t, kv, h).astype(np.float32)
    seg = np.ones((b, t), np.int32)
    seg[0, 300:] = 2
    seg[1, :37] = 0
    idx = np.arange(t, dtype=np.int32)
    ref = np.asarray(xla_attention(q, k, v, segment_causal_mask(seg, seg, idx, idx)))
    w = rng.randn(b, t, n, h).astype(np.float32) * (seg > 0)[:, :, None, None]

    def splash_loss(q, k, v):  # a weighted sum over the real (non-padding) queries
        return jnp.sum(splash.splash_attention(q, k, v, seg, seg, block=128, interpret=True) * w)

    def xla_loss(q, k, v):
        return jnp.sum(xla_attention(q, k, v, segment_causal_mask(seg, seg, idx, idx)) * w)

    ref_grads = jax.grad(xla_loss, argnums=(0, 1, 2))(q, k, v)
    attend = jax.jit(lambda *a: splash.splash_attention(*a, block=128, interpret=True))
    mesh = shd.make_mesh({"data": 1, "fsdp": 1, "sequence": 4, "tensor": 2})
    with shd.using_mesh(mesh):
        o = np.asarray(attend(q, k, v, seg, seg))
        # dk/dv: each device's query block contributes; the shard_map transpose must sum them.
        grads = jax.jit(jax.grad(splash_loss, argnums=(0, 1, 2)))(q, k, v)
    out["splash_seq4_max_abs"] = float(np.abs(o - ref)[seg > 0].max())
    # splash vs XLA attention: two float32 evaluations at these scores and values; the backward
    # runs the chain back (dP over H, the softmax's row sums, dQ and dK over the keys)
    kk = np.repeat(np.abs(k.astype(np.float64)), n // kv, axis=2)
    score_abs = float(max(np.einsum("tnh,snh->nts", np.abs(q[i].astype(np.float64)), kk[i]).max()
                          for i in range(b))) * h ** -0.5
    out["splash_atol"] = nm.f32_attention_atol(h, t, score_abs, float(np.abs(v).max()),
                                               evaluations=2)
    out["splash_grad_rel"] = nm.f32_forward_atol(2 * h + 3 * t + 12 + nm.TRANSCENDENTAL, 1.0)
    out["splash_seq4_grad_max_abs"] = max(float(np.abs(np.asarray(g) - np.asarray(r)).max())
                                          for g, r in zip(grads, ref_grads))
    out["splash_grad_max"] = max(float(np.abs(np.asarray(r)).max()) for r in ref_grads)
    lap("splash")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
