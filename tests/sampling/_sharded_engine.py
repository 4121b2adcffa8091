"""Sharded-engine check, run as a subprocess with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sampling._sharded_engine DIR

Writes a tiny checkpoint into DIR, runs the same greedy requests on a 1-device engine and on an
engine whose weights (tensor-parallel sampling rules) and KV pool (kv heads over "tensor") are
sharded on a data=2 x tensor=4 mesh, and prints one JSON line that `test_sharded_engine.py`
checks. jax is imported only in `main`, so importing this module never fixes the device count.
"""

from __future__ import annotations

import json
import sys

# K=4 kv heads over tensor=4; N=8, F=48, V=96 divide too.
SHARDABLE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=8,
                 num_kv_heads=4, head_dim=8)
PROMPTS = [[5], [3, 14, 15, 92, 65, 35], list(range(10, 47)), [7, 7, 8, 9, 11, 2, 13, 40]]


def main(work: str) -> None:
    import jax

    from ppp_jax.model import api
    from ppp_jax.model import testing as mt
    from ppp_jax.model.sharding import SAMPLING_RULES
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.params import Request, SamplingParams
    from ppp_jax.sampling.config import EngineConfig

    ckpt = mt.write_tiny_hf_checkpoint(work, seed=3, **SHARDABLE)
    cfg = EngineConfig(num_slots=4, page_size=4, num_pages=96, max_seq_len=96, decode_steps=8,
                       prefill_chunks=(8, 32), prefill_rows=(1, 4), block_pages=4)

    def run(engine):
        reqs = [Request(p, SamplingParams(temperature=0.0, max_new_tokens=24)) for p in PROMPTS]
        reqs.append(Request([4, 5, 6], SamplingParams(temperature=1.0, max_new_tokens=24, seed=9)))
        with engine:
            res = engine.generate_batch(reqs)
        return [r.token_ids for r in res], [r.logprobs for r in res]

    single_tokens, single_logp = run(Engine(api.load_pretrained(ckpt), cfg))
    mesh = api.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    model = api.load_pretrained(ckpt, mesh=mesh, rules=SAMPLING_RULES)
    engine = Engine(model, cfg, mesh=mesh)
    pool_spec = str(engine.kv_pool_layout().sharding.spec)
    q_spec = str(model.layers.attn.q_proj.kernel.value.sharding.spec)
    sharded_tokens, sharded_logp = run(engine)
    diff = max(abs(a - b) for x, y in zip(single_logp, sharded_logp) for a, b in zip(x, y))
    # the derived float32 bound for two evaluations of these log-probs (tests/numerics.py)
    import numpy as np

    from tests import numerics as nm

    ref_model = api.load_pretrained(ckpt)
    seqs = [p + t for p, t in zip(PROMPTS + [[4, 5, 6]], single_tokens)]
    zs = max(float(np.abs(mt.jit_logits(ref_model, np.array([s]), np.arange(len(s))[None])).max())
             for s in seqs)
    c = ref_model.config
    atol = nm.f32_logprob_atol(nm.transformer_path_length(c, max(map(len, seqs))), c.vocab_size,
                               zs, 2 * zs + np.log(c.vocab_size))
    print(json.dumps({"devices": jax.device_count(), "single": single_tokens,
                      "sharded": sharded_tokens, "max_logprob_diff": diff, "logprob_atol": atol,
                      "pool_spec": pool_spec, "q_spec": q_spec}))


if __name__ == "__main__":
    main(*sys.argv[1:])
