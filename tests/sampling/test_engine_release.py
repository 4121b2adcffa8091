"""Releasing an engine's memory for a training update and getting it back (issue #16: rollout
and training share the devices): pools and owned weight copies are freed, requests in between
fail clearly, and after `update_params` the engine generates exactly as before."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import Request, SamplingParams

from .conftest import SMALL_ENGINE


def _live_ids() -> set[int]:
    return {id(x) for x in jax.live_arrays()}


def test_release_frees_pools_and_weight_copies_and_update_params_restores(tiny_model):
    graphdef, state = nnx.split(tiny_model)
    # the engine owns a copy of the weights (as the sampling layout's cast copies are)
    own = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    eng = Engine(nnx.merge(graphdef, own), SMALL_ENGINE)
    try:
        greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
        prompt = [5, 9, 13, 21, 2, 7]
        before = eng.generate_batch([Request(prompt, greedy)])[0]
        layout = eng.kv_pool_layout()
        eng.generate_batch([Request(prompt, greedy, session_id="s")])  # a cached session
        weight_ids = {id(x) for x in jax.tree.leaves(eng.weights())}
        traces = eng.compilations
        del own
        # the pools as they are now (each program returns new ones, so look them up last)
        pool_ids = {id(eng._core.k_pool), id(eng._core.v_pool)}
        eng.release_memory()
        assert eng.memory_released and eng.stats()["sessions"] == 0
        assert eng.stats()["pages_used"] == 0
        live = jax.live_arrays()
        # (other engines of this test process may hold pools of the same shape: compare ids)
        assert not any(id(x) in pool_ids and x.shape == layout.shape for x in live), (
            "a K/V pool is still alive")
        assert not weight_ids & {id(x) for x in live}, "an engine-owned weight is still alive"
        with pytest.raises(RuntimeError, match="released for a training update"):
            eng.generate_batch([Request(prompt, greedy)])
        eng.update_params(state)  # the new weights (here: the same values) and fresh pools
        assert not eng.memory_released
        back = eng.kv_pool_layout()
        assert (back.shape, back.dtype) == (layout.shape, layout.dtype)
        assert back.sharding.is_equivalent_to(layout.sharding, len(layout.shape))
        after = eng.generate_batch([Request(prompt, greedy)])[0]
        assert after.token_ids == before.token_ids and after.logprobs == before.logprobs
        assert eng.compilations == traces  # the restored pools fit the compiled programs
        assert eng.stats()["memory_releases"] == 1
    finally:
        eng.close()


def test_release_refuses_while_requests_run_and_never_half_restores(engine, tiny_model):
    fut = engine.submit(Request([3, 4, 5], SamplingParams(temperature=0.0, max_new_tokens=120)))
    with pytest.raises(RuntimeError, match="still running or waiting"):
        engine.release_memory()
    fut.result(timeout=120)
    engine.release_memory()
    try:
        with pytest.raises(ValueError, match="tree differs"):
            engine.update_params({"not": jnp.zeros(3)})
        assert engine.memory_released  # a refused update leaves it released, not half-restored
    finally:
        engine.update_params(nnx.state(tiny_model))
    assert not engine.memory_released
