"""Where ours (float32, XLA CPU) and transformers (float32, torch CPU) lose accuracy on
SmolLM2-135M-Instruct, op by op, against float64. Run by hand from the repository root:

    JAX_PLATFORMS=cpu taskset -c 1 .venv/bin/python bench/parity_ops.py [--dot-chunk 128]

(--dot-chunk: ours with `ModelConfig.dot_chunk`; ~1 min on one core.)

Two float64 references:
- "hf64": transformers loaded in float64, as tests/model/test_smollm2.py uses it. It is not all
  float64: LlamaRMSNorm normalizes in float32, the rotary tables are float32 and the softmax runs
  in float32 (those are transformers' cast points; they round to float32 in every dtype).
- "pure64": the same module tree with those three cast points patched to stay in float64.

Sections printed:
1. accumulated: distance of each intermediate (embedding, per layer, final norm, logits) of ours
   and of transformers' float32 from each reference (mean and max |Δ| over all elements; per
   layer: the average over the 30 layers of the per-layer mean, and the max).
2. local: each op fed the pure64 reference input rounded to float32, compared with pure64's
   output of that op: the op's own error, free of what earlier layers passed on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = [{"role": "system", "content": "You are a terse assistant."},
          {"role": "user", "content": "Write one sentence about the sea, please. Then stop."}]


# ---- transformers: float32, float64, and float64 without its float32 cast points ----------------

def patch_pure64():
    """Turns transformers' three float32 cast points (RMSNorm statistics, rotary tables, softmax)
    into the input's dtype. Returns an undo function."""
    import transformers.models.llama.modeling_llama as ml

    saved = (ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward, ml.eager_attention_forward)

    def norm_forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        c = self.config
        dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        base = c.rope_parameters["rope_theta"]
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=x.dtype) / dim))
        freqs = position_ids[..., None].to(x.dtype) * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def attn_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        key = ml.repeat_kv(key, module.num_key_value_groups)
        value = ml.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    ml.LlamaRMSNorm.forward = norm_forward
    ml.LlamaRotaryEmbedding.forward = rope_forward
    ml.eager_attention_forward = attn_forward

    def undo():
        ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward, ml.eager_attention_forward = saved
    return undo


def hf_intermediates(model, ids):
    """Runs `model` on ids [T] and returns {name: float64 array} of the intermediates."""
    out: dict[str, list] = {}

    def grab(name, pre=False):
        def hook(mod, args, result=None):
            t = args[0] if pre else (result[0] if isinstance(result, tuple) else result)
            out.setdefault(name, []).append(t.detach().double().numpy()[0])
        return hook

    hs = []
    m = model.model
    hs.append(m.embed_tokens.register_forward_hook(grab("embed")))
    for layer in m.layers:
        a = layer.self_attn
        for name, mod in (("norm1", layer.input_layernorm), ("q", a.q_proj), ("k", a.k_proj),
                          ("v", a.v_proj), ("attn", a.o_proj),
                          ("norm2", layer.post_attention_layernorm),
                          ("gate", layer.mlp.gate_proj), ("up", layer.mlp.up_proj),
                          ("mlp", layer.mlp.down_proj), ("layer", layer)):
            hs.append(mod.register_forward_hook(grab(name)))
        hs.append(a.o_proj.register_forward_pre_hook(grab("core", pre=True)))
        hs.append(layer.mlp.down_proj.register_forward_pre_hook(grab("hmid", pre=True)))
    hs.append(m.norm.register_forward_hook(grab("final_norm")))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits
    finally:
        for h in hs:
            h.remove()
    res = {k: np.stack(v) if len(v) > 1 else v[0] for k, v in out.items()}
    res["logits"] = logits.double().numpy()[0]
    return res


# ---- ours ------------------------------------------------------------------------------------

