"""Scores of hand-built episode records: productivity, proactivity, personalization, aggregation."""

import dataclasses
import math

import pytest

from ppp_jax.envs.preferences import UnknownPreferenceError
from ppp_jax.envs.records import EpisodeRecord, Question, ToolCall
from ppp_jax.envs.scoring import aggregate, compliance, episode_scores, session_effort


def Q(effort="low", followed=True, turn=0, answered=True, level=None):
    return Question("q?", "a", effort, followed, turn, answered, level)


def rec(pref="concise_question", questions=(), score=0.5, kind="vague", tool_calls=(), traj=None, domain="swe_func_loc"):
    return EpisodeRecord("t1", domain, pref, kind, questions=tuple(questions), tool_calls=tuple(tool_calls),
                         task_score=score, trajectory_followed=traj)


def test_session_effort_and_proactivity():
    assert session_effort(rec(questions=[Q("low"), Q("high"), Q("medium")])) == "high"
    assert session_effort(rec(questions=[Q("low"), Q("medium")])) == "medium"
    assert episode_scores(rec(questions=[Q("low"), Q("low")])).proactivity == 1.0
    # No question: vague + wrong = high effort; vague + correct, or precise = low.
    assert session_effort(rec(score=0.5)) == "high"
    assert session_effort(rec(score=1.0)) == "low"
    assert session_effort(rec(score=0.0, kind="precise")) == "low"
    assert episode_scores(rec(score=0.5)).proactivity == 0.0


def test_personalization_definition():
    # Per-question preference: followed iff no question judged non-compliant.
    assert episode_scores(rec(questions=[Q(followed=True), Q(followed=True)])).personalization == 1.0
    assert episode_scores(rec(questions=[Q(followed=True), Q(followed=False)])).personalization == 0.0
    # No question: undefined ...
    assert episode_scores(rec()).personalization is None
    # ... also for answer_more under the paper rule (the default: only episodes with a question)
    assert episode_scores(rec("answer_more")).personalization is None
    assert aggregate([rec("answer_more"), rec("answer_more", [Q(), Q(), Q()], traj=True)]
                     ).personalization == 1.0
    # ... while the released code's rule counts a non-zero penalty without a question as a failure.
    assert episode_scores(rec("answer_more"), personalization_rule="released").personalization == 0.0
    assert episode_scores(rec("concise_question"),
                          personalization_rule="released").personalization is None
    s = aggregate([rec("answer_more"), rec("answer_more", [Q(), Q(), Q()], traj=True)],
                  personalization_rule="released")
    assert (s.personalization, s.n_personalization) == (0.5, 2)
    with pytest.raises(ValueError, match="personalization_rule"):
        episode_scores(rec(), personalization_rule="other")
    # No-judge preferences: always undefined.
    assert episode_scores(rec("professional", [Q(followed=None)])).personalization is None
    assert episode_scores(rec("no_preference", [Q(followed=None)])).personalization is None


def test_unjudged_and_unanswered_questions_are_counted_not_scored():
    r = rec(questions=[Q(followed=None), Q(followed=True), Q("medium", followed=None, answered=False)])
    c = compliance(r)
    assert (c.followed, c.num_unjudged, c.num_not_followed, c.penalty) == (True, 1, 0, 0.0)
    s = episode_scores(r)
    assert s.num_unanswered == 1 and s.effort_counts == {"low": 2, "medium": 1, "high": 0}


def test_malformed_replies_are_excluded_from_effort_and_compliance():
    bad = Question("q?", "a", "medium", None, 0, True, None, malformed=True)
    r = rec(questions=[Q("low", followed=True), bad])
    assert session_effort(r) == "low" and episode_scores(r).proactivity == 1.0
    s = episode_scores(r)
    assert s.effort_counts == {"low": 1, "medium": 0, "high": 0} and s.num_malformed == 1
    assert s.num_questions == 2 and s.asked
    c = compliance(r)
    assert (c.followed, c.num_unjudged, c.num_not_followed) == (True, 0, 0)
    # A malformed reply's fallback verdict never counts as a violation either.
    r = rec(questions=[dataclasses.replace(bad, followed=False)])
    assert compliance(r).num_not_followed == 0
    # Only malformed questions: the agent asked (no no-ask penalty effort), nothing to judge.
    s = episode_scores(rec(questions=[bad], score=0.0))
    assert s.session_effort == "low" and s.personalization is None
    assert aggregate([rec(questions=[bad]), r]).num_malformed == 2


