"""Seed-OSS in Flax NNX: config, layers, the transformer, sharding rules, HF weights in and out."""
