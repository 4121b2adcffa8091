"""The PPP step cost model (`ppp_jax.scale.estimate`): parameter count, each phase's bound
recomputed by hand for the 36B Func-Loc deployment, and how the phases scale."""

import dataclasses

import pytest

from ppp_jax.model.config import seed_oss_36b
from ppp_jax.scale.chips import CHIPS
from ppp_jax.scale.estimate import (Deployment, StepAssumptions, estimate_step, estimate_table,
                                    kv_bytes_per_token, num_params)

CFG = seed_oss_36b()
V5P_128 = Deployment(CHIPS["v5p"], chips=64, replica_chips=4, num_slots=8)
A = StepAssumptions()


def test_parameter_count_is_the_published_one():
    assert num_params(CFG) == 36_151_104_512  # Seed-OSS-36B's model card
    assert kv_bytes_per_token(CFG, 2) == 64 * 2 * 8 * 128 * 2


def test_decode_phase_by_hand():
    est = estimate_step(CFG, V5P_128, episodes=512, a=A)
    decode = est.phases[0]
    # 512 episodes over 16 replicas = 32 each = 4 waves of 8 slots; a wave is one episode's
    # 12 x 400 generated tokens; each step reads 72.3 GB of weights + 8 slots x 9000 tokens of
    # K/V (mean context 3000 + 12 x 1000 / 2) over 4 chips at 70% of 2765 GB/s.
    step_bytes = (36_151_104_512 * 2 + 8 * 9000 * 262_144) / 4
    expected = 4 * 12 * 400 * step_bytes / (2765e9 * 0.7)
    assert decode.seconds == pytest.approx(expected, rel=1e-12)
    assert "4 waves of 8 slots" in decode.bound


def test_updates_and_pi_old_scale_with_mini_batches_and_epochs():
    one = estimate_step(CFG, V5P_128, episodes=512, a=A)
    four = estimate_step(CFG, V5P_128, episodes=512, ppo_mini_batches=4, a=A)
    two_epochs = estimate_step(CFG, V5P_128, episodes=512, ppo_mini_batches=4, ppo_epochs=2, a=A)
    by = lambda e: {p.name.split(" (")[0]: p.seconds for p in e.phases}  # noqa: E731
    assert "pi_old pass" not in by(one)  # one on-policy update: no π_old pass
    # mini-batches split the same tokens: same update FLOPs; π_old is one forward (a third)
    assert by(four)["updates"] == pytest.approx(by(one)["updates"])
    assert by(four)["pi_old pass"] == pytest.approx(by(one)["updates"] / 3)
    assert by(two_epochs)["updates"] == pytest.approx(2 * by(one)["updates"])
    assert four.updates == 4 and two_epochs.updates == 8


def test_scaling_and_chip_hours():
    base = estimate_step(CFG, V5P_128, episodes=512, a=A)
    double = estimate_step(CFG, dataclasses.replace(V5P_128, chips=128), episodes=512, a=A)
    # twice the replicas: half the waves; twice the chips: half the FLOP-bound phases
    assert double.phases[0].seconds == pytest.approx(base.phases[0].seconds / 2)
    assert double.phases[1].seconds == pytest.approx(base.phases[1].seconds / 2)
    assert base.chip_hours(200) == pytest.approx(base.seconds * 200 * 64 / 3600)
    # more slots per replica: fewer waves, each step reading more K/V; decode gets shorter
    more_slots = estimate_step(CFG, dataclasses.replace(V5P_128, num_slots=32), episodes=512, a=A)
    assert more_slots.phases[0].seconds < base.phases[0].seconds
    table = estimate_table(base, 200, A)
    assert f"dominant: {base.dominant.name}" in table and "chip-hours" in table


def test_ppp_compile_estimate_reads_the_config(capsys):
    """`ppp compile CONFIG --estimate`: the config's episodes, engine replicas and slots, no
    compilation (no libtpu needed)."""
    from ppp_jax import cli

    assert cli.main(["compile", "configs/seed_oss_36b_funcloc.yaml", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "512 episodes on 64 v5p chips (16 replicas x 4 chips, 8 slots each)" in out
    assert "200 steps:" in out and "chip-hours" in out
    assert cli.main(["compile", "configs/seed_oss_36b_funcloc.yaml", "--estimate",
                     "--episodes", "256", "rl.ppo_mini_batches=4"]) == 0
    out = capsys.readouterr().out
    assert "256 episodes" in out and "4 update(s)" in out and "pi_old pass" in out
