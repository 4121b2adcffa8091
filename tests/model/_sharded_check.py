"""Sharded-vs-unsharded check, run as a subprocess with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.model._sharded_check HF_DIR WORK_DIR

    ... HF_DIR WORK_DIR init     # the sharded random-init check (slow to compile)

Prints one JSON line of measurements; `test_sharding.py` asserts on it. jax is imported only in
`main`, so the pytest process can import `TINY_SHARDABLE` without touching its device count.
"""

from __future__ import annotations

import json
import math
import sys
import time

# Tiny config whose sizes divide every mesh below: D=32 over fsdp<=8, N=4 / K=2 / F=48 / V=96 over
# tensor=2; H=12 != D/N; o_proj bias on. Batch 8 divides data*fsdp on every mesh.
TINY_SHARDABLE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=12, attention_out_bias=True)
MESHES = {"8x1x1": (8, 1, 1), "1x8x1": (1, 8, 1), "1x4x2": (1, 4, 2), "2x2x2": (2, 2, 2)}


def _batch(rng, vocab: int):
    """tokens, positions, segment_ids [8, 9]: plain rows, a left-padded row, a right-padded row
    and a row packing two sequences."""
    import numpy as np

    b, t = 8, 9
    tokens = rng.randint(0, vocab, (b, t)).astype(np.int32)
    positions = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    segments = np.ones((b, t), np.int32)
    segments[1, :3] = 0  # left padding
    positions[1] = np.maximum(np.arange(t) - 3, 0)
    segments[2, 6:] = 0  # right padding
    segments[3, 4:] = 2  # packed: second sequence restarts at position 0
    positions[3, 4:] = np.arange(t - 4)
    return tokens, positions, segments


def main(hf_dir: str, work: str, part: str = "parity") -> None:
    """part: "parity" (meshes + orbax) or "init" (sharded random init, slow to compile)."""
    import jax
    import numpy as np
    from flax import nnx

    from ppp_jax.model import api
    from ppp_jax.model.checkpoint import load_checkpoint, save_checkpoint
    from ppp_jax.model.hf_io import model_init_fn
    from ppp_jax.model.sharding import create_sharded, path_name, shard_model

    def params(model):
        return {path_name(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    t0 = time.perf_counter()

    def lap(what):
        print(f"{what}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    devices = jax.devices()
    if part == "init":
        # Sharded random init equals single-device init (same RNG, different shardings).
        from ppp_jax.model.config import tiny

        cfg = tiny(**TINY_SHARDABLE)
        one = create_sharded(model_init_fn(cfg, seed=5), api.make_mesh((1, 1, 1), devices=devices[:1]))
        many = create_sharded(model_init_fn(cfg, seed=5), api.make_mesh((2, 2, 2)))
        a, b = params(one), params(many)
        out = {"devices": len(devices),
               "create_sharded_max_abs": max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a),
               "create_sharded_spec": str(b["layers.attn.q_proj.kernel"].sharding.spec)}
        lap("create_sharded")
        print(json.dumps(out))
        return
    tokens, positions, segments = _batch(np.random.RandomState(0), TINY_SHARDABLE["vocab_size"])
    valid = segments > 0
    ref = api.load_pretrained(hf_dir, mesh=api.make_mesh((1, 1, 1), devices=devices[:1]))
    ref_logits = np.asarray(api.logits(ref, tokens, positions, segments))
    ref_lp = np.asarray(api.next_token_logprobs(ref, tokens, positions, segments))
    lap("reference")
    # derived float32 bounds for two evaluations (tests/numerics.py); the sharded programs
    # split contractions over devices and sum the parts
    from ppp_jax.model.config import tiny
    from tests import numerics as nm

    cfg, zs = tiny(**TINY_SHARDABLE), float(np.abs(ref_logits[valid]).max())
    path = nm.transformer_path_length(cfg, tokens.shape[1])
    out = {"devices": len(devices), "meshes": {},
           "logits_atol": nm.f32_forward_atol(path, zs),
           "logprobs_atol": nm.f32_logprob_atol(path, cfg.vocab_size, zs,
                                                2 * zs + np.log(cfg.vocab_size))}
    models = {}
    for name, shape in MESHES.items():
        mesh = api.make_mesh(shape)
        models[name] = model = api.load_pretrained(hf_dir, mesh=mesh)
        logits = np.asarray(api.logits(model, tokens, positions, segments))
        q = params(model)["layers.attn.q_proj.kernel"]
        out["meshes"][name] = {
            "max_abs_logits": float(np.abs(logits - ref_logits)[valid].max()),
            "q_kernel_spec": str(q.sharding.spec),
            "q_kernel_shard_fraction": math.prod(q.addressable_shards[0].data.shape) / q.size,
        }
        if name == "2x2x2":  # one more compile per mesh; the chunked log-probs once suffice
            lp = np.asarray(api.next_token_logprobs(model, tokens, positions, segments))
            out["meshes"][name]["max_abs_logprobs"] = float(np.abs(lp - ref_lp)[valid[:, 1:]].max())
        lap(name)

    # orbax: save sharded on 1x8x1, restore onto 2x2x2.
    src = models["1x8x1"]
    save_checkpoint(src, src.config, f"{work}/orbax")
    restored, _ = load_checkpoint(f"{work}/orbax", mesh=api.make_mesh((2, 2, 2)))
    a, b = params(src), params(restored)
    out["orbax_restore_max_abs"] = max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)
    out["orbax_restored_spec"] = str(b["layers.attn.q_proj.kernel"].sharding.spec)
    lap("orbax")

    # Resharding a live model in place (1x8x1 -> 1x4x2) keeps its logits.
    shard_model(src, api.make_mesh((1, 4, 2)))
    q = params(src)["layers.attn.q_proj.kernel"]
    out["reshard_spec"] = str(q.sharding.spec)
    out["reshard_max_abs_logits"] = float(
        np.abs(np.asarray(api.logits(src, tokens, positions, segments)) - ref_logits)[valid].max())
    lap("reshard")

    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
