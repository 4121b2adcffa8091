"""Layers and model mechanics: param tree and logical axes, RoPE/RMSNorm numerics against torch,
scan (compile size independent of depth), remat policies, dropout, dtype policy, attention impls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ppp_jax.model import axes as ax
from ppp_jax.model import testing as mt
from ppp_jax.model.config import tiny
from ppp_jax.model.layers import RMSNorm, rope_inv_freq, rope_tables
from ppp_jax.model.transformer import SeedOssForCausalLM
from tests import numerics as nm

L_, D_, F_, N_, K_, H_, V_ = 3, 24, 40, 4, 2, 10, 67


def _flat_params(model):
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_param_tree_shapes_and_logical_axes():
    cfg = tiny(num_layers=L_, num_kv_heads=K_, attention_out_bias=True, mlp_bias=True)
    params = _flat_params(nnx.eval_shape(lambda: SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0))))
    lay, emb, hd = ax.LAYERS, ax.EMBED, ax.HEAD_DIM
    expected = {
        "embed.embedding": ((V_, D_), (ax.VOCAB, emb)),
        "layers.input_norm.scale": ((L_, D_), (lay, emb)),
        "layers.attn.q_proj.kernel": ((L_, D_, N_, H_), (lay, emb, ax.HEADS, hd)),
        "layers.attn.q_proj.bias": ((L_, N_, H_), (lay, ax.HEADS, hd)),
        "layers.attn.k_proj.kernel": ((L_, D_, K_, H_), (lay, emb, ax.KV_HEADS, hd)),
        "layers.attn.k_proj.bias": ((L_, K_, H_), (lay, ax.KV_HEADS, hd)),
        "layers.attn.v_proj.kernel": ((L_, D_, K_, H_), (lay, emb, ax.KV_HEADS, hd)),
        "layers.attn.v_proj.bias": ((L_, K_, H_), (lay, ax.KV_HEADS, hd)),
        "layers.attn.o_proj.kernel": ((L_, N_, H_, D_), (lay, ax.HEADS, hd, emb)),
        "layers.attn.o_proj.bias": ((L_, D_), (lay, emb)),
        "layers.post_attn_norm.scale": ((L_, D_), (lay, emb)),
        "layers.mlp.gate_proj.kernel": ((L_, D_, F_), (lay, emb, ax.MLP)),
        "layers.mlp.gate_proj.bias": ((L_, F_), (lay, ax.MLP)),
        "layers.mlp.up_proj.kernel": ((L_, D_, F_), (lay, emb, ax.MLP)),
        "layers.mlp.up_proj.bias": ((L_, F_), (lay, ax.MLP)),
        "layers.mlp.down_proj.kernel": ((L_, F_, D_), (lay, ax.MLP, emb)),
        "layers.mlp.down_proj.bias": ((L_, D_), (lay, emb)),
        "final_norm.scale": ((D_,), (emb,)),
        "lm_head.kernel": ((D_, V_), (emb, ax.VOCAB)),
    }
    assert set(params) == set(expected)
    for name, (shape, names) in expected.items():
        var = params[name]
        assert tuple(var.shape) == shape, name
        assert var.get_metadata()[ax.SHARDING_METADATA_KEY] == names, name
        # nnx's own reader of sharding metadata sees the names too
        assert tuple(nnx.spmd.get_var_pspec(var)) == names, name


def test_optional_params_are_absent_when_off():
    cfg = tiny(attention_bias=False, tie_word_embeddings=True)
    params = _flat_params(nnx.eval_shape(lambda: SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0))))
    assert not [n for n in params if n.endswith("bias")]
    assert "lm_head.kernel" not in params


def test_rope_inv_freq_and_tables_match_torch():
    def torch_inv_freq(h, theta):  # HF's default RoPE init
        return 1.0 / (theta ** (torch.arange(0, h, 2, dtype=torch.int64).float() / h))

    for theta, h in ((1e4, 10), (1e7, 128)):
        # 1 / theta^(2j/H) in float32 by two libraries' pow: equal here bit for bit, but only the
        # division, pow and reciprocal's roundings are guaranteed (two evaluations of 6)
        np.testing.assert_allclose(np.asarray(rope_inv_freq(h, theta)),
                                   torch_inv_freq(h, theta).numpy(),
                                   rtol=nm.f32_chain_rtol(2 + nm.TRANSCENDENTAL), atol=0)
    # The tables from the same inv_freq (ours): the float32 angles pos·inv are then identical
    # (one correctly rounded product), and cos/sin differ by their own ulps only. (A 1-ulp
    # difference of inv_freq would move the angle at position 524287 by ~0.06 rad: that is the
    # inv_freq check above, not this one.)
    torch_inv = torch.tensor(np.asarray(rope_inv_freq(128, 1e7)))
    pos = np.array([[0, 1, 7, 4095, 65535, 524287]], np.int32)
    cos, sin = rope_tables(jnp.asarray(pos), 128, 1e7, jnp.float32)
    ang = torch.tensor(pos).float()[..., None] * torch_inv
    emb = torch.cat([ang, ang], dim=-1)
    np.testing.assert_allclose(np.asarray(cos), emb.cos().numpy(), atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), emb.sin().numpy(), atol=2e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rmsnorm_matches_hf_cast_order(dtype):
    from transformers.models.seed_oss.modeling_seed_oss import SeedOssRMSNorm

    rng = np.random.RandomState(0)
    x = rng.standard_normal((3, 5, D_)).astype(np.float32) * 3
    w = 1.0 + 0.3 * rng.standard_normal(D_).astype(np.float32)
    tdt = getattr(torch, dtype)
    ref = SeedOssRMSNorm(D_, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(w))
    ref = ref.to(tdt)
    with torch.no_grad():
        expected = ref(torch.tensor(x).to(tdt)).float().numpy()
    jdt = jnp.dtype(dtype)
    norm = RMSNorm(D_, eps=1e-6, dtype=jdt, param_dtype=jdt)
    norm.scale[...] = jnp.asarray(w, jdt)
    got = np.asarray(norm(jnp.asarray(x, jdt)), np.float32)
    if dtype == "float32":
        # x·w·rsqrt(mean(x²) + eps), two evaluations: the sum of D squares (γ_D, halved by the
        # square root), mean, eps, rsqrt and the two products; relative to each element
        rel = 2 * (nm.gamma(D_ + 2) / 2 + nm.gamma(nm.TRANSCENDENTAL + 2))
        np.testing.assert_allclose(got, expected, rtol=rel, atol=0)
    else:  # the cast-then-multiply order of HF: at most 1 bf16 ulp apart on a few elements
        ulp = np.abs(expected) * 2.0 ** -7
        assert (np.abs(got - expected) <= ulp + 1e-6).all()
        assert (got == expected).mean() > 0.97


def test_linear_and_silu_bf16_follow_torch_cast_points():
    """bf16 Linear = fp32 accumulation + fp32 bias + one rounding (torch F.linear on CPU);
    SiLU in fp32 then rounded. Compared elementwise with torch bf16."""
    from ppp_jax.model.layers import Linear

    rng = np.random.RandomState(1)
    x = rng.standard_normal((4, 7, D_)).astype(np.float32)
    w = (rng.standard_normal((F_, D_)) / np.sqrt(D_)).astype(np.float32)
    bias = (0.3 * rng.standard_normal(F_)).astype(np.float32)
    tb = lambda a: torch.tensor(a).to(torch.bfloat16)
    with torch.no_grad():
        want = torch.nn.functional.linear(tb(x), tb(w), tb(bias))
        want_silu = torch.nn.functional.silu(want).float().numpy()
        want = want.float().numpy()
    lin = Linear((D_,), (F_,), ("embed",), ("mlp",), use_bias=True, dtype=jnp.bfloat16,
                 param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    lin.kernel[...] = jnp.asarray(w.T, jnp.bfloat16)
    lin.bias[...] = jnp.asarray(bias, jnp.bfloat16)
    got = lin(jnp.asarray(x, jnp.bfloat16))
    got_silu = np.asarray(jax.nn.silu(got.astype(jnp.float32)).astype(jnp.bfloat16), np.float32)
    got = np.asarray(got, np.float32)
    ulp = np.abs(want) * 2.0 ** -7 + 1e-6
    assert (np.abs(got - want) <= ulp).all()  # never more than 1 ulp (accumulation order)
    assert (got == want).mean() > 0.99, (got == want).mean()
    assert (got_silu[got == want] == want_silu[got == want]).all()


def _jaxpr_size(num_layers: int) -> int:
    model = nnx.eval_shape(lambda: SeedOssForCausalLM(tiny(num_layers=num_layers),
                                                      rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    tokens = jnp.zeros((2, 7), jnp.int32)

    def f(state):
        return nnx.merge(graphdef, state)(tokens, tokens)

    return len(str(jax.make_jaxpr(f)(state)))


def test_program_size_does_not_grow_with_depth():
    """The layers run as one scan: the traced program for 2 and 9 layers has the same size
    (up to the digits of the shapes)."""
    small, big = _jaxpr_size(2), _jaxpr_size(9)
    assert abs(big - small) < 0.01 * small, (small, big)


def _loss_and_grads(model, tokens, positions, segs, dropout_key=None):
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss_fn(state):
        logits = nnx.merge(graphdef, state)(tokens, positions, segs, dropout_key=dropout_key)
        return jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[..., 3])

    return jax.value_and_grad(loss_fn)(state)


def _batch(vocab=V_, b=2, t=9, seed=0):
    rng = np.random.RandomState(seed)
    tokens = jnp.asarray(rng.randint(0, vocab, (b, t)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    segs = jnp.ones((b, t), jnp.int32).at[1, :3].set(0)
    return tokens, positions, segs


def test_remat_policies_give_equal_outputs_and_grads():
    tokens, positions, segs = _batch()
    results = {}
    for remat in ("none", "full", "save_dots"):
        model = mt.make_model(tiny(num_kv_heads=2, remat=remat), seed=1)
        results[remat] = _loss_and_grads(model, tokens, positions, segs)
    loss0, g0 = results["none"]
    # Bounds: two programs (remat recomputes in its own schedule), two float32 evaluations of
    # the forward + log-softmax, the mean over B·T = 18 positions, and of the backward
    cfg, n_pos = model.config, tokens.size
    path = nm.transformer_path_length(cfg, tokens.shape[1])
    z = np.abs(mt.jit_logits(model, tokens, positions, segs)).max()
    lp_scale = 2 * z + np.log(cfg.vocab_size)
    tol_loss = nm.f32_logprob_atol(path, cfg.vocab_size, z, lp_scale) + 2 * nm.gamma(n_pos) * lp_scale
    for remat in ("full", "save_dots"):
        loss, g = results[remat]
        np.testing.assert_allclose(loss, loss0, rtol=0, atol=tol_loss)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g)):
            tol = nm.f32_grad_atol(path, cfg.vocab_size, n_pos, np.abs(np.asarray(a)).max())
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol)
    # the gradient reaches every parameter (nothing silently detached by the scan)
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g0))


def test_remat_changes_the_backward_program():
    """`full` recomputes the layer: its grad jaxpr has a remat region, `none` has none."""
    tokens, positions, segs = _batch()

    def grad_jaxpr(remat):
        model = nnx.eval_shape(lambda: SeedOssForCausalLM(tiny(remat=remat), rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        f = lambda s: nnx.merge(graphdef, s)(tokens, positions, segs).sum()
        return str(jax.make_jaxpr(jax.grad(f))(state))

    assert "remat" not in grad_jaxpr("none")
    assert "remat" in grad_jaxpr("full") or "checkpoint" in grad_jaxpr("full")


@jax.jit(static_argnums=(0,))
def _jit_dropout_forward(graphdef, state, tokens, positions, segs, key):
    return nnx.merge(graphdef, state)(tokens, positions, segs, dropout_key=key)


def test_dropout_is_live_only_with_a_key():
    tokens, positions, segs = _batch()
    plain = mt.make_model(tiny(), seed=2)
    drop = mt.make_model(tiny(attention_dropout=0.3, residual_dropout=0.3), seed=2)

    def fwd(m, key=None):
        graphdef, state = nnx.split(m)
        return np.asarray(_jit_dropout_forward(graphdef, state, tokens, positions, segs, key))

    base = fwd(plain)
    # no key: deterministic, rates ignored; bit-identical because it traces the same program
    np.testing.assert_array_equal(fwd(drop), base)
    a, b = fwd(drop, jax.random.key(0)), fwd(drop, jax.random.key(0))
    c = fwd(drop, jax.random.key(1))
    np.testing.assert_array_equal(a, b)  # reproducible per key
    assert np.isfinite(a).all()
    assert np.abs(a - base).max() > 1e-2 and np.abs(a - c).max() > 1e-2


def test_segment_causal_mask_literal():
    """Row: [pad, a, a, b, pad]; causal within equal nonzero segments; padding sees only itself."""
    from ppp_jax.model.attention import segment_causal_mask

    seg = jnp.array([[0, 1, 1, 2, 0]])
    idx = jnp.arange(5)
    want = np.array([[1, 0, 0, 0, 0],
                     [0, 1, 0, 0, 0],
                     [0, 1, 1, 0, 0],
                     [0, 0, 0, 1, 0],
                     [0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(np.asarray(segment_causal_mask(seg, seg, idx, idx))[0], want)
    # cache view: 2 queries at slots 3, 4 over 6 slots (slot 5 empty)
    kv_seg = jnp.array([[0, 1, 1, 1, 1, 0]])
    got = segment_causal_mask(jnp.array([[1, 1]]), kv_seg, jnp.array([[3, 4]]), jnp.arange(6))
    np.testing.assert_array_equal(np.asarray(got)[0], [[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]])


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on GPU cudnn needs bf16 compute")
def test_cudnn_impl_path_matches_xla_on_cpu():
    """On CPU the 'cudnn' impl runs jax.nn.dot_product_attention with the XLA backend."""
    tokens, positions, segs = _batch()
    xla = mt.make_model(tiny(num_kv_heads=2), seed=5)
    cud = mt.make_model(tiny(num_kv_heads=2, attention_impl="cudnn"), seed=5)
    a = mt.jit_logits(xla, tokens, positions, segs)
    b = mt.jit_logits(cud, tokens, positions, segs)
    real = np.asarray(segs).astype(bool)
    # two attention implementations: two float32 evaluations of the forward
    tol = nm.f32_forward_atol(nm.transformer_path_length(xla.config, tokens.shape[1]),
                              np.abs(a[real]).max())
    np.testing.assert_allclose(b[real], a[real], atol=tol, rtol=0)


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="splash runs on TPU")
def test_splash_impl_refuses_non_tpu_backend_clearly():
    tokens, positions, segs = _batch(t=8)
    model = mt.make_model(tiny(attention_impl="splash"))
    with pytest.raises(NotImplementedError, match="needs a TPU"):
        model(tokens, positions, segs)


# (bf16 params with bf16 compute is the parity test's bf16 case)
@pytest.mark.parametrize("param_dtype,dtype", [("bfloat16", "float32"), ("float32", "bfloat16")])
def test_param_and_compute_dtypes_are_separate(param_dtype, dtype):
    tokens, positions, segs = _batch()
    cfg32 = tiny(num_kv_heads=2)
    ref = mt.make_model(cfg32, seed=6)
    model = mt.make_model(cfg32.replace(param_dtype=param_dtype, dtype=dtype), seed=6)
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(param_dtype)}
    graphdef, state = nnx.split(model)

    def both(s):
        m = nnx.merge(graphdef, s)
        hidden, _ = m.hidden(tokens, positions, segs)
        return m.logits(hidden), hidden

    logits, hidden = jax.jit(both)(state)
    assert logits.dtype == jnp.dtype(dtype) and hidden.dtype == jnp.dtype(dtype)
    got = np.asarray(logits, np.float32)
    assert np.isfinite(got).all()  # padding rows included
    want = mt.jit_logits(ref, tokens, positions, segs)
    real = np.asarray(segs).astype(bool)
    # bf16 somewhere in the chain: close to fp32 but not equal (logits here are O(5))
    err = np.abs(got[real] - want[real]).max()
    assert 0 < err < 0.25, err
