"""The Table-2 evaluation: requests, aggregation by prompt kind and preference, Markdown, and a
real (tiny, scripted) evaluation run through the episode runner."""


import pytest

from ppp_jax.eval import evaluate
from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine
from ppp_jax.envs.records import EpisodeRecord, Question
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call
from ppp_jax.rollout.agent_domain import PreferenceDomain
from ppp_jax.config.run import EvalSection


def rec(pref, kind, score, efforts=(), followed=None):
    qs = tuple(Question(f"q{i}", "a", e, followed) for i, e in enumerate(efforts))
    return EpisodeRecord("t", "stdlib_loc", pref, kind, questions=qs, task_score=score,
                         answer="x.py:f")


def test_result_by_kind_and_preference():
    records = [
        rec("concise_question", "vague", 1.0, ("low",), True),  # seen, followed, low effort
        rec("concise_question", "vague", 0.0),  # no question, vague, wrong -> high effort
        rec("lang_ita", "vague", 0.5, ("high",), False),  # held-out, not followed
        rec("lang_ita", "precise", 1.0),
        rec("capital", "precise", 1.0, ("low",), True),
    ]
    r = evaluate.result_of(records)
    v, p = r["vague"], r["precise"]
    assert v["n"] == 3 and p["n"] == 2
    assert v["ask_ratio"] == pytest.approx(2 / 3)
    assert v["productivity"] == pytest.approx(0.5)
    assert v["proactivity"] == pytest.approx(1 / 3)  # only the low-effort episode
    assert v["personalization"] == pytest.approx(0.5)  # judged: 2 episodes with a question
    assert v["low_effort_share"] == pytest.approx(0.5)
    assert p["ask_ratio"] == pytest.approx(0.5) and p["proactivity"] == 1.0
    assert r["per_preference"]["concise_question"]["split"] == "seen"
    assert r["per_preference"]["lang_ita"]["split"] == "held-out"
    assert r["heldout"]["personalization"] == 0.0 and r["seen"]["personalization"] == 1.0
    assert r["avg"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    md = evaluate.to_markdown(r, "T")
    assert "| vague | 3 | 50.0 | 33.3 | 50.0 | 66.7 | 50.0 |" in md
    assert "Speak_Italian" in md and "mean, heldout" in md
    # a result read back from its JSON file (keys sorted there: a resumed demo) renders the same,
    # rows in the preferences' order (capital after lang_ita, though "capital" < "lang_ita")
    import json
    r2 = evaluate.result_of(records + [rec("capital", "vague", 1.0, ("low",), True)])
    md2 = evaluate.to_markdown(r2, "T")
    assert evaluate.to_markdown(json.loads(json.dumps(r2, sort_keys=True)), "T") == md2
    assert md2.index("Speak_Italian") < md2.index("Capital_Letter")


def test_requests_cover_tasks_preferences_and_kinds():
    tasks = list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=12, seed=3)))[:2]
    cfg = EvalSection(preferences="heldout", prompt_kinds=("vague", "precise"),
                      precise_preferences="no_preference", episodes_per_prompt=3)
    reqs = evaluate.eval_requests(tasks, cfg)
    assert len(reqs) == 2 * 8 + 2
    assert sum(r.n for r in reqs) == 3 * len(reqs)
    assert {r.preference_id for r in reqs if r.prompt_kind == "precise"} == {"no_preference"}
    with pytest.raises(Exception, match="nope"):
        evaluate.eval_preferences(EvalSection(preference_ids=("nope",)))


def test_evaluate_runs_the_protocol_end_to_end():
    tasks = list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=12, seed=3)))[:2]
    tok = tiny_seed_tokenizer()
    ask = render_tool_call("ask_user", {"question": "What exactly does not behave as documented?"})
    policy = EnginePolicy(ScriptedEngine(tok, [ask, render_tool_call("finish", {"answer": tasks[0].gold[0]})]), tok)
    domain = PreferenceDomain(stdlib_loc.make_domain(), tools=("finish",))
    cfg = EvalSection(preference_ids=("concise_question", "capital"), prompt_kinds=("vague",))
    r = evaluate.evaluate(policy, domain, EmbeddedUserSimulator(), tasks, cfg, progress=False)
    assert r["n_episodes"] == 4 and r["vague"]["ask_ratio"] == 1.0
    assert r["vague"]["low_effort_share"] == 1.0
    assert r["per_preference"]["concise_question"]["personalization"] == 1.0
    assert r["per_preference"]["capital"]["personalization"] == 0.0  # not in capitals
    assert r["vague"]["productivity"] == pytest.approx(0.5)  # right on one task of two
