"""Test helpers shared across the project: tiny random Hugging Face Seed-OSS checkpoints written by
transformers itself, the torch reference model, and a direct torch -> NNX weight copy.

These import torch and transformers lazily (they are test dependencies). Production loading from
safetensors lives in `ppp_jax.model.hf_io`; `copy_torch_weights` here is a small, independent
mapping used by the parity tests so that they do not depend on the loader they help to check.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppp_jax.model.config import ModelConfig, tiny

_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def write_tiny_hf_checkpoint(path: str | Path, seed: int = 0, dtype: str = "float32",
                             **config_overrides: Any) -> Path:
    """Writes a random `SeedOssForCausalLM` (or, with `family=...`, that family's transformers
    model) with `save_pretrained` into `path`; returns `path`.

    The architecture is `config.tiny(**config_overrides)` (ModelConfig field names, e.g.
    `num_kv_heads=2`, `mlp_bias=True`, `family="qwen2"`). Weights are random with larger-than-default scales, and
    norm weights and biases are random too (not ones/zeros), so that a wrong cast, transpose,
    missing bias or mask shows up in the logits. `dtype` is the stored dtype ("float32" or
    "bfloat16").
    """
    import torch
    import transformers

    cfg = tiny(**{"param_dtype": dtype, **config_overrides})
    arch = cfg.to_hf_dict()["architectures"][0]  # the family's class, e.g. LlamaForCausalLM
    config_class = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    hf_cfg = config_class(**cfg.to_hf_dict())
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:  # [out, in] kernels: std ~ 1/sqrt(in) keeps activations O(1)
                p.copy_(torch.randn_like(p) / np.sqrt(p.shape[1]))
    model = model.to(getattr(torch, _TORCH_DTYPES[dtype]))
    path = Path(path)
    model.save_pretrained(path)
    return path


def load_hf_reference(path: str | Path, dtype: str = "float32"):
    """The torch model at `path` (its family's class, by config.json), eager attention, in eval
    mode.

    Loaded with `from_pretrained(dtype=...)`, never cast afterwards (`.to(bf16)` would round the
    RoPE inv_freq buffer and change the reference; seed_oss.md §2.8).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, _TORCH_DTYPES[dtype]), attn_implementation="eager")
    return model.eval()


def torch_to_numpy(t) -> np.ndarray:
    """A torch tensor as numpy; bf16 goes through float32 (exact) and back to ml_dtypes bf16."""
    import torch

    if t.dtype == torch.bfloat16:
        return t.detach().to(torch.float32).cpu().numpy().astype(jnp.bfloat16)
    return t.detach().cpu().numpy()