def test_trajectory_preferences_use_runner_verdict_or_tool_calls():
    ask0, ask2 = ToolCall("ask_user", {"query": "x"}, 0), ToolCall("ask_user", {"query": "y"}, 2)
    work1 = ToolCall("execute_bash", {"command": "ls"}, 1)
    qs = [Q(followed=None, turn=0), Q(followed=None, turn=2)]
    # only_begin: computed from the tool calls when the runner left it unset.
    c = compliance(rec("only_begin", qs, tool_calls=[ask0, work1, ask2]))
    assert (c.followed, c.penalty, c.source) == (False, -1.0, "trajectory")
    # The runner's verdict wins.
    assert compliance(rec("only_begin", qs, tool_calls=[ask0, work1, ask2], traj=True)).penalty == 0.0
    # Without tool calls, the questions' turns stand in for them.
    assert compliance(rec("only_begin", qs)).followed is False
    assert compliance(rec("ask_many", qs)).penalty == -1.0
    assert compliance(rec("no_ask", [])).followed is True
    assert compliance(rec("answer_more", qs)).penalty == -1.0


def test_first_try_rule_and_llm_verdicts():
    ask = lambda t: ToolCall("ask_user", {"query": "x"}, t)  # noqa: E731
    work = ToolCall("execute_bash", {"command": "ls"}, 1)
    qs = [Q(followed=None, turn=0), Q(followed=None, turn=2)]
    c = compliance(rec("first_try", qs, tool_calls=[ask(0), work, ask(2)]))
    assert (c.followed, c.num_not_followed, c.source) == (False, 1, "trajectory")
    assert c.penalty == pytest.approx(-0.1)
    assert compliance(rec("first_try", qs, tool_calls=[work, ask(2)])).penalty == 0.0
    # LLM per-question verdicts, when present, are used instead.
    c = compliance(rec("first_try", [Q(followed=False), Q(followed=False)], tool_calls=[work]))
    assert (c.source, c.num_not_followed) == ("question", 2) and c.penalty == pytest.approx(-0.2)


def test_aggregate():
    records = [
        rec(questions=[Q("low", True)], score=1.0),  # proactive, personalized
        rec(questions=[Q("high", False)], score=0.5),  # not proactive, not personalized
        rec(score=0.0),  # no question, vague, wrong: high effort; personalization undefined
        rec("professional", [Q("low", None)], score=0.5),  # no judge: excluded
        rec("answer_more", score=1.0),  # no question: paper rule excludes it (released: 0)
    ]
    s = aggregate(records)
    assert s.n == 5
    assert s.productivity == pytest.approx((1 + 0.5 + 0 + 0.5 + 1) / 5)
    assert s.proactivity == pytest.approx(3 / 5)  # episodes 1, 4, 5
    assert s.n_personalization == 2 and s.personalization == pytest.approx(1 / 2)
    s = aggregate(records, personalization_rule="released")
    assert s.n_personalization == 3 and s.personalization == pytest.approx(1 / 3)
    assert s.ask_ratio == pytest.approx(3 / 5)
    assert s.effort_counts == {"low": 2, "medium": 0, "high": 1}
    assert s.questions_per_episode == pytest.approx(3 / 5)
    empty = aggregate([])
    assert empty.n == 0 and math.isnan(empty.productivity)


def test_bad_records_raise():
    with pytest.raises(ValueError, match="task_score"):
        episode_scores(rec(score=None))
    with pytest.raises(ValueError, match="outside"):
        episode_scores(rec(score=1.5))
    with pytest.raises(UnknownPreferenceError):
        episode_scores(rec("klingon"))
    with pytest.raises(ValueError, match="effort"):
        session_effort(rec(questions=[Q("extreme")]))


def test_readme_snippets():
    """The public-API snippets shown in the README (keep the two in sync)."""
    import asyncio

    from ppp_jax.envs.preferences import list_preferences
    from ppp_jax.envs.reward import RewardConfig, ppp_reward, reward_breakdown
    from ppp_jax.envs.simulator import SimulatorContext, to_question
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator

    assert len(list_preferences()) == 20
    ctx = SimulatorContext(
        precise_prompt="Exporting a report to CSV writes timestamps in local time instead of UTC. "
        "Expected: exported timestamps should be written in UTC with a trailing Z.",
        hidden_info="reports/export.py:write_csv_row",
        preference_id="concise_question",
    )
    sim = EmbeddedUserSimulator()
    efforts = [asyncio.run(sim.answer(ctx, q)).effort for q in (
        "Should exported timestamps be in UTC?", "Which function writes the CSV rows?", "What database do you use?")]
    assert efforts == ["low", "high", "medium"]
    q = "Should exported timestamps be in UTC?"
    reply = asyncio.run(sim.answer(ctx, q))
    record = EpisodeRecord(task_id="demo-1", domain="swe_func_loc", preference_id="concise_question",
                           prompt_kind="vague", questions=(to_question(q, reply, turn=0),), task_score=0.8)
    assert ppp_reward(record) == pytest.approx(0.9)
    assert reward_breakdown(record, RewardConfig(variant="released")).total == pytest.approx(0.9)
    s = episode_scores(record)
    assert (s.productivity, s.proactivity, s.personalization) == (0.8, 1.0, 1.0)
