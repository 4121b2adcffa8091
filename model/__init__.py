"""Seed-OSS in Flax NNX: config, layers, the transformer, KV cache, log-probs, sharding rules,
HF weights in and out.

    from ppp_jax.model import ModelConfig, SeedOssForCausalLM, token_logprobs
"""

from ppp_jax.model.config import ModelConfig, ModelConfigError, seed_oss_36b, tiny
from ppp_jax.model.generate import greedy_generate
from ppp_jax.model.kv_cache import DenseKVCache, KVCache
from ppp_jax.model.logprobs import naive_token_logprobs, token_logprobs
from ppp_jax.model.transformer import SeedOssForCausalLM

__all__ = [
    "DenseKVCache",
    "KVCache",
    "ModelConfig",
    "ModelConfigError",
    "SeedOssForCausalLM",
    "greedy_generate",
    "naive_token_logprobs",
    "seed_oss_36b",
    "tiny",
    "token_logprobs",
]
