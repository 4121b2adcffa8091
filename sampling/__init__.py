"""The JAX sampling engine: paged KV cache, prefill/decode, continuous batching, sessions, server."""