def ours_intermediates(model, ids):
    """Our forward, layer by layer under one jit, with the same intermediates (float64 copies).
    Checked against model(tokens) below."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ppp_jax.model.attention import segment_causal_mask, xla_attention
    from ppp_jax.model.layers import F32, apply_rope, dtype_of, rope_inv_freq, rope_tables

    c = model.config
    graphdef, params = nnx.split(model.layers)
    gd_all, state_all = nnx.split(model)

    @jax.jit
    def run(state_all, params, tokens):
        model_ = nnx.merge(gd_all, state_all)
        t = tokens.shape[1]
        positions = jnp.arange(t, dtype=jnp.int32)[None]
        seg = jnp.ones_like(tokens)
        inv = rope_inv_freq(c.head_dim, c.rope_theta)
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta, dtype_of(c.dtype), inv)
        idx = jnp.arange(t, dtype=jnp.int32)
        mask = segment_causal_mask(seg, seg, idx, idx)
        x = model_.embed(tokens)
        rec = {"embed": x}
        per = {k: [] for k in ("norm1", "q", "k", "v", "core", "attn", "norm2", "gate", "up",
                               "hmid", "mlp", "layer")}
        for li in range(c.num_layers):
            layer = nnx.merge(graphdef, jax.tree.map(lambda a: a[li], params))
            at = layer.attn
            n1 = layer.input_norm(x)
            q, k, v = at.q_proj(n1), at.k_proj(n1), at.v_proj(n1)
            o = xla_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask)
            a = at.o_proj(o)
            x = x + a
            n2 = layer.post_attn_norm(x)
            g, u = layer.mlp.gate_proj(n2), layer.mlp.up_proj(n2)
            hmid = jax.nn.silu(g.astype(F32)).astype(g.dtype) * u
            mo = layer.mlp.down_proj(hmid)
            x = x + mo
            for name, val in (("norm1", n1), ("q", q), ("k", k), ("v", v), ("core", o),
                              ("attn", a), ("norm2", n2), ("gate", g), ("up", u), ("hmid", hmid),
                              ("mlp", mo), ("layer", x)):
                per[name].append(val.reshape(val.shape[0], val.shape[1], -1))
        rec.update({k: jnp.stack(v) for k, v in per.items()})
        rec["final_norm"] = model_.final_norm(x)
        rec["logits"] = model_.logits(rec["final_norm"])
        return rec

    tokens = jnp.array([ids], jnp.int32)
    rec = run(state_all, params, tokens)
    res = {k: np.asarray(v, np.float64)[:, 0] if v.ndim == 4 else np.asarray(v, np.float64)[0]
           for k, v in rec.items()}
    direct = np.asarray(model(tokens, jnp.arange(len(ids), dtype=jnp.int32)[None]), np.float64)[0]
    res["_direct_logits"] = direct
    return res


# ---- local (per-op) errors -------------------------------------------------------------------

def local_errors(ref, model, hf32, ids):
    """{op: (ours |Δ| mean, ours max, hf32 mean, hf32 max)}: each op on the pure64 input rounded
    to float32 vs pure64's output, over all layers."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    import transformers.models.llama.modeling_llama as ml

    from ppp_jax.model.attention import segment_causal_mask, xla_attention
    from ppp_jax.model.layers import F32, apply_rope, rope_inv_freq, rope_tables

    c = model.config
    t = len(ids)
    graphdef, params = nnx.split(model.layers)
    layers = [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], params))
              for i in range(c.num_layers)]
    positions = jnp.arange(t, dtype=jnp.int32)[None]
    cos, sin = rope_tables(positions, c.head_dim, c.rope_theta, F32,
                           rope_inv_freq(c.head_dim, c.rope_theta))
    idx = jnp.arange(t, dtype=jnp.int32)
    seg = jnp.ones((1, t), jnp.int32)
    mask = segment_causal_mask(seg, seg, idx, idx)
    n, kv, h = c.num_heads, c.num_kv_heads, c.head_dim
    pos_t = torch.arange(t)[None]
    hf_mask = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)[None, None]

    def f32(a):
        return jnp.asarray(np.asarray(a, np.float32))[None]

    def t32(a):
        return torch.tensor(np.asarray(a, np.float32))[None]

    # ours: one jitted function per op kind (the layer's params are an argument)
    def jit_op(fn):
        @jax.jit
        def f(state, *xs):
            return fn(nnx.merge(graphdef_l, state), *xs)
        return f
    graphdef_l, _ = nnx.split(layers[0])

    def core_ours(layer, q, k, v):
        q = q.reshape(1, t, n, h)
        k, v = k.reshape(1, t, kv, h), v.reshape(1, t, kv, h)
        return xla_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v,
                             mask).reshape(1, t, n * h)

    ours_ops = {
        "input_norm": jit_op(lambda L, x: L.input_norm(x)),
        "q_proj": jit_op(lambda L, x: L.attn.q_proj(x).reshape(1, t, -1)),
        "k_proj": jit_op(lambda L, x: L.attn.k_proj(x).reshape(1, t, -1)),
        "v_proj": jit_op(lambda L, x: L.attn.v_proj(x).reshape(1, t, -1)),
        "rope+softmax·v": jit_op(core_ours),
        "o_proj": jit_op(lambda L, o: L.attn.o_proj(o.reshape(1, t, n, h))),
        "post_attn_norm": jit_op(lambda L, x: L.post_attn_norm(x)),
        "gate_proj": jit_op(lambda L, x: L.mlp.gate_proj(x)),
        "up_proj": jit_op(lambda L, x: L.mlp.up_proj(x)),
        "silu(g)*u": jit_op(lambda L, g, u: jax.nn.silu(g.astype(F32)) * u),
        "down_proj": jit_op(lambda L, x: L.mlp.down_proj(x)),
    }

    def core_hf(L, q, k, v):
        a = L.self_attn
        q = q.view(1, t, n, h).transpose(1, 2)
        k = k.view(1, t, kv, h).transpose(1, 2)
        v = v.view(1, t, kv, h).transpose(1, 2)
        cs, sn = hf32.model.rotary_emb(q, pos_t)
        q, k = ml.apply_rotary_pos_emb(q, k, cs, sn)
        o, _ = ml.eager_attention_forward(a, q, k, v, hf_mask, scaling=a.scaling)
        return o.reshape(1, t, n * h)

    hf_ops = {
        "input_norm": lambda L, x: L.input_layernorm(x),
        "q_proj": lambda L, x: L.self_attn.q_proj(x),
        "k_proj": lambda L, x: L.self_attn.k_proj(x),
        "v_proj": lambda L, x: L.self_attn.v_proj(x),
        "rope+softmax·v": core_hf,
        "o_proj": lambda L, o: L.self_attn.o_proj(o),
        "post_attn_norm": lambda L, x: L.post_attention_layernorm(x),
        "gate_proj": lambda L, x: L.mlp.gate_proj(x),
        "up_proj": lambda L, x: L.mlp.up_proj(x),
        "silu(g)*u": lambda L, g, u: L.mlp.act_fn(g) * u,
        "down_proj": lambda L, x: L.mlp.down_proj(x),
    }
    # op -> (reference input names, reference output name); layer input = previous layer output
    io = {"input_norm": (["resid_in"], "norm1"), "q_proj": (["norm1"], "q"),
          "k_proj": (["norm1"], "k"), "v_proj": (["norm1"], "v"),
          "rope+softmax·v": (["q", "k", "v"], "core"), "o_proj": (["core"], "attn"),
          "post_attn_norm": (["resid_mid"], "norm2"), "gate_proj": (["norm2"], "gate"),
          "up_proj": (["norm2"], "up"), "silu(g)*u": (["gate", "up"], "hmid"),
          "down_proj": (["hmid"], "mlp")}
    resid_in = np.concatenate([ref["embed"][None], ref["layer"][:-1]])
    resid_mid = ref["layer"] - ref["mlp"]  # x + attn, exact enough in float64
    refs = dict(ref, resid_in=resid_in, resid_mid=resid_mid)
    results = {}
    with torch.no_grad():
        for op in io:
            ins, outn = io[op]
            eo, eh = [], []
            for li in range(c.num_layers):
                want = refs[outn][li]
                got_o = np.asarray(ours_ops[op](nnx.state(layers[li]),
                                                *[f32(refs[i][li]) for i in ins]),
                                   np.float64)[0].reshape(want.shape)
                got_h = hf_ops[op](hf32.model.layers[li],
                                   *[t32(refs[i][li]) for i in ins]).double().numpy()[0]
                eo.append(np.abs(got_o - want))
                eh.append(np.abs(got_h.reshape(want.shape) - want))
            eo, eh = np.stack(eo), np.stack(eh)
            results[op] = (eo.mean(), eo.max(), eh.mean(), eh.max(), np.abs(refs[outn]).mean())
        # final norm and the tied lm_head
        x = ref["layer"][-1]
        got_o = np.asarray(jax.jit(lambda x: model.final_norm(x))(f32(x)), np.float64)[0]
        got_h = hf32.model.norm(t32(x)).double().numpy()[0]
        want = ref["final_norm"]
        results["final_norm"] = (np.abs(got_o - want).mean(), np.abs(got_o - want).max(),
                                 np.abs(got_h - want).mean(), np.abs(got_h - want).max(),
                                 np.abs(want).mean())
        x = ref["final_norm"]
        got_o = np.asarray(jax.jit(model.logits)(f32(x)), np.float64)[0]
        got_h = hf32.lm_head(t32(x)).double().numpy()[0]
        want = ref["logits"]
        results["lm_head"] = (np.abs(got_o - want).mean(), np.abs(got_o - want).max(),
                              np.abs(got_h - want).mean(), np.abs(got_h - want).max(),
                              np.abs(want).mean())
    return results


