"""Token batch assembly from TokenViews: shift alignment, masks, advantages, padding, packing."""

import jax
import numpy as np
import pytest

from ppp_jax.envs.records import TokenView
from ppp_jax.rl.batch import TokenBatch, assemble_batch
from ppp_jax.rl.losses import aggregate
from ppp_jax.rl.train_step import policy_logprobs
from tests import numerics as nm
from tests.ppp_jax.rl_helpers import policy_bounds, random_views, tiny_split


def test_alignment_by_hand():
    # prompt 10 11 | agent 20 21 | tool 30 | agent 22   (mask 0 0 1 1 0 1)
    view = TokenView((10, 11, 20, 21, 30, 22), (0, 0, 1, 1, 0, 1), (0.0, 0.0, -0.5, -0.25, 0.0, -2.0), (2, 5))
    b = assemble_batch([view], [1.5], pad_to_multiple=8, rows_multiple=2)
    assert b.shape == (2, 8)
    np.testing.assert_array_equal(b.tokens[0, :5], [10, 11, 20, 21, 30])
    np.testing.assert_array_equal(b.targets[0, :5], [11, 20, 21, 30, 22])
    np.testing.assert_array_equal(b.loss_mask[0], [0, 1, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(b.sampler_logprobs[0, :5], [0.0, -0.5, -0.25, 0.0, -2.0])
    np.testing.assert_array_equal(b.advantages[0], [0, 1.5, 1.5, 0, 1.5, 0, 0, 0])
    np.testing.assert_array_equal(b.positions[0, :5], np.arange(5))
    np.testing.assert_array_equal(b.segment_ids[0], [1, 1, 1, 1, 1, 0, 0, 0])
    assert not b.segment_ids[1].any() and not b.loss_mask[1].any()  # padding row
    assert b.old_logprobs is None


def test_packing_layout_and_counts():
    views = random_views(10, seed=2)
    adv = np.arange(10, dtype=np.float64)
    pad = assemble_batch(views, adv, row_len=32)
    packed = assemble_batch(views, adv, row_len=32, pack=True)
    assert packed.shape[0] < pad.shape[0]
    assert packed.loss_mask.sum() == pad.loss_mask.sum()
    assert np.isclose(packed.advantages.sum(), pad.advantages.sum())
    for row in range(packed.shape[0]):
        seg = packed.segment_ids[row]
        for s in np.unique(seg[seg > 0]):
            np.testing.assert_array_equal(packed.positions[row][seg == s], np.arange((seg == s).sum()))
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        s1, d1 = aggregate(pad.advantages, pad.loss_mask, pad.segment_ids, mode, 32)
        s2, d2 = aggregate(packed.advantages, packed.loss_mask, packed.segment_ids, mode, 32)
        # the same non-negative float32 terms a_t·A_t (a_t = m/n: 2 roundings) in other rows and
        # order: two evaluations of one sum, Σ|x| = the sum itself (tests/numerics.py)
        tol = nm.f32_reorder_atol(float(s1), int(pad.loss_mask.sum()), 2)
        assert float(d1) == float(d2) and np.isclose(float(s1), float(s2), rtol=0, atol=tol)


def test_packed_logprobs_equal_padded_through_the_model():
    graphdef, params = tiny_split(0)
    views = random_views(6, seed=9)
    pad = assemble_batch(views, np.zeros(6), row_len=32)
    packed = assemble_batch(views, np.zeros(6), row_len=32, pack=True, rows_multiple=6)
    assert packed.shape == pad.shape and (packed.segment_ids.max(axis=1) > 1).any()  # one compile
    f = jax.jit(lambda p, b: policy_logprobs(graphdef, p, b, temperature=0.7, chunk_size=16)[0])
    lp_pad, lp_packed = np.asarray(f(params, pad)), np.asarray(f(params, packed))
    # packed rows run other shapes of attention: two float32 evaluations of the log-probs
    tol = policy_bounds(graphdef, params, pad, temperature=0.7).logp_atol
    assert np.all(np.isfinite(lp_pad)) and np.all(np.isfinite(lp_packed))  # padding rows too
    matched = 0
    for row in range(packed.shape[0]):
        seg = packed.segment_ids[row]
        for s in np.unique(seg[seg > 0]):
            sel = seg == s
            toks = packed.tokens[row][sel]
            # the padded row holding the same episode (random token ids: unique per episode)
            i = next(i for i in range(pad.shape[0]) if np.array_equal(pad.tokens[i][: sel.sum()], toks))
            m = packed.loss_mask[row][sel] > 0
            np.testing.assert_allclose(lp_packed[row][sel][m], lp_pad[i][: sel.sum()][m], rtol=0, atol=tol)
            matched += 1
    assert matched == 6


def test_errors():
    ok = TokenView((1, 2, 3), (0, 1, 1), (0.0, -1.0, -1.0))
    with pytest.raises(ValueError, match="first token"):
        assemble_batch([TokenView((1, 2), (1, 1), (0.0, 0.0))], [0.0])
    with pytest.raises(ValueError, match="row_len"):
        assemble_batch([ok], [0.0], row_len=1)
    with pytest.raises(ValueError, match="advantages"):
        assemble_batch([ok], [0.0, 1.0])


def test_is_a_pytree():
    b = assemble_batch(random_views(2), [0.1, 0.2], pad_to_multiple=8)
    leaves = jax.tree.leaves(b)
    assert len(leaves) == 7  # old_logprobs None is an empty subtree
    assert len(jax.tree.leaves(b.with_old_logprobs(b.sampler_logprobs))) == 8
    assert isinstance(jax.tree.map(lambda x: x, b), TokenBatch)