def copy_torch_weights(model, torch_model) -> None:
    """Copies an HF `SeedOssForCausalLM`'s weights into our `SeedOssForCausalLM` in place.

    Casts to the NNX model's param dtype. Raises KeyError/ValueError naming the tensor if a
    weight is missing or mis-shaped.
    """
    c: ModelConfig = model.config
    sd = {k: torch_to_numpy(v) for k, v in torch_model.state_dict().items()}
    d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    per_layer = {
        ("input_norm", "scale"): ("input_layernorm.weight", lambda w: w),
        ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", lambda w: w),
        ("attn", "q_proj", "kernel"): ("self_attn.q_proj.weight", lambda w: w.T.reshape(d, n, h)),
        ("attn", "k_proj", "kernel"): ("self_attn.k_proj.weight", lambda w: w.T.reshape(d, k, h)),
        ("attn", "v_proj", "kernel"): ("self_attn.v_proj.weight", lambda w: w.T.reshape(d, k, h)),
        ("attn", "o_proj", "kernel"): ("self_attn.o_proj.weight", lambda w: w.T.reshape(n, h, d)),
        ("mlp", "gate_proj", "kernel"): ("mlp.gate_proj.weight", lambda w: w.T),
        ("mlp", "up_proj", "kernel"): ("mlp.up_proj.weight", lambda w: w.T),
        ("mlp", "down_proj", "kernel"): ("mlp.down_proj.weight", lambda w: w.T),
    }
    if c.attention_bias:
        per_layer[("attn", "q_proj", "bias")] = ("self_attn.q_proj.bias", lambda b: b.reshape(n, h))
        per_layer[("attn", "k_proj", "bias")] = ("self_attn.k_proj.bias", lambda b: b.reshape(k, h))
        per_layer[("attn", "v_proj", "bias")] = ("self_attn.v_proj.bias", lambda b: b.reshape(k, h))
    if c.attention_out_bias:
        per_layer[("attn", "o_proj", "bias")] = ("self_attn.o_proj.bias", lambda b: b)
    if c.qk_norm:
        per_layer[("attn", "q_norm", "scale")] = ("self_attn.q_norm.weight", lambda w: w)
        per_layer[("attn", "k_norm", "scale")] = ("self_attn.k_norm.weight", lambda w: w)
    if c.mlp_bias:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            per_layer[("mlp", proj, "bias")] = (f"mlp.{proj}.bias", lambda b: b)

    def take(name: str) -> np.ndarray:
        if name not in sd:
            raise KeyError(f"torch checkpoint lacks tensor {name!r}")
        return sd[name]

    def assign(var: nnx.Variable, value: np.ndarray, name: str) -> None:
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(f"{name}: torch gives shape {value.shape}, model expects {var.shape}")
        var[...] = jnp.asarray(value, dtype=var.dtype)

    assign(model.embed.embedding, take("model.embed_tokens.weight"), "model.embed_tokens.weight")
    assign(model.final_norm.scale, take("model.norm.weight"), "model.norm.weight")
    if model.lm_head is not None:
        assign(model.lm_head.kernel, take("lm_head.weight").T, "lm_head.weight")
    for path, (hf_name, fn) in per_layer.items():
        stacked = np.stack([fn(take(f"model.layers.{i}.{hf_name}")) for i in range(c.num_layers)])
        var = model.layers
        for part in path:
            var = getattr(var, part)
        assign(var, stacked, f"model.layers.*.{hf_name}")


@functools.partial(jax.jit, static_argnums=(0,))
def _jit_logits(graphdef, state, tokens, positions, segment_ids):
    return nnx.merge(graphdef, state)(tokens, positions, segment_ids)


def jit_logits(model, tokens, positions, segment_ids=None) -> np.ndarray:
    """`model(tokens, positions, segment_ids)` under jit (weights as arguments), as float32 numpy.

    Much faster than eager calls in tests; compiles once per shape and model structure.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    segment_ids = jnp.ones_like(tokens) if segment_ids is None else jnp.asarray(segment_ids)
    graphdef, state = nnx.split(model)
    out = _jit_logits(graphdef, state, tokens, jnp.asarray(positions, jnp.int32), segment_ids)
    return np.asarray(out, np.float32)


def make_model(config: ModelConfig, seed: int = 0, kernel_std: float = 0.2):
    """A `SeedOssForCausalLM(config)` with numpy-drawn random weights, fast to build.

    The model is built abstractly (`nnx.eval_shape`) and filled from a numpy RNG: kernels and
    the embedding ~ N(0, kernel_std^2) (embedding N(0, 1)), norm scales 1 + 0.3 N(0, 1), biases
    0.3 N(0, 1). (The constructor's own init draws each tensor with jax.random, which compiles a
    separate program per shape and takes tens of seconds on a busy 2-core CPU.)
    """
    from ppp_jax.model.transformer import SeedOssForCausalLM

    model = nnx.eval_shape(lambda: SeedOssForCausalLM(config, rngs=nnx.Rngs(0)))
    rng = np.random.RandomState(seed)
    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Param):
            continue
        noise = rng.standard_normal(var.shape)
        if path[-1] == "scale":
            value = 1.0 + 0.3 * noise
        elif path[-1] == "bias":
            value = 0.3 * noise
        elif path[-1] == "embedding":
            value = noise
        else:
            value = kernel_std * noise
        var.set_value(jnp.asarray(value, var.dtype))
    return model