def main():
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ppp_jax.model.api import load_pretrained
    from ppp_jax.model.smollm2 import smollm2_checkpoint

    p = argparse.ArgumentParser()
    p.add_argument("--skip-local", action="store_true")
    p.add_argument("--dot-chunk", type=int, default=0)
    args = p.parse_args()
    path = str(smollm2_checkpoint())
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.encode(tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)
    torch.set_num_threads(1)

    def load(dtype):
        return LlamaForCausalLM.from_pretrained(path, dtype=dtype,
                                                attn_implementation="eager").eval()
    hf32, hf64 = load(torch.float32), load(torch.float64)
    r32 = hf_intermediates(hf32, ids)
    r64 = hf_intermediates(hf64, ids)
    undo = patch_pure64()
    try:
        p64 = hf_intermediates(hf64, ids)
    finally:
        undo()
    model = load_pretrained(path, dtype="float32", dot_chunk=args.dot_chunk)
    ours = ours_intermediates(model, ids)
    d = np.abs(ours["_direct_logits"] - ours["logits"]).max()
    print(f"T={len(ids)} dot_chunk={args.dot_chunk}; instrumented (layers unrolled) vs model() "
          f"(scan) logits max |Δ| {d:.2e}")
    print(f"hf64 vs pure64 logits: mean {np.abs(r64['logits'] - p64['logits']).mean():.2e} "
          f"max {np.abs(r64['logits'] - p64['logits']).max():.2e}")

    names = ["embed", "norm1", "q", "k", "v", "core", "attn", "norm2", "gate", "up", "hmid",
             "mlp", "layer", "final_norm", "logits"]
    for refname, ref in (("hf64", r64), ("pure64", p64)):
        print(f"\n== accumulated, vs {refname}: ours mean/max | hf32 mean/max | ratio of means"
              f" (per-layer: mean of per-layer means; max over layers)")
        for nm in names:
            eo, eh = np.abs(ours[nm] - ref[nm]), np.abs(r32[nm] - ref[nm])
            print(f"{nm:11s} ours {eo.mean():.3e} {eo.max():.3e} | hf32 {eh.mean():.3e} "
                  f"{eh.max():.3e} | {eo.mean() / max(eh.mean(), 1e-30):.3f}")
        for li in (0, 1, 14, 29):
            eo = np.abs(ours["layer"][li] - ref["layer"][li])
            eh = np.abs(r32["layer"][li] - ref["layer"][li])
            print(f"  layer {li:2d} resid: ours {eo.mean():.3e} {eo.max():.3e} | hf32 "
                  f"{eh.mean():.3e} {eh.max():.3e} | {eo.mean() / eh.mean():.3f}")
        eo = np.abs(ours["_direct_logits"] - ref["logits"])
        eh = np.abs(r32["logits"] - ref["logits"])
        print(f"model() logits: ours {eo.mean():.3e} {eo.max():.3e} | hf32 {eh.mean():.3e} "
              f"{eh.max():.3e} | {eo.mean() / eh.mean():.3f} (max {eo.max() / eh.max():.3f})")
    if args.skip_local:
        return
    print("\n== local (one op, pure64 input rounded to float32, vs pure64 output), all layers:")
    print("op              ours mean   ours max  | hf32 mean   hf32 max  | ratio | mean|out|")
    for op, (om, ox, hm, hx, scale) in local_errors(p64, model, hf32, ids).items():
        print(f"{op:15s} {om:.3e} {ox:.3e} | {hm:.3e} {hx:.3e} | {om / max(hm, 1e-30):.3f} "
              f"| {scale:.3e}")


if __name__ == "__main__":
    main()
