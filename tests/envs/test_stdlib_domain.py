"""The embedded stdlib function-localization domain."""

import ast
import asyncio
import os
import re

import pytest

from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.domains.base import location_f1


@pytest.fixture(scope="module")
def tasks():
    return stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig())


def test_a_few_hundred_tasks_split_and_deterministic(tasks):
    assert len(tasks) == 300
    assert len({t.task_id for t in tasks}) == 300
    test = stdlib_loc.split_tasks(tasks, "test")
    assert 20 <= len(test) <= 80 and len(stdlib_loc.split_tasks(tasks, "train")) == 300 - len(test)
    stdlib_loc.build_tasks.cache_clear()
    again = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig())
    assert again == tasks  # same Python version + seed -> same tasks, prompts, splits
    other = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=30, seed=1))
    assert [t.task_id for t in other] != [t.task_id for t in tasks[:30]]


def test_gold_is_a_real_function_at_the_stated_line(tasks):
    root = stdlib_loc.stdlib_root()
    for t in tasks[::10]:
        path, qual = t.gold[0].split(":")
        tree = ast.parse(open(os.path.join(root, path), "rb").read())
        node = tree
        for part in qual.split("."):
            node = next(n for n in node.body if getattr(n, "name", None) == part)
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert node.lineno == t.metadata["lineno"]


def test_prompts_precise_vague_hidden(tasks):
    for t in tasks:
        path, qual = t.gold[0].split(":")
        assert f"{t.metadata['module']}.{qual}" in t.precise_prompt and path in t.precise_prompt
        assert f"(location {t.gold[0]})" in t.precise_prompt  # the answer's own form
        assert path not in t.vague_prompt and t.gold[0] not in t.vague_prompt
        if "." in qual:
            assert not re.search(rf"\b{re.escape(qual)}\b", t.vague_prompt)
        name = qual.split(".")[-1]
        if len(name) >= 3 and not (name.isalpha() and name.islower()):
            assert not re.search(rf"\b{re.escape(name)}\b", t.vague_prompt), (name, t.vague_prompt)
        elif len(name) >= 3:  # an ordinary word too ("get"): gone only where used as a name
            used = rf"\b{re.escape(name)}(?=[(`]|\.\w)|(?<=[.`]){re.escape(name)}\b"
            assert not re.search(used, t.vague_prompt), (name, t.vague_prompt)
        assert "do not it " not in t.vague_prompt  # the symptom's wording survives
        assert t.hidden_info.splitlines() == [path, t.gold[0]]
        assert 30 <= len(t.precise_prompt.split()) <= 300  # hundreds of tokens at most
        assert len(t.vague_prompt.split()) < len(t.precise_prompt.split())
        assert location_f1(t.gold[0], t.gold) == 1.0


def test_location_last_prompt_and_the_replies_that_quote_it_end_with_the_location():
    from ppp_jax.envs.simulator import SimulatorContext
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator

    plain = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=8, seed=2))
    last = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=8, seed=2,
                                                             location_last=True))
    sim = EmbeddedUserSimulator()
    for p, t in zip(plain, last):
        # same task, same facts; only the order of the report's sentences differs
        assert (p.task_id, p.vague_prompt, p.hidden_info, p.gold) == (
            t.task_id, t.vague_prompt, t.hidden_info, t.gold)
        assert t.precise_prompt.endswith(f"its location: {t.gold[0]}")
        assert not p.precise_prompt.endswith(t.gold[0])
        assert sorted(t.precise_prompt.split()) != sorted(p.precise_prompt.split())
        ctx = SimulatorContext(t.precise_prompt, t.hidden_info, "no_preference",
                               task_family="func_loc")
        reply = sim.answer_sync(ctx, "What exactly does not behave as documented?")
        assert reply.effort == "low" and reply.text.endswith(t.gold[0])  # quotable as a copy


def test_vague_removes_names_only_where_used_as_names():
    names = ["webbrowser.get", "webbrowser", "get", "Popen", "dataclasses"]
    text = ("Use webbrowser.get() or `get` to get a browser; get.x and Popen and popen. "
            "See dataclass.field.")
    assert stdlib_loc._remove_names(text, names) == (
        "Use it() or `it` to get a browser; it.x and it and popen. See it.field.")
    vague = stdlib_loc._vague("Return a launcher.", stdlib_loc.SYMPTOMS[2], ["get"])
    assert "callers do not get the documented behaviour" in vague


def test_tools_read_the_stdlib_tree(tasks):
    t = tasks[0]
    dom = stdlib_loc.make_domain()
    path = t.metadata["path"]
    obs = asyncio.run(dom.run_tool(t, "view_file", {"path": path, "start_line": t.metadata["lineno"],
                                                    "end_line": t.metadata["lineno"]}, {}))
    assert f"def {t.metadata['qualname'].split('.')[-1]}" in obs
    refused = asyncio.run(dom.run_tool(t, "view_file", {"path": "../../../../etc/passwd"}, {}))
    assert refused.startswith("ERROR")
    names = {s["function"]["name"] for s in dom.tool_schemas(t)}
    assert names == {"view_file", "list_dir", "find_files", "grep", "finish"}
    assert asyncio.run(dom.score(t, f"/testbed/{t.gold[0]}\nother.py:f")) == pytest.approx(2 / 3)


def test_registered_builder_reads_its_own_section(tasks):
    from ppp_jax.envs.domains.registry import get_domain
    from ppp_jax.envs.episode import run_episode
    from ppp_jax.envs.policy import ScriptedPolicy
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
    from ppp_jax.sampling.chat_format.seed_oss import render_tool_call

    spec = get_domain("stdlib_loc")
    assert spec.section is stdlib_loc.StdlibLocSection and spec.build is stdlib_loc.build_domain
    built, dom = spec.build(stdlib_loc.StdlibLocSection(tool_style="openhands"))
    assert tuple(built) == tasks and dom.name == "stdlib_loc" and dom.tool_style == "openhands"
    assert dom.task_family == "swe"
    script = [render_tool_call("finish", {"answer": tasks[0].gold[0]})]
    rec = asyncio.run(run_episode(dom, tasks[0], ScriptedPolicy(script), EmbeddedUserSimulator(),
                                  preference_id="no_preference", prompt_kind="precise"))
    assert rec.task_score == 1.0 and rec.task_family == "swe"
