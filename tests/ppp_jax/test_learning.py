"""GRPO learns a toy verifiable task on a tiny policy: copy the prompt's token.

Episode: prompt [1, p] with p ∈ {4, ..., 11}; the policy samples 4 tokens (temperature 1);
reward = fraction of those equal to p (so a uniform policy over V = 16 scores ~1/16). Each step:
16 prompts × G = 8 episodes → advantages (GRPO, ε = 1e-6) → token batch → one jitted train step
(token-mean, clip 0.2/0.28), repeated `epochs` times per batch with π_old fixed to the sampler's
log-probs, so the ratio and the clipping are live. Everything is seeded.
"""

import jax
import numpy as np
import pytest

from ppp_jax.rl.advantages import compute_advantages
from ppp_jax.rl.batch import assemble_batch
from ppp_jax.envs.records import TokenView
from ppp_jax.config.rl import AdvantageConfig, LossConfig, OptimConfig, RLConfig
from ppp_jax.rl.train_step import init_train_state, make_train_step
from ppp_jax.rl.optim import make_optimizer
from tests.ppp_jax.rl_helpers import make_sampler, policy_bounds, tiny_split

PROMPT, RESPONSE, G, PROMPTS_PER_STEP = 2, 4, 8, 16


def run_grpo(steps: int, seed: int = 0, lr: float = 1e-2, epochs: int = 1):
    graphdef, params = tiny_split(seed, vocab_size=16)
    cfg = RLConfig(
        advantage=AdvantageConfig(group_size=G),
        loss=LossConfig(agg_mode="token-mean"),
        optim=OptimConfig(learning_rate=lr, weight_decay=0.0, max_grad_norm=1.0),
        logprob_chunk_size=8,
    )
    optimizer = make_optimizer(cfg.optim)
    state = init_train_state(params, optimizer)
    step = make_train_step(graphdef, cfg, optimizer)
    sample = make_sampler(graphdef, PROMPT, RESPONSE)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    curve = []
    for _ in range(steps):
        targets = rng.integers(4, 12, size=PROMPTS_PER_STEP)
        prompts = np.repeat(np.stack([np.ones_like(targets), targets], 1), G, axis=0).astype(np.int32)
        key, sub = jax.random.split(key)
        tokens, logps = jax.device_get(sample(state.params, prompts, sub))
        response = tokens[:, PROMPT:]
        rewards = (response == prompts[:, 1:2]).mean(axis=1)
        curve.append(float(rewards.mean()))
        groups = np.repeat(np.arange(PROMPTS_PER_STEP), G)
        adv = compute_advantages(rewards, groups.tolist(), cfg.advantage)
        views = [
            TokenView(tuple(t.tolist()), (0,) * PROMPT + (1,) * RESPONSE, (0.0,) * PROMPT + tuple(lp.tolist()))
            for t, lp in zip(tokens, logps)
        ]
        batch = assemble_batch(views, adv, pad_to_multiple=8)
        if epochs > 1:  # several updates on one batch: π_old = the sampler's policy, fixed
            batch = batch.with_old_logprobs(batch.sampler_logprobs)
        # the sampler is the same model at the same temperature: its log-probs and the train
        # step's are two float32 evaluations (tests/numerics.py; measured before the update)
        tol = policy_bounds(graphdef, state.params, batch).logp_atol
        for epoch in range(epochs):
            state, metrics = step(state, batch)
            if epoch == 0:
                assert float(metrics["logp_abs_diff"]) < tol
    return curve


def _report(curve):
    start, end = float(np.mean(curve[:3])), float(np.mean(curve[-3:]))
    print(f"GRPO copy task: mean reward {start:.3f} (first 3 steps) -> {end:.3f} (last 3 steps)")
    print("curve:", " ".join(f"{r:.2f}" for r in curve))
    return start, end


def test_grpo_raises_reward_fast():
    """20 steps × 4 updates: the reward climbs from chance (~1/16) to mostly right."""
    start, end = _report(run_grpo(steps=20, epochs=4))
    assert start < 0.15
    assert end > 0.7 and end > start + 0.5


@pytest.mark.slow
def test_grpo_solves_copy_task():
    """30 steps × 4 updates: the policy copies the prompt token almost always."""
    start, end = _report(run_grpo(steps=30, epochs=4))
    assert start < 0.15
    assert end > 0.9
