"""The JAX sampling engine: paged KV cache, prefill/decode, continuous batching, sessions, server.

    from ppp_jax.sampling import Engine, EngineConfig, Request, SamplingParams

    engine = Engine.from_pretrained("path/to/checkpoint", EngineConfig(num_slots=8))
    result = engine.generate_batch([Request([0, 5, 7], SamplingParams(temperature=0.0))])[0]
    result.token_ids, result.logprobs, result.finish_reason
"""

from ppp_jax.sampling.engine import Engine, StreamChunk
from ppp_jax.sampling.params import GenerationResult, Request, RequestError, SamplingParams
from ppp_jax.sampling.config import EngineConfig

__all__ = ["Engine", "EngineConfig", "GenerationResult", "Request", "RequestError",
           "SamplingParams", "StreamChunk"]
