"""DAPO dynamic sampling (real resampling loop, cap, error) and token-counted overlong shaping."""

import numpy as np
import pytest

from ppp_jax.rl.dapo import (DynamicSamplingError, dynamic_sample, filter_groups, keep_group,
                             overlong_penalty, policy_token_count, shape_rewards)
from ppp_jax.config.rl import DapoConfig


def ref_overlong(length, max_len, buf, factor):
    """verl DAPO reward manager: expected = max - buf; exceed = len - expected; min(-exceed/buf*f, 0)."""
    expected = max_len - buf
    return min(-(length - expected) / buf * factor, 0.0)


def test_overlong_penalty_matches_reference_in_tokens():
    for length in [0, 100, 4096, 4097, 6000, 8191, 8192]:
        got = overlong_penalty(length, max_response_len=8192, buffer_len=4096, factor=1.0)
        assert got == pytest.approx(ref_overlong(length, 8192, 4096, 1.0))
    assert overlong_penalty(8192, max_response_len=8192, buffer_len=4096, factor=0.5) == pytest.approx(-0.5)
    arr = overlong_penalty(np.array([10, 7000]), max_response_len=8192, buffer_len=4096)
    np.testing.assert_allclose(arr, [0.0, ref_overlong(7000, 8192, 4096, 1.0)])


def test_shape_rewards_counts_policy_tokens_not_characters():
    # Two episodes with the same text length but different token counts get different penalties;
    # the penalty depends only on the number of policy tokens (sum of the loss mask).
    mask_short = [0] * 50 + [1] * 10 + [0] * 5
    mask_long = [0] * 5 + [1] * 90
    lengths = [policy_token_count(mask_short), policy_token_count(mask_long)]
    assert lengths == [10, 90]
    cfg = DapoConfig(overlong_buffer_len=40, max_response_len=100, overlong_penalty_factor=1.0)
    shaped = shape_rewards([1.0, 1.0], lengths, cfg)
    np.testing.assert_allclose(shaped, [1.0, 1.0 + ref_overlong(90, 100, 40, 1.0)])
    np.testing.assert_allclose(shape_rewards([0.5], [99], DapoConfig()), [0.5])  # off by default


def test_keep_group():
    assert keep_group([0.3] * 8) is False  # float std of this is ~1e-17, spread is exactly 0
    assert keep_group([0.0, 0.0, 1.0]) is True
    assert keep_group([0.7]) is True  # singleton kept, as verl
    kept, dropped = filter_groups([[1, 1], [0, 1], [2]], lambda g: g)
    assert kept == [[0, 1], [2]] and dropped == [[1, 1]]


def test_dynamic_sample_keeps_sampling_until_full():
    rng = np.random.default_rng(0)
    calls = []

    def sample_more(round_index):
        calls.append(round_index)
        # 6 groups per round, about half all-equal
        return [("r%d g%d" % (round_index, j), list(rng.integers(0, 2, size=4) * (j % 2)))
                for j in range(6)]

    res = dynamic_sample(sample_more, lambda g: g[1], target_groups=7, max_gen_batches=0)
    assert len(res.groups) == 7
    assert all(max(g[1]) > min(g[1]) for g in res.groups)
    assert calls == list(range(res.num_gen_batches)) and res.num_gen_batches >= 3
    assert res.num_generated == 6 * res.num_gen_batches
    assert res.num_generated - res.num_dropped - res.num_surplus == 7
    assert 0 < res.metrics["dapo/dropped_frac"] < 1


def test_dynamic_sample_cap_raises_clear_error():
    with pytest.raises(DynamicSamplingError, match=r"kept 0/2 groups after 3 generation rounds"):
        dynamic_sample(lambda i: [[1.0, 1.0]], lambda g: g, target_groups=2, max_gen_batches=3)
    with pytest.raises(ValueError, match="no groups"):
        dynamic_sample(lambda i: [], lambda g: g, target_groups=1)
