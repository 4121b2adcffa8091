"""ppp-jax: JAX/XLA-native training of productive, proactive and personalized LLM agents."""
