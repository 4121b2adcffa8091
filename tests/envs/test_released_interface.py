"""Scripted episodes in the released checkpoint's format (`ask_question(query)` calls written as
OpenHands text, several calls in one message, finish(message, answer)) under `profile:
released`, and the same behaviour written in our interface under `profile: paper`. The user
simulator is the real LLM simulator over the loopback fake OpenAI server, replying with the
released tag format; rewards and metrics are checked against hand computations."""

import asyncio

import pytest

from ppp_jax.config.run import load_run_config
from ppp_jax.envs.domains import browsecomp as bc
from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.episode import masked_spans, run_episode
from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig
from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine
from ppp_jax.envs.reward import reward_breakdown
from ppp_jax.envs.scoring import episode_scores
from ppp_jax.envs.simulator_llm import LLMSimulatorConfig, LLMUserSimulator
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.sampling import chat
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call
from tests.envs.fake_openai_server import reply
from tests.envs.test_browsecomp import bm25, corpus, rows  # noqa: F401 -- fixtures

KEY_ENV = "PPP_TEST_RELEASED_KEY"


def openhands(name, **args):
    """A call as the released checkpoint writes it: bare OpenHands text, no tool-call block."""
    params = "".join(f"<parameter={k}>{v}</parameter>\n" for k, v in args.items())
    return f"<function={name}>\n{params}</function>"


def ask(profile, text):
    if profile == "released":
        return openhands("ask_question", query=text)
    return render_tool_call("ask_user", {"question": text})


def finish(profile, answer):
    if profile == "released":
        return openhands("finish", message="Here is what I found.", answer=answer)
    return render_tool_call("finish", {"answer": answer})


@pytest.fixture
def setup(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")

    def make(profile):
        path = tmp_path / "run.yaml"
        path.write_text(f"profile: {profile}\n")
        cfg = load_run_config(path)
        sim = LLMUserSimulator(
            LLMSimulatorConfig(show_tags_to_agent=cfg.simulator.show_tags_to_agent),
            client=LLMClient(LLMClientConfig(model="fake-model", base_url=fake.base_url,
                                             api_key_env=KEY_ENV, max_retries=0)))
        return cfg, sim

    return make


def episode(cfg, sim, domain, task, script, kind, pref="concise_question", extra=()):
    tok = tiny_seed_tokenizer(extra_text=[task.precise_prompt, task.vague_prompt, *script, *extra])
    policy = EnginePolicy(ScriptedEngine(tok, script), tok)
    rec = asyncio.run(run_episode(domain, task, policy, sim, preference_id=pref, prompt_kind=kind,
                                  config=cfg.rollout.episode))
    return rec, tok


def values(rec, cfg):
    b = reward_breakdown(rec, cfg.reward)
    s = episode_scores(rec, cfg.reward.correct_threshold,
                       personalization_rule=cfg.metrics.personalization,
                       proactivity_rule=cfg.metrics.proactivity)
    return (round(b.proactivity, 6), round(b.personalization, 6), round(b.unclipped, 6),
            s.productivity, s.proactivity, s.personalization)


@pytest.fixture(scope="module")
def swe_task():
    tasks = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=12, seed=3))
    return next(t for t in tasks if "." in t.metadata["qualname"])


# released: q = 2 answers at levels 1 and 2 (hint): cost -0.1 * (3 - 2) = -0.1, no bonus (not all
#   level 1); concise_question with one [Reward 0]: -0.1, no bonus; 1 - 0.1 - 0.1 = 0.8;
#   proactivity metric: cost < 0 -> 0; personalization: penalty != 0 -> 0.
# paper: level 1 low, level 2 high: -0.5; -0.1 penalty, no bonus: 1 - 0.5 - 0.1 = 0.4;
#   session effort high -> 0; not followed -> 0.
SWE_VAGUE = {"released": (-0.1, -0.1, 0.8, 1.0, 0.0, 0.0),
             "paper": (-0.5, -0.1, 0.4, 1.0, 0.0, 0.0)}


