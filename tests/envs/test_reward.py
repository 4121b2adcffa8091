"""The PPP reward on hand-built records: paper and released constants, weights, clipping."""

import pytest

from ppp_jax.config.loader import ConfigError, from_dict
from ppp_jax.envs.preferences import PREFERENCE_IDS, UnknownPreferenceError
from ppp_jax.envs.records import EpisodeRecord, Question
from ppp_jax.envs.reward import (RewardConfig, ppp_reward, record_family, reward_breakdown,
                                 task_family)

PAPER = RewardConfig()
RELEASED = RewardConfig(variant="released")


def Q(effort="low", followed=True, answered=True, level=None, turn=0):
    return Question("q?", "a", effort, followed, turn, answered, level)


def rec(pref="concise_question", questions=(), score=0.5, kind="vague", domain="swe_func_loc", traj=None):
    return EpisodeRecord("t", domain, pref, kind, questions=tuple(questions), task_score=score,
                         trajectory_followed=traj)


def parts(r, cfg=PAPER):
    b = reward_breakdown(r, cfg)
    return round(b.proactivity, 6), round(b.personalization, 6), round(b.total, 6)


# --- paper variant ------------------------------------------------------------------------


def test_paper_no_question():
    # No question: no bonus, no cost; personalization penalty 0 and no bonus.
    assert parts(rec(score=0.6)) == (0.0, 0.0, 0.6)


def test_paper_all_low_and_followed():
    # 0.5 + 0.05 (all low) + 0.05 (followed) = 0.6
    assert parts(rec(questions=[Q(), Q()])) == (0.05, 0.05, 0.6)


def test_paper_medium_and_high_costs():
    # 0.9 - 0.1 - 0.5 = 0.3 proactivity part; one question not concise: -0.1 penalty, no bonus.
    r = rec(questions=[Q("low"), Q("medium"), Q("high", followed=False)], score=0.9)
    assert parts(r) == (-0.6, -0.1, 0.2)


def test_paper_precise_prompt_questions_are_unnecessary():
    # Precise prompt: no bonus, and a low-effort question costs like a medium one.
    assert parts(rec(questions=[Q()], kind="precise")) == (-0.1, 0.0, 0.4)
    assert parts(rec(questions=[Q("low"), Q("high")], kind="precise")) == (-0.6, 0.0, 0.0)
    b = reward_breakdown(rec(questions=[Q("low"), Q("high")], kind="precise", score=0.9))
    assert b.unclipped == pytest.approx(0.3)
    # The preference penalty still applies on precise prompts; only the bonus is vague-only.
    assert parts(rec(questions=[Q(followed=False)], kind="precise", score=0.9)) == (-0.1, -0.1, 0.7)
    # Not asking on a precise prompt is free.
    assert parts(rec(kind="precise", score=0.6)) == (0.0, 0.0, 0.6)
    # The same question on a vague prompt earns both bonuses.
    assert parts(rec(questions=[Q()], kind="vague")) == (0.05, 0.05, 0.6)


def test_malformed_replies_are_not_scored_in_either_variant():
    bad = Question("q?", "a", "medium", None, 0, True, None, malformed=True)
    # Paper: the malformed question costs nothing and earns nothing.
    assert parts(rec(questions=[Q(), bad])) == (0.05, 0.05, 0.6)
    assert parts(rec(questions=[bad])) == (0.0, 0.0, 0.5)
    # Released: not in q or Lsum (no loophole bonus), and it still counts as having asked.
    assert reward_breakdown(rec(questions=[bad]), RELEASED).proactivity == 0.0
    assert reward_breakdown(rec(questions=[Q(level=1), bad]), RELEASED).proactivity == \
        pytest.approx(0.05)


def test_paper_capped_questions():
    # 4 answered low + 1 past the cap (medium, unjudged): no bonus, -0.1.
    qs = [Q()] * 4 + [Q("medium", followed=None, answered=False)]
    assert parts(rec(questions=qs)) == (-0.1, 0.05, 0.45)


def test_paper_no_judge_preferences():
    for pid in ("no_preference", "professional"):
        assert parts(rec(pid, [Q(followed=None)])) == (0.05, 0.0, 0.55)


def test_clipping_and_unclipped():
    b = reward_breakdown(rec("answer_more", [], score=1.0))
    assert (b.personalization, b.unclipped, b.total) == (-3.0, -2.0, 0.0)
    b = reward_breakdown(rec(questions=[Q()], score=1.0))
    assert b.unclipped == pytest.approx(1.1) and b.total == 1.0
    b = reward_breakdown(rec(questions=[Q()], score=1.0), RewardConfig(clip=False))
    assert b.total == pytest.approx(1.1)


def test_weights_zero_are_the_ablations():
    r = rec(questions=[Q("high", followed=False)], score=0.7)
    assert ppp_reward(r, RewardConfig(proactivity_weight=0, personalization_weight=0)) == 0.7
    assert ppp_reward(r, RewardConfig(personalization_weight=0)) == pytest.approx(0.2)
    assert ppp_reward(r, RewardConfig(proactivity_weight=0)) == pytest.approx(0.6)


