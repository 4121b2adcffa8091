"""`SeedOssForCausalLM`: the Seed-OSS decoder in Flax NNX, layers stacked and run with `lax.scan`.

Parameter tree (`nnx.state(model, nnx.Param)`), letters as in `config.py`:

    embed.embedding                [V, D]        ("vocab", "embed")
    layers.input_norm.scale        [L, D]        ("layers", "embed")
    layers.attn.q_proj.kernel      [L, D, N, H]  ("layers", "embed", "heads", "head_dim")
    layers.attn.q_proj.bias        [L, N, H]     iff attention_bias
    layers.attn.k_proj.kernel      [L, D, K, H]  ("layers", "embed", "kv_heads", "head_dim")
    layers.attn.k_proj.bias        [L, K, H]     iff attention_bias
    layers.attn.v_proj.kernel      [L, D, K, H]
    layers.attn.v_proj.bias        [L, K, H]     iff attention_bias
    layers.attn.o_proj.kernel      [L, N, H, D]  ("layers", "heads", "head_dim", "embed")
    layers.attn.o_proj.bias        [L, D]        iff attention_out_bias
    layers.post_attn_norm.scale    [L, D]
    layers.mlp.gate_proj.kernel    [L, D, F]     ("layers", "embed", "mlp"); bias [L, F] iff mlp_bias
    layers.mlp.up_proj.kernel      [L, D, F]     bias [L, F] iff mlp_bias
    layers.mlp.down_proj.kernel    [L, F, D]     ("layers", "mlp", "embed"); bias [L, D] iff mlp_bias
    final_norm.scale               [D]
    lm_head.kernel                 [D, V]        ("embed", "vocab"); absent iff tie_word_embeddings

The logical names sit in each Param's metadata under `out_sharding` (see `axes.py`).

Inside `sharding.using_mesh` the activations are pinned by logical name (`sharding.constrain`):
the embeddings and each layer's residual stream [B, T, D] as `axes.ACT_BTD`, q/k/v and the MLP
hidden in `attention.py` / `layers.py`, the lm_head input and the logits in `logits`. With the
default rules and a `sequence` mesh axis this is context parallelism (T split over `sequence`,
k/v gathered whole). Calls with a KV cache (the engine) run without these constraints.

Compile time does not grow with depth: the L stacked layers run as one `lax.scan` whose body is
one decoder layer (optionally under `jax.checkpoint`, per `ModelConfig.remat`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from ppp_jax.model import axes as ax
from ppp_jax.model import sharding as shd
from ppp_jax.model.attention import Attention
from ppp_jax.model.config import ModelConfig
from ppp_jax.model.layers import (
    MLP,
    Embed,
    Linear,
    RMSNorm,
    dtype_of,
    rope_inv_freq,
    rope_tables,
)

if TYPE_CHECKING:
    from ppp_jax.model.kv_cache import KVCache


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    # save the weight matmuls (projections, MLP); recompute attention scores and elementwise ops
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Residual adds in `dtype`.

    Built with `stack=L`, each param carries a leading L axis; called on one slice at a time.
    """

    def __init__(self, config: ModelConfig, *, stack: int | None = None, rngs: nnx.Rngs):
        c = config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype, stack=stack)
        self.input_norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **kw)
        self.attn = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                              qkv_bias=c.attention_bias, out_bias=c.attention_out_bias,
                              impl=c.attention_impl, dropout_rate=c.attention_dropout, rngs=rngs,
                              qk_norm=c.qk_norm, norm_eps=c.rms_norm_eps, dot_chunk=c.dot_chunk,
                              **kw)
        self.post_attn_norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **kw)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, use_bias=c.mlp_bias, rngs=rngs,
                       dot_chunk=c.dot_chunk, **kw)
        self.resid_dropout = nnx.Dropout(c.residual_dropout)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array, *, cache: KVCache | None = None, layer_state: Any = None,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, Any]:
        """x [B, T, D] -> (x [B, T, D], new layer cache state or None)."""
        keys = jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
        h, new_state = self.attn(self.input_norm(x), cos, sin, positions, segment_ids,
                                 cache=cache, layer_state=layer_state, dropout_key=keys[0])
        x = shd.constrain(x + self._resid_dropout(h, keys[1]), ax.ACT_BTD, name="residual")
        x = x + self._resid_dropout(self.mlp(self.post_attn_norm(x)), keys[2])
        return shd.constrain(x, ax.ACT_BTD, name="residual"), new_state

    def _resid_dropout(self, h: jax.Array, key: jax.Array | None) -> jax.Array:
        if key is None or self.resid_dropout.rate == 0.0:
            return h
        return self.resid_dropout(h, deterministic=False, rngs=key)