@pytest.mark.parametrize("profile", ["released", "paper"])
def test_swe_vague_episode(setup, fake, swe_task, profile):
    cfg, sim = setup(profile)
    path, qual = swe_task.gold[0].split(":")
    name = qual.split(".")[-1]
    grep = (openhands("grep", pattern=rf"def {name}\(", path=path) if profile == "released"
            else render_tool_call("grep", {"pattern": rf"def {name}\(", "path": path}))
    script = [
        "The report is vague, I should ask.\n" + ask(profile, "Which module is it?") + "\n" + grep,
        ask(profile, "Is there a hint about the function?"),
        finish(profile, swe_task.gold[0]),
    ]
    fake.push(reply("It's in the standard library.\n[Cost 1]\n[Reward 1]"),
              reply("The hint says it's the decoder, I think.\n[Cost 2]\n[Reward 0]"))
    rec, tok = episode(cfg, sim, stdlib_loc.make_domain(), swe_task, script, "vague")
    assert rec.finish_reason == "finish" and rec.task_score == 1.0
    assert [q.level for q in rec.questions] == [1, 2]
    assert values(rec, cfg) == SWE_VAGUE[profile]
    observations = [m for m in rec.messages[2:] if m["role"] != "assistant"]
    a, b, _ = masked_spans(rec)[0]  # the prompt before the first sampled turn
    first_view = chat.ChatTokenizer(tok).decode(rec.tokens.token_ids[a:b])
    if profile == "released":
        # only the first call of the first message ran; the grep was dropped and counted
        assert rec.stats["dropped_extra_calls"] == 1 and rec.stats["tool_calls"] == 3
        assert [c.name for c in rec.tool_calls] == ["ask_question", "ask_question", "finish"]
        assert {m["role"] for m in observations} == {"user"}  # observations as user messages
        assert observations[0]["content"].endswith("[Cost 1]\n[Reward 1]")  # tags visible
        assert "---- BEGIN FUNCTION #1:" in rec.messages[0]["content"]  # tools as text ...
        assert "Function:\ndef " not in first_view  # ... and none through the template
        assert rec.answer == swe_task.gold[0]
    else:
        assert rec.stats.get("dropped_extra_calls") == 0 and rec.stats["tool_calls"] == 4
        assert {m["role"] for m in observations} == {"tool"}
        assert observations[0]["content"] == "It's in the standard library."  # tags stripped
        assert "BEGIN FUNCTION" not in rec.messages[0]["content"]
        assert "Function:\ndef " in first_view


def test_released_text_under_the_paper_interface_asks_nothing(setup, swe_task):
    """The checkpoint's `ask_question` is an unknown tool to the paper interface: an error
    observation, no question, no simulator call."""
    cfg, sim = setup("paper")
    script = [openhands("ask_question", query="Which module?"), finish("paper", swe_task.gold[0])]
    rec, _ = episode(cfg, sim, stdlib_loc.make_domain(), swe_task, script, "vague")
    assert rec.questions == () and rec.stats["unknown_tool"] == 1 and rec.task_score == 1.0


# One level-1 question on a precise prompt, answer right.
# released: -0.2 * 1 = -0.2; penalty 0, no bonus on precise prompts: 0.8; cost < 0 -> 0; pers 1.
# paper: a precise-prompt question costs at least medium: -0.1; 0.9; session effort low -> 1.
SWE_PRECISE = {"released": (-0.2, 0.0, 0.8, 1.0, 0.0, 1.0),
               "paper": (-0.1, 0.0, 0.9, 1.0, 1.0, 1.0)}


@pytest.mark.parametrize("profile", ["released", "paper"])
def test_swe_precise_episode(setup, fake, swe_task, profile):
    cfg, sim = setup(profile)
    script = [ask(profile, "Anything else I should know?"), finish(profile, swe_task.gold[0])]
    fake.push(reply("Nope, it's all in the report.\n[Cost 1]\n[Reward 1]"))
    rec, _ = episode(cfg, sim, stdlib_loc.make_domain(), swe_task, script, "precise")
    assert [q.level for q in rec.questions] == [1]
    assert values(rec, cfg) == SWE_PRECISE[profile]


# Search, vague, two questions: level 1 and level 2 ("I don't know"), a search, a wrong answer.
# released: -0.05 * 1 + 0.05 (any level 1) = 0; concise followed: +0.05; s = 0 -> 0.05;
#   cost 0 >= 0 -> proactive 1 (the level-1 answer offsets the level-2 one); pers 1.
# paper: medium -0.1, no all-low bonus; followed +0.05 -> -0.05 (clipped to 0 in the total);
#   session effort medium -> 0; pers 1.
SEARCH_VAGUE = {"released": (0.0, 0.05, 0.05, 0.0, 1.0, 1.0),
                "paper": (-0.1, 0.05, -0.05, 0.0, 0.0, 1.0)}