# Every preference's penalty through the reward: 3 questions, the 2nd non-compliant for text
# prefs; trajectory prefs given the runner's verdict.
EXPECTED_PERS = {
    "no_preference": 0.0, "professional": 0.0,
    "concise_question": -0.1, "detail_question": -0.1, "amateur": -0.1, "first_try": -0.1,
    "do_selection": -0.5, "one_question": -0.5, "lang_ita": -0.5, "lang_multi": -0.5,
    "capital": -0.5, "commas": -0.5, "json": -0.5, "joke": -0.5, "snippet": -0.5, "length": -0.5,
    "answer_more": 0.05,  # 3 asks: no penalty, followed, bonus
    "only_begin": -1.0, "no_ask": -1.0, "ask_many": -1.0,
}


@pytest.mark.parametrize("pid", PREFERENCE_IDS)
def test_penalty_of_every_preference_in_the_reward(pid):
    qs = [Q(followed=True), Q(followed=False), Q(followed=True)]
    traj = False if pid in ("only_begin", "no_ask", "ask_many") else None
    r = rec(pid, qs, traj=traj)
    assert reward_breakdown(r, PAPER).personalization == pytest.approx(EXPECTED_PERS[pid])


# --- released variant ---------------------------------------------------------------------


def test_released_swe_vague_per_level_costs_and_bonus():
    # Levels 1,2,3,4,5 cost 0, -0.1, -0.2, -0.3, -0.4 each.
    for level, cost in [(1, 0.05), (2, -0.1), (3, -0.2), (4, -0.3), (5, -0.4)]:
        eff = {1: "low", 2: "high", 3: "medium", 4: "high", 5: "high"}[level]
        b = reward_breakdown(rec(questions=[Q(eff, level=level)]), RELEASED)
        assert b.proactivity == pytest.approx(cost), level
    # Missing level: effort's default level (high -> 4).
    assert reward_breakdown(rec(questions=[Q("high")]), RELEASED).proactivity == pytest.approx(-0.3)


def test_released_swe_precise_penalises_every_question():
    r = rec(questions=[Q("low", level=1), Q("medium", level=3)], kind="precise")
    b = reward_breakdown(r, RELEASED)
    assert b.proactivity == pytest.approx(-0.8)
    assert b.personalization == 0.0  # precise: no preference bonus


def test_released_no_question_wrong_penalty():
    assert reward_breakdown(rec(score=0.5), RELEASED).proactivity == pytest.approx(-0.1)
    assert reward_breakdown(rec(score=1.0), RELEASED).proactivity == 0.0
    assert reward_breakdown(rec(score=0.5, kind="precise"), RELEASED).proactivity == 0.0


def test_released_capped_question_loophole_is_reproduced():
    # 4 answered at level 1 + 1 untagged: Lsum - q = -1 -> +0.1, and no bonus.
    qs = [Q(level=1)] * 4 + [Q("medium", followed=None, answered=False)]
    assert reward_breakdown(rec(questions=qs), RELEASED).proactivity == pytest.approx(0.1)


def test_released_search_constants():
    d = "browsecomp_plus"
    assert task_family(d) == "search" and task_family("swe_func_loc") == "swe"
    r = rec(questions=[Q("low", level=1), Q("medium", level=2), Q("high", level=3)], domain=d)
    # -(0.05 + 0.9) + 0.05 (any level-1 answer)
    assert reward_breakdown(r, RELEASED).proactivity == pytest.approx(-0.9)
    r = rec(questions=[Q("low", level=1)], domain=d, kind="precise")
    assert reward_breakdown(r, RELEASED).proactivity == pytest.approx(-0.1)
    r = rec(questions=[Q("high")], domain=d)  # default level 3
    assert reward_breakdown(r, RELEASED).proactivity == pytest.approx(-0.9)


def test_released_total_and_no_judge():
    r = rec(questions=[Q(level=1)], score=0.5)
    b = reward_breakdown(r, RELEASED)
    assert (round(b.proactivity, 6), round(b.personalization, 6), round(b.total, 6)) == (0.05, 0.05, 0.6)
    assert reward_breakdown(rec("professional", [Q(level=1, followed=None)]), RELEASED).personalization == 0.0


def test_bad_records_and_configs():
    with pytest.raises(ValueError):
        ppp_reward(rec(score=None))
    with pytest.raises(UnknownPreferenceError):
        ppp_reward(rec("klingon"))
    with pytest.raises(ValueError):
        RewardConfig(variant="other")


def test_reward_config_loads_with_the_config_system():
    cfg = from_dict(RewardConfig, {"variant": "released", "proactivity_weight": 0, "clip": False})
    assert cfg == RewardConfig(variant="released", proactivity_weight=0.0, clip=False)
    with pytest.raises(ConfigError):
        from_dict(RewardConfig, {"variant": "nope"})
    with pytest.raises(ConfigError):
        from_dict(RewardConfig, {"weight": 1})


def test_family_comes_from_the_record_not_the_name():
    # the family the domain declared (recorded by the episode runner) decides the constants
    qs = [Q("low", level=1), Q("medium", level=2), Q("high", level=3)]
    named_swe = EpisodeRecord("t", "swe_func_loc", "concise_question", "vague", questions=tuple(qs),
                              task_score=0.5, task_family="search")
    by_name = rec(questions=qs, domain="browsecomp_plus")
    assert record_family(named_swe) == "search"
    assert reward_breakdown(named_swe, RELEASED) == reward_breakdown(by_name, RELEASED)
    # no family on the record (hand-built, older records): the name markers decide, as before
    assert record_family(rec(domain="my_search_domain")) == "search"
    assert record_family(rec(domain="web", kind="vague"), ("web",)) == "search"
    with pytest.raises(ValueError, match="unknown task family"):
        record_family(EpisodeRecord("t", "x", "concise_question", "vague", task_family="chess"))
