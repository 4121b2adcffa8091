"""Shared fixtures for the model tests: tiny HF checkpoints written once per session."""

from __future__ import annotations

import pytest

from ppp_jax.model import testing as mt


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """hf_checkpoint(name, dtype="float32", seed=0, **overrides) -> Path, cached per session."""
    made = {}

    def make(name: str, dtype: str = "float32", seed: int = 0, **overrides):
        key = (name, dtype, seed)
        if key not in made:
            path = tmp_path_factory.mktemp(f"hf_{name}_{dtype}")
            made[key] = mt.write_tiny_hf_checkpoint(path, seed=seed, dtype=dtype, **overrides)
        return made[key]

    return make
