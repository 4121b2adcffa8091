"""The SWE-Full domain end to end on a real project (simplejson with planted bugs), with the real
bubblewrap sandbox: scripted agents view, edit, run tests, ask the user and finish; the instance's
tests grade the patch; sandboxes are removed."""

from __future__ import annotations

import asyncio
import os

import pytest

from ppp_jax.envs.domains.swe_full import SweFullSection, build_domain
from ppp_jax.envs.episode import EpisodeConfig, EpisodeSpec, run_episode, run_episodes
from ppp_jax.envs.policy import ScriptedPolicy
from ppp_jax.envs.reward import RewardConfig, reward_breakdown
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call
from tests.envs.bwrap import needs_bwrap

pytestmark = needs_bwrap

ENCODER = "/testbed/simplejson/encoder.py"


def call(name, **args):
    return render_tool_call(name, args)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("swefull")
    tasks, domain = build_domain(SweFullSection(swe_full_example=True, swe_cache_dir=str(cache),
                                                swe_full_command_timeout_s=60.0))
    return {t.task_id: t for t in tasks}, domain


def sort_task(built):
    return built[0]["simplejson__simplejson-1"]


def episode(domain, task, script, preference="concise_question", kind="vague", **cfg):
    return asyncio.run(run_episode(domain, task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                                   preference_id=preference, prompt_kind=kind,
                                   config=EpisodeConfig(**cfg)))


def test_tasks_from_the_example_rows(built):
    tasks, domain = built
    assert sorted(tasks) == ["simplejson__simplejson-1", "simplejson__simplejson-2"]
    t = sort_task(built)
    assert t.domain == "swe_full" and t.vague_prompt != t.precise_prompt
    assert t.metadata["FAIL_TO_PASS"] and t.metadata["PASS_TO_PASS"]
    assert "simplejson/encoder.py" in t.hidden_info and "itemgetter(0)" in t.hidden_info
    names = [s["function"]["name"] for s in domain.tool_schemas(t)]
    assert names == ["execute_bash", "str_replace_editor", "think", "finish"]


def test_scripted_agent_fixes_the_bug_and_is_resolved(built):
    _, domain = built
    task = sort_task(built)
    script = [
        call("ask_user", question="What should dumps return for keys b and a with sort_keys?"),
        call("execute_bash", command="grep -n 'itemgetter' simplejson/encoder.py"),
        call("str_replace_editor", command="view", path=ENCODER, view_range=[500, 504]),
        call("execute_bash", command="python -m pytest -q -p no:cacheprovider "
             "simplejson/tests/test_separators.py 2>&1 | tail -2"),
        call("str_replace_editor", command="str_replace", path=ENCODER,
             old_str="_item_sort_key = itemgetter(1)", new_str="_item_sort_key = itemgetter(0)"),
        call("execute_bash", command="python -m pytest -q -p no:cacheprovider "
             "simplejson/tests/test_separators.py 2>&1 | tail -2"),
        call("finish", message="The default sort key now picks the key."),
    ]
    opened = domain.sandboxes_opened
    rec = episode(domain, task, script)
    assert rec.finish_reason == "finish", rec.stats
    obs = [c.observation for c in rec.tool_calls if c.name != "ask_user"]
    assert "_item_sort_key = itemgetter(1)" in obs[0] and "exit code 0" in obs[0]
    assert "itemgetter(1)" in obs[1] and "\t" in obs[1]  # cat -n view
    assert "failed" in obs[2] and "exit code 0" in obs[2]  # the F2P test fails before the fix
    assert "has been edited" in obs[3]
    assert "passed" in obs[4] and "failed" not in obs[4]
    # the answer is the copy's diff; the instance's tests resolve it
    assert "+        _item_sort_key = itemgetter(0)" in rec.answer
    assert rec.task_score == 1.0
    assert rec.stats["score_details"]["resolved"] is True
    assert rec.stats["score_details"]["fail_to_pass_share"] == 1.0
    # one low-effort question that follows the concise preference
    (q,) = rec.questions
    assert q.effort == "low" and q.followed is True
    r = reward_breakdown(rec, RewardConfig(clip=False))
    assert (r.productivity, r.proactivity, r.personalization) == pytest.approx((1.0, 0.05, 0.05))
    assert r.unclipped == pytest.approx(1.1) and r.total == pytest.approx(1.1)
    # the episode's sandbox is gone
    assert domain.sandboxes_opened == opened + 1 == domain.sandboxes_closed
    assert os.listdir(domain.work_dir / "episodes") == []


