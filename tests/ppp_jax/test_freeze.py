"""Training only the top of a model (`rl.freeze`): the frozen parameters do not move, the
trained ones get exactly the gradient of full training, and no backward work is done below."""

import dataclasses

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.config.rl import FreezeConfig, LossConfig, OptimConfig, RLConfig
from ppp_jax.rl.batch import assemble_batch
from ppp_jax.rl.train_step import init_train_state, make_train_step, policy_logprobs
from tests.ppp_jax.rl_helpers import random_views, tiny_split

LAYERS = 4


def _setup(freeze: FreezeConfig, weight_decay: float = 0.1):
    graphdef, params = tiny_split(0, num_layers=LAYERS, tie_word_embeddings=False)
    views = random_views(8, seed=3)
    batch = assemble_batch(views, np.random.default_rng(4).normal(size=8), pad_to_multiple=8)
    cfg = RLConfig(loss=LossConfig(), logprob_chunk_size=8, freeze=freeze,
                   optim=OptimConfig(learning_rate=1e-2, weight_decay=weight_decay))
    step = make_train_step(graphdef, cfg, donate=False)
    return graphdef, params, batch, cfg, step


def _leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_frozen_layers_and_embeddings_do_not_move():
    freeze = FreezeConfig(bottom_layers=3, embeddings=True)
    _, params, batch, cfg, step = _setup(freeze)
    from ppp_jax.rl.optim import make_optimizer

    before = _leaves(params)
    state = init_train_state(params, make_optimizer(cfg.optim))
    for _ in range(2):
        state, metrics = step(state, batch)
    assert float(metrics["grad_norm"]) > 0
    after = _leaves(state.params)
    for name, old in before.items():
        new = after[name]
        if "'embed'" in name or "'lm_head'" in name:
            np.testing.assert_array_equal(new, old, err_msg=name)  # weight decay included
        elif "'layers'" in name:
            np.testing.assert_array_equal(new[:3], old[:3], err_msg=name)
            assert not np.array_equal(new[3:], old[3:]), f"{name}: the top layer did not move"
        else:  # final norm
            assert not np.array_equal(new, old), name


def test_trained_part_gets_the_full_training_gradient():
    """The gradient of the top layers with K frozen equals, slice for slice, the gradient of full
    training (freezing cuts work below, not the signal above), to float32 rounding: within
    1e-5 of each leaf's largest entry (two programs, two summation orders)."""
    graphdef, params, batch, _, _ = _setup(FreezeConfig())

    def loss(p, k):
        logp, _ = policy_logprobs(graphdef, p, batch, temperature=1.0, chunk_size=8, frozen_layers=k)
        return -jnp.sum(logp * batch.loss_mask * batch.advantages)

    full = _leaves(jax.grad(loss)(params, 0))
    part = _leaves(jax.grad(loss)(params, 2))
    for name, g in full.items():
        if "'layers'" in name:
            np.testing.assert_allclose(part[name][2:], g[2:], rtol=0,
                                       atol=1e-5 * np.abs(g).max(), err_msg=name)
            assert not np.any(part[name][:2]), name
        elif "'embed'" in name:
            assert not np.any(part[name]), name  # untied: only the residual stream reaches it
        else:
            np.testing.assert_allclose(part[name], g, rtol=0, atol=1e-5 * np.abs(g).max(),
                                       err_msg=name)
    # same forward values
    v0, v2 = loss(params, 0), loss(params, 2)
    assert float(v0) == pytest.approx(float(v2), rel=1e-6)


def test_backward_work_stops_at_the_frozen_layers():
    """In the gradient program the layer scans are one forward scan over the K frozen layers
    and a forward and a backward scan over the L - K others: nothing runs backward over the
    frozen ones (full training: a forward and a backward scan over all L)."""
    graphdef, params, batch, _, _ = _setup(FreezeConfig())

    def scan_lengths(k):
        def loss(p):
            # one vocabulary chunk, so the only scans of length >= 2 are over layers
            logp, _ = policy_logprobs(graphdef, p, batch, temperature=1.0, chunk_size=4096,
                                      frozen_layers=k)
            return -jnp.sum(logp * batch.loss_mask)

        lengths = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "scan" and eqn.params["length"] >= 2:
                    lengths.append(eqn.params["length"])
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
        return sorted(lengths)

    assert scan_lengths(0) == [LAYERS, LAYERS]
    assert scan_lengths(2) == [2, 2, 2]  # frozen forward; trained forward and backward


def test_freezing_every_layer_is_refused_naming_the_key():
    _, params, batch, cfg, step = _setup(FreezeConfig(bottom_layers=LAYERS))
    from ppp_jax.rl.optim import make_optimizer

    state = init_train_state(params, make_optimizer(cfg.optim))
    with pytest.raises(ValueError, match=r"rl\.freeze\.bottom_layers = 4 leaves nothing to train"):
        step(state, batch)


def test_freeze_config_is_typed_and_checked():
    from ppp_jax.config.loader import ConfigError, from_dict

    assert from_dict(RLConfig, {"freeze": {"bottom_layers": 2}}).freeze == FreezeConfig(2, False)
    with pytest.raises(ConfigError, match="bottom_layers"):
        from_dict(RLConfig, {"freeze": {"bottom_layers": -1}})
    with pytest.raises(ConfigError, match="embeddings"):
        from_dict(RLConfig, {"freeze": {"bottom_layer": 2}})
    assert not FreezeConfig().active and FreezeConfig(embeddings=True).active
    assert dataclasses.replace(FreezeConfig(), bottom_layers=1).active