@pytest.mark.parametrize("profile", ["released", "paper"])
def test_search_vague_episode(setup, fake, corpus, bm25, rows, profile):  # noqa: F811
    cfg, sim = setup(profile)
    task = bc.build_tasks(rows, corpus)[0]
    search = (openhands("search", query="lighthouse painter") if profile == "released"
              else render_tool_call("search", {"query": "lighthouse painter"}))
    script = [ask(profile, "Which village?"), ask(profile, "Who paid for it?"), search,
              finish(profile, "Ismo Kareli")]
    fake.push(reply("Varnholm.\n[Cost 1]\n[Reward 1]"),
              reply("No idea.\n[Cost 2]\n[Reward 1]"))
    rec, _ = episode(cfg, sim, bc.BrowseCompDomain(bm25), task, script, "vague")
    assert rec.finish_reason == "finish" and rec.task_family == "search"
    assert [q.level for q in rec.questions] == [1, 2]
    assert values(rec, cfg) == SEARCH_VAGUE[profile]


def test_which_calls_run_per_mode():
    from ppp_jax.envs.interface import AgentInterface, calls_to_run

    names = ["search", "ask_question", "open_page", "finish"]
    rel = AgentInterface(ask_tool="ask_question", calls_per_turn="released")
    assert calls_to_run(names, rel, "search") == [True, False, True, True]  # search loops over all
    assert calls_to_run(names, rel, "swe") == [True, False, False, False]  # repo_env: fn_call[0]
    assert calls_to_run(["ask_question", "search"], rel, "search") == [True, False]  # ask first
    first = AgentInterface(calls_per_turn="first")
    assert calls_to_run(names, first, "search") == [True, False, False, False]
    assert calls_to_run(names, AgentInterface(), "search") == [True] * 4
    assert calls_to_run([], rel, "search") == []


def test_search_message_with_several_calls_runs_them_under_released(setup, fake, corpus, bm25,  # noqa: F811
                                                                     rows):
    cfg, sim = setup("released")
    task = bc.build_tasks(rows, corpus)[0]
    script = [openhands("search", query="lighthouse Varnholm") + "\n"
              + openhands("open_page", docid="d01") + "\n" + openhands("ask_question", query="Hm?"),
              finish("released", "Ottilie Brask")]
    rec, _ = episode(cfg, sim, bc.BrowseCompDomain(bm25), task, script, "precise",
                     pref="no_preference")
    assert [c.name for c in rec.tool_calls] == ["search", "open_page", "finish"]
    assert rec.stats["dropped_extra_calls"] == 1 and rec.questions == ()
    assert rec.task_score == 1.0


def test_api_model_under_the_released_text_interface(setup, fake, swe_task):
    """An OpenAI-compatible model under `profile: released`: no API tools are sent, its text calls
    are parsed like the checkpoint's, and its earlier turns go back as their text (no dangling
    API tool calls before the user-role observations)."""
    from ppp_jax.envs.policy import OpenAIPolicy

    cfg, sim = setup("released")
    fake.push(reply(openhands("ask_question", query="Which module is it?")),
              reply("Module noted.\n[Cost 1]\n[Reward 1]"),  # the simulator's answer
              reply("Found it.\n" + finish("released", swe_task.gold[0])))
    policy = OpenAIPolicy(LLMClient(LLMClientConfig(model="fake-model", base_url=fake.base_url,
                                                    api_key_env=KEY_ENV, max_retries=0)))
    rec = asyncio.run(run_episode(stdlib_loc.make_domain(), swe_task, policy, sim,
                                  preference_id="concise_question", prompt_kind="vague",
                                  config=cfg.rollout.episode))
    assert rec.finish_reason == "finish" and rec.task_score == 1.0
    assert [q.level for q in rec.questions] == [1]
    agent_requests = [r["body"] for r in fake.requests if "tools" in r["body"] or
                      "BEGIN FUNCTION" in r["body"]["messages"][0]["content"]]
    assert agent_requests and all("tools" not in b for b in agent_requests)
    last = agent_requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    assert last[2]["content"].startswith("<function=ask_question>") and "tool_calls" not in last[2]
    assert last[3]["content"].endswith("[Cost 1]\n[Reward 1]")