def test_unresolved_and_unfinished_episodes(built):
    _, domain = built
    task = sort_task(built)
    wrong = [call("str_replace_editor", command="str_replace", path=ENCODER,
                  old_str="_item_sort_key = itemgetter(1)", new_str="_item_sort_key = None"),
             call("finish")]
    rec = episode(domain, task, wrong, preference="no_preference")
    assert rec.task_score == 0.0 and "FAIL_TO_PASS failing" in rec.stats["score_details"]["reason"]
    nothing = [call("finish")]
    rec = episode(domain, task, nothing, preference="no_preference")
    assert rec.answer == "" and rec.task_score == 0.0
    assert rec.stats["score_details"]["reason"] == "empty patch"
    # edits to tests are not part of the answer
    tests_only = [call("execute_bash", command="echo '# x' >> simplejson/tests/test_dump.py"),
                  call("finish")]
    rec = episode(domain, task, tests_only, preference="no_preference")
    assert rec.answer == "" and rec.task_score == 0.0
    # never finished: nothing submitted, scored 0, sandbox removed
    endless = [call("execute_bash", command="true")] * 3
    rec = episode(domain, task, endless, preference="no_preference", max_turns=2)
    assert rec.finish_reason == "turn_limit" and rec.task_score == 0.0
    assert domain.sandboxes_opened == domain.sandboxes_closed
    assert os.listdir(domain.work_dir / "episodes") == []


def test_bash_tool_semantics(built):
    _, domain = built
    task = sort_task(built)
    script = [call("execute_bash", command="cd simplejson/tests && pwd"),
              call("execute_bash", command="pwd; ls test_dump.py"),
              call("execute_bash", command="sleep 30", timeout=2),
              call("execute_bash", command="exit 5"),
              call("execute_bash", command=""),
              call("execute_bash", command="python -c 'import simplejson; print(simplejson.__file__)'"),
              call("finish")]
    rec = episode(domain, task, script, preference="no_preference")
    obs = [c.observation for c in rec.tool_calls]
    assert obs[0].startswith("/testbed/simplejson/tests")
    assert obs[1].startswith("/testbed/simplejson/tests\ntest_dump.py")  # cwd carried over
    assert "stopped after 2 seconds" in obs[2]
    assert "exit code 5" in obs[3]
    assert obs[4].startswith("ERROR")
    assert "/testbed/simplejson/__init__.py" in obs[5]  # the copy, not the host's simplejson
    assert "__PPP_CWD__" not in "".join(obs)


def test_parallel_episodes_do_not_see_each_other(built):
    tasks, domain = built
    specs = []
    for i, task in enumerate(tasks.values()):
        script = [call("execute_bash", command=f"echo {i} > mine_{i}.txt && sleep 1 && ls"),
                  call("finish")]
        specs.append((EpisodeSpec(task, "no_preference", "vague", f"ep{i}"), script))
    # one policy per episode: a scripted policy replays its script for every session
    async def both():
        return await asyncio.gather(*(
            run_episodes(domain, [spec], ScriptedPolicy(script), EmbeddedUserSimulator())
            for spec, script in specs))

    results = asyncio.run(both())
    for i, (rec,) in enumerate(results):
        listing = rec.tool_calls[0].observation.split()
        assert f"mine_{i}.txt" in listing and f"mine_{1 - i}.txt" not in listing
        assert f"+{i}" in rec.answer  # each diff has only its own file
    assert os.listdir(domain.work_dir / "episodes") == []


def test_eval_reports_the_resolved_rate(built):
    """`ppp eval`'s protocol on SWE-Full: a scripted engine policy that fixes bug 1 (and cannot
    apply the same edit to bug 2): resolved 50%, the reasons in the Markdown report."""
    from ppp_jax.config.run import EvalSection
    from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.eval import evaluate
    from ppp_jax.rollout.agent_domain import PreferenceDomain

    tasks, domain = built
    tok = tiny_seed_tokenizer()
    script = [call("str_replace_editor", command="str_replace", path=ENCODER,
                   old_str="_item_sort_key = itemgetter(1)", new_str="_item_sort_key = itemgetter(0)"),
              call("finish", answer="done")]
    policy = EnginePolicy(ScriptedEngine(tok, script), tok)
    cfg = EvalSection(preference_ids=("no_preference",), prompt_kinds=("vague",))
    r = evaluate.evaluate(policy, PreferenceDomain(domain), EmbeddedUserSimulator(),
                          sorted(tasks.values(), key=lambda t: t.task_id), cfg, progress=False)
    v = r["vague"]
    assert v["graded"] == 2 and v["resolved"] == 0.5 and v["productivity"] == 0.5
    assert v["unresolved_reasons"] == {"empty patch": 1}
    md = evaluate.to_markdown(r)
    assert "| vague | 2 | 50.0 |" in md and "empty patch: 1" in md
