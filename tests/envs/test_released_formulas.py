"""Reward and metrics under the released code's formulas (`envs/userville.py` UserReward) and the
paper's, on hand-built records, against hand computations written beside each case."""

import pytest

from ppp_jax.envs.records import EpisodeRecord, Question
from ppp_jax.envs.reward import RewardConfig, reward_breakdown
from ppp_jax.envs.scoring import episode_scores, released_cost_reward

PAPER, RELEASED = RewardConfig(), RewardConfig(variant="released")
SWE_EFFORT = {1: "low", 2: "high", 3: "medium", 4: "high", 5: "high"}
SEARCH_EFFORT = {1: "low", 2: "medium", 3: "high"}


def Q(level, family="swe", followed=True):
    if level is None:  # past the cap: the released code's untagged refusal
        return Question("q?", "refused", "medium", None, 0, answered=False, level=None)
    eff = (SWE_EFFORT if family == "swe" else SEARCH_EFFORT)[level]
    return Question("q?", "a", eff, followed, 0, True, level)


def rec(levels=(), family="swe", kind="vague", score=0.5, pref="concise_question"):
    return EpisodeRecord("t", "swe_func_loc" if family == "swe" else "browsecomp_plus", pref, kind,
                         questions=tuple(Q(lv, family) for lv in levels), task_score=score,
                         task_family=family)


def total(r, cfg):
    return round(reward_breakdown(r, cfg).total, 6)


def proact(r, rule):
    return episode_scores(r, proactivity_rule=rule, personalization_rule=rule).proactivity


# (levels, family, kind, score, released cost, released total, paper total,
#  released proactivity metric, paper proactivity metric); concise_question, every question
#  followed: released R_pers = +0.05 on vague prompts with a question, paper likewise.
CASES = [
    # SWE vague, all level 1: -0.1*(2-2) + 0.05 = 0.05; total 0.5+0.05+0.05
    ((1, 1), "swe", "vague", 0.5, 0.05, 0.6, 0.6, 1.0, 1.0),
    # SWE vague, a hint (level 2) answer: -0.1*(3-2) = -0.1, no bonus (not all level 1);
    # paper: hint = high effort, -0.5
    ((1, 2), "swe", "vague", 0.5, -0.1, 0.45, 0.05, 0.0, 0.0),
    # SWE vague, an "I don't know" (level 3): -0.1*(3-1) = -0.2; paper medium -0.1
    ((3,), "swe", "vague", 0.5, -0.2, 0.35, 0.45, 0.0, 0.0),
    # SWE vague, the 5th question refused (untagged): q=5, Lsum=4, -0.1*(4-5) = +0.1 and no
    # bonus (Lsum != q); paper: the refusal is medium, -0.1
    ((1, 1, 1, 1, None), "swe", "vague", 0.5, 0.1, 0.65, 0.45, 1.0, 0.0),
    # SWE vague, no question, wrong answer: -0.1; paper: no cost, but session effort high
    ((), "swe", "vague", 0.5, -0.1, 0.4, 0.5, 0.0, 0.0),
    # SWE vague, no question, right answer: 0 and proactive under both
    ((), "swe", "vague", 1.0, 0.0, 1.0, 1.0, 1.0, 1.0),
    # SWE precise, one level-1 question: -0.2*1; paper: unnecessary = medium, -0.1; no bonuses
    ((1,), "swe", "precise", 0.5, -0.2, 0.3, 0.4, 0.0, 1.0),
    # SWE precise, a file path (level 4): -0.2*4 = -0.8; paper high -0.5
    ((4,), "swe", "precise", 0.9, -0.8, 0.1, 0.4, 0.0, 0.0),
    # search vague, levels 1 and 2: -0.05 + 0.05 (any level 1) = 0: the level-1 answer offsets
    # the level-2 one, so the released metric counts it proactive; paper: medium, -0.1
    ((1, 2), "search", "vague", 0.5, 0.0, 0.55, 0.45, 1.0, 0.0),
    # search vague, a gold-document answer (level 3): -0.9; paper high -0.5
    ((3,), "search", "vague", 0.5, -0.9, 0.0, 0.05, 0.0, 0.0),
    # search precise, levels 1 and 2: -0.05 - 0.1*(1+2) = -0.35; paper: -0.1 - 0.1
    ((1, 2), "search", "precise", 0.5, -0.35, 0.15, 0.3, 0.0, 0.0),
    # search vague, no question, wrong: -0.1
    ((), "search", "vague", 0.0, -0.1, 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("levels,family,kind,score,cost,r_total,p_total,r_pro,p_pro", CASES)
def test_released_and_paper_values(levels, family, kind, score, cost, r_total, p_total, r_pro,
                                   p_pro):
    r = rec(levels, family, kind, score)
    assert released_cost_reward(r, family, score) == pytest.approx(cost)
    assert reward_breakdown(r, RELEASED).proactivity == pytest.approx(cost)
    assert total(r, RELEASED) == pytest.approx(r_total)
    assert total(r, PAPER) == pytest.approx(p_total)
    assert proact(r, "released") == r_pro
    assert proact(r, "paper") == p_pro


def test_released_personalization_counts_a_penalty_without_a_question():
    # answer_more with no question: penalty min(0 - 3, 0) = -3. Released: a failure (0.0);
    # paper: undefined (no question asked).
    r = rec((), pref="answer_more", score=1.0)
    assert episode_scores(r, personalization_rule="released").personalization == 0.0
    assert episode_scores(r, personalization_rule="paper").personalization is None
    # no_ask with no question: penalty 0 -> undefined under both (nothing asked, nothing owed)
    r = rec((), pref="no_ask", score=1.0)
    assert episode_scores(r, personalization_rule="released").personalization is None


def test_unknown_proactivity_rule_is_refused():
    with pytest.raises(ValueError, match="proactivity_rule"):
        episode_scores(rec((1,)), proactivity_rule="verl")