class SeedOssForCausalLM(nnx.Module):
    """Seed-OSS causal LM (see the module docstring for the parameter tree).

    Inputs everywhere: tokens int32 [B, T]; positions int32 [B, T] (RoPE positions; with left
    padding, real tokens start at 0); segment_ids int32 [B, T] (0 = padding, >0 = sequence id;
    default all ones). A token attends to earlier-or-equal tokens of its row with the same
    nonzero segment id, so padded and packed batches are exact.

    Dropout is live only when `dropout_key` is given (and the config's rates are nonzero).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        self.embed = Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.layers = DecoderLayer(c, stack=c.num_layers, rngs=rngs)
        self.final_norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype,
                                  param_dtype=pdtype)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear((c.hidden_size,), (c.vocab_size,), (ax.EMBED,), (ax.VOCAB,),
                                  use_bias=False, dtype=dtype, param_dtype=pdtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array | None = None, *,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """-> logits [B, T, V] in the compute dtype. Materializes all logits; for log-probs of
        long sequences use `hidden` + `logprobs.token_logprobs` instead."""
        hidden, _ = self.hidden(tokens, positions, segment_ids, dropout_key=dropout_key)
        return self.logits(hidden)

    def hidden(self, tokens: jax.Array, positions: jax.Array,
               segment_ids: jax.Array | None = None, *, cache: KVCache | None = None,
               collect_layers: bool = False, dropout_key: jax.Array | None = None,
               frozen_layers: int = 0):
        """Runs embedding, the L layers and the final norm.

        Returns `(hidden [B, T, D], cache)`: hidden after the final norm, in the compute dtype;
        cache is the updated cache (the T tokens appended) or None. With `collect_layers=True`
        returns `(hidden, cache, per_layer)`, per_layer [L, B, T, D] the residual stream after
        each layer (before the final norm), for per-layer parity checks.

        dropout_key: a PRNG key; only when given are the config's dropout rates applied
        (attention probabilities, after o_proj, after down_proj). Sampling never passes one.

        frozen_layers: K (static, 0 <= K < L): for training only the top L-K layers. The
        embedding and the bottom K layers run as a scan of their own under `stop_gradient`, so
        the backward pass stops at layer K: no gradient reaches the embedding through the
        residual stream or any bottom-layer weight, and none of their backward work is done
        (a tied lm_head still gives the embedding table a gradient through the logits). The
        forward values are the same as with K = 0. Not with a cache.

        Under `sharding.using_mesh` the activations follow the rules table (see the module
        docstring); with a cache they are left to the weights' and the cache's shardings.
        """
        scope = shd.no_activation_constraints() if cache is not None else contextlib.nullcontext()
        with scope:
            return self._hidden(tokens, positions, segment_ids, cache=cache,
                                collect_layers=collect_layers, dropout_key=dropout_key,
                                frozen_layers=frozen_layers)

    def _hidden(self, tokens, positions, segment_ids, *, cache, collect_layers, dropout_key,
                frozen_layers):
        c = self.config
        if not 0 <= frozen_layers < c.num_layers:
            raise ValueError(f"frozen_layers must be in [0, {c.num_layers}) for a {c.num_layers}-"
                             f"layer model, got {frozen_layers}")
        if frozen_layers and cache is not None:
            raise ValueError("frozen_layers is for training; it cannot be used with a cache")
        if tokens.ndim != 2 or positions.shape != tokens.shape:
            raise ValueError(f"tokens and positions must both be [B, T]; got {tokens.shape} and "
                             f"{positions.shape}")
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        elif segment_ids.shape != tokens.shape:
            raise ValueError(f"segment_ids {segment_ids.shape} must match tokens {tokens.shape}")
        positions = positions.astype(jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)
        x = shd.constrain(self.embed(tokens), ax.ACT_BTD, name="embeddings")  # [B, T, D]
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_type, c.rope_factor,
                                 c.rope_low_freq_factor, c.rope_high_freq_factor,
                                 c.rope_original_max_position, c.rope_beta_fast,
                                 c.rope_beta_slow, c.rope_truncate)
        scale = c.rope_attention_factor if c.rope_type == "yarn" else 1.0
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta, dtype_of(c.dtype), inv_freq,
                               scale)
        graphdef, params = nnx.split(self.layers)
        states = cache.layer_states() if cache is not None else None
        keys = jax.random.split(dropout_key, c.num_layers) if dropout_key is not None else None

        def body(x, xs):
            layer_params, layer_state, key = xs
            layer = nnx.merge(graphdef, layer_params)
            x, new_state = layer(x, cos, sin, positions, segment_ids, cache=cache,
                                 layer_state=layer_state, dropout_key=key)
            return x, (new_state, x if collect_layers else None)

        if c.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        if frozen_layers:
            k = frozen_layers
            bottom, top = (jax.tree.map(lambda a, s=s: a[s], (params, keys))
                           for s in (slice(None, k), slice(k, None)))
            # no tangent enters the bottom scan, so autodiff does no work for it at all
            frozen = jax.lax.stop_gradient((x, bottom[0]))
            x, (_, per_bottom) = jax.lax.scan(body, frozen[0], (frozen[1], None, bottom[1]))
            x, (new_states, per_top) = jax.lax.scan(body, x, (top[0], None, top[1]))
            per_layer = (None if per_top is None
                         else jnp.concatenate([jax.lax.stop_gradient(per_bottom), per_top]))
        else:
            x, (new_states, per_layer) = jax.lax.scan(body, x, (params, states, keys))
        if cache is not None:
            cache = cache.replace_layer_states(new_states).advance(segment_ids)
        hidden = shd.constrain(self.final_norm(x), ax.ACT_BTD, name="hidden")
        if collect_layers:
            return hidden, cache, per_layer
        return hidden, cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [B, T, D] -> logits [B, T, V] in the compute dtype (float32 accumulation).

        Under `using_mesh` the input and the logits are pinned to the activation rules (batch,
        and T over `sequence` when the mesh has it), also for each chunk of
        `logprobs.token_logprobs`.
        """
        hidden = shd.constrain(hidden, ax.ACT_BTD, name="lm_head input")
        if self.lm_head is None:
            logits = self.embed.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return shd.constrain(logits, ax.ACT_BTV, name="logits")
