"""`rl.mask_overlong` (the released profile): an episode cut off by the token budget keeps its
place in the batch and its group's advantages, but contributes exactly zero gradient."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from ppp_jax.config.rl import LossConfig, OptimConfig, RLConfig
from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.rl.batch import assemble_batch
from ppp_jax.rl.train_step import init_train_state, make_train_step
from ppp_jax.rollout.orchestrator import overlong_loss_weights
from tests.ppp_jax.rl_helpers import random_views, tiny_split


def test_only_token_limit_episodes_are_masked_and_only_when_on():
    recs = [EpisodeRecord("t", "d", "no_preference", "vague", finish_reason=r)
            for r in ("finish", "token_limit", "turn_limit", "error")]
    np.testing.assert_array_equal(overlong_loss_weights(recs, True), [1, 0, 1, 1])
    np.testing.assert_array_equal(overlong_loss_weights(recs, False), [1, 1, 1, 1])


def test_masked_episode_keeps_its_tokens_but_no_loss_mask():
    views = random_views(3, seed=2)
    full = assemble_batch(views, [0.5, -1.0, 2.0], pad_to_multiple=8)
    masked = assemble_batch(views, [0.5, -1.0, 2.0], pad_to_multiple=8, loss_weights=[1, 0, 1])
    np.testing.assert_array_equal(full.tokens, masked.tokens)
    assert full.loss_mask[1].sum() > 0
    assert masked.loss_mask[1].sum() == 0 and masked.advantages[1].sum() == 0
    assert masked.sampler_logprobs[1].sum() == 0
    np.testing.assert_array_equal(full.loss_mask[[0, 2]], masked.loss_mask[[0, 2]])
    with pytest.raises(ValueError, match="loss_weights"):
        assemble_batch(views, [0.0] * 3, loss_weights=[1, 0.5, 1])


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean"])
def test_overlong_episode_contributes_exactly_zero_gradient(agg_mode):
    """SGD with lr 1: the update is -grad. A batch whose 4th episode is masked gives exactly the
    update of the batch without it (same rows: the 4th row then is padding); unmasked, the 4th
    episode changes the update (the check can fail)."""
    graphdef, params = tiny_split(0)
    views = random_views(4, seed=5)
    adv = np.array([0.7, -0.4, 1.1, -1.3])
    opt = optax.sgd(1.0)
    cfg = RLConfig(loss=LossConfig(agg_mode=agg_mode),
                   optim=OptimConfig(learning_rate=1.0, weight_decay=0.0, max_grad_norm=None),
                   logprob_chunk_size=8)
    step = make_train_step(graphdef, cfg, opt, donate=False)
    layout = dict(row_len=32, rows_multiple=4)
    masked = assemble_batch(views, adv, loss_weights=[1, 1, 1, 0], **layout)
    without = assemble_batch(views[:3], adv[:3], **layout)
    unmasked = assemble_batch(views, adv, **layout)

    def delta(batch):
        state, m = step(init_train_state(params, opt), batch)
        assert float(m["skipped"]) == 0.0
        return [np.asarray(a) - np.asarray(p)
                for a, p in zip(jax.tree.leaves(state.params), jax.tree.leaves(params))]

    d_masked, d_without, d_unmasked = delta(masked), delta(without), delta(unmasked)
    for a, b in zip(d_masked, d_without):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - c).max()) for a, c in zip(d_masked, d_unmasked)) > 1e-6
