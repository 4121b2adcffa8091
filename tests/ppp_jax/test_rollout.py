"""The rollout orchestrator, offline: scripted engine, real runner, embedded simulator, stdlib tasks."""

import asyncio
import random

import numpy as np
import pytest

from ppp_jax.sampling.chat import ChatTokenizer
from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.domains.base import ask_user_schema
from ppp_jax.envs.episode import EpisodeConfig, run_episode
from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine
from ppp_jax.envs.reward import RewardConfig
from ppp_jax.envs.simulator import SimulatorReply
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call
from ppp_jax.config.rl import AdvantageConfig, RLConfig
from ppp_jax.rollout.agent_domain import PREFERENCE_NOTE, PreferenceDomain, for_user
from ppp_jax.rollout.orchestrator import EpisodeRequest, RolloutOrchestrator, run_requests
from ppp_jax.rollout.results import RolloutCounters
from ppp_jax.rollout.policies import SeededEnginePolicy, derive_seed
from ppp_jax.train.sft import render_token_view

G = 4


@pytest.fixture(scope="module")
def tasks():
    return list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=12, seed=3)))


@pytest.fixture(scope="module")
def domain():
    return PreferenceDomain(stdlib_loc.make_domain(), tools=("finish",), system_prompt="Find the bug.")


@pytest.fixture(scope="module")
def tok():
    return tiny_seed_tokenizer()


class Item:
    """A stand-in for `ppp_jax.train.data.PromptItem` (only what the orchestrator reads)."""

    def __init__(self, task, pref, kind):
        self.task, self.preference_id, self.prompt_kind = task, pref, kind
        self.uid = f"{task.task_id}|{pref}|{kind}|0"


ASK = render_tool_call("ask_user", {"question": "What exactly does not behave as documented?"})


def finish(answer):
    return render_tool_call("finish", {"answer": answer})


def test_preference_domain_filters_tools_and_tells_the_agent(tasks, domain):
    t = for_user(tasks[0], "lang_ita")
    names = [s["function"]["name"] for s in domain.tool_schemas(t)]
    assert names == ["finish"]
    msg = domain.first_message(t, "vague")
    assert msg.startswith(tasks[0].vague_prompt)
    assert "Italian" in msg and PREFERENCE_NOTE.split(":")[0] in msg
    assert domain.system_prompt(t) == "Find the bug."
    # The simulator's view of the task is untouched.
    assert t.precise_prompt == tasks[0].precise_prompt
    assert asyncio.run(domain.run_tool(t, "grep", {"pattern": "x"}, {})).startswith("ERROR")


def test_render_token_view_equals_engine_policy_tokens(tasks, domain, tok):
    """SFT renders recorded conversations exactly as the engine policy samples them."""
    task = for_user(tasks[1], "concise_question")
    policy = EnginePolicy(ScriptedEngine(tok, [ASK, finish("a.py:f")]), tok)
    rec = asyncio.run(run_episode(domain, task, policy, EmbeddedUserSimulator(),
                                  preference_id="concise_question", prompt_kind="vague"))
    assert rec.num_questions == 1 and rec.finish_reason == "finish"
    tools = list(domain.tool_schemas(task)) + [ask_user_schema()]
    view = render_token_view(rec.messages, tools, ChatTokenizer(tok))
    assert view.token_ids == rec.tokens.token_ids
    assert view.loss_mask == rec.tokens.loss_mask
    assert view.turn_starts == rec.tokens.turn_starts


def orchestrator(tok, domain, replies, simulator=None, **kw):
    engine = ScriptedEngine(tok, replies)
    policy = SeededEnginePolicy(engine, tok, base_seed=0)
    rl = RLConfig(advantage=AdvantageConfig(group_size=G, clip_reward_01=False))
    return RolloutOrchestrator(domain, policy, simulator or EmbeddedUserSimulator(), rl=rl,
                               reward=RewardConfig(variant="released", clip=False),
                               episode=EpisodeConfig(max_turns=3, max_context_tokens=4096),
                               concurrency=8, pad_to_multiple=64, **kw)


def test_orchestrator_groups_rewards_advantages_and_batch(tasks, tok, domain):
    items = [Item(tasks[0], "concise_question", "vague"), Item(tasks[1], "no_preference", "precise")]
    orch = orchestrator(tok, domain, [ASK, finish(tasks[0].gold[0])], rows_multiple=4)
    ro = orch.collect(items, {t.task_id: t for t in tasks}, seed=7)
    assert len(ro.records) == 2 * G and ro.groups == [items[0].uid] * G + [items[1].uid] * G
    # The scripted engine is deterministic: identical groups, zero spread, zero advantage.
    assert np.allclose(ro.advantages, 0.0)
    assert ro.metrics["rollout/zero_spread_groups"] == 2
    b = ro.batch
    assert b.tokens.shape[0] % 4 == 0
    assert b.loss_mask.sum() == sum(sum(r.tokens.loss_mask) for r in ro.records) - 0
    assert ro.metrics["rollout/ask_ratio_vague"] == 1.0 and ro.metrics["rollout/ask_ratio_precise"] == 1.0
    # Reward = released variant: vague low-effort question with the right answer -> 1 + 0.05 (+0.05 pref.)
    vague = ro.scores[0]
    assert vague["productivity"] == 1.0 and vague["r_proact"] == pytest.approx(0.05)
    assert ro.scores[G]["r_proact"] < 0  # asking on a precise prompt costs


def test_seeds_do_not_depend_on_start_order():
    assert derive_seed(3, "a|b|0|0") == derive_seed(3, "a|b|0|0")
    assert derive_seed(3, "a|b|0|0") != derive_seed(3, "a|b|1|0")
    assert 0 <= derive_seed("x") < 2**31


class FlakySimulator:
    """Fails (raises, times out, or returns garbage) on about 20% of calls."""

    def __init__(self, rate=0.2, seed=0):
        self.inner = EmbeddedUserSimulator()
        self.rng = random.Random(seed)
        self.rate = rate
        self.failures = 0

    async def answer(self, ctx, question):
        if self.rng.random() < self.rate:
            self.failures += 1
            kind = self.rng.choice(["error", "timeout", "malformed"])
            if kind == "error":
                raise ConnectionError("simulated outage")
            if kind == "timeout":
                raise asyncio.TimeoutError()
            # A reply the backend could not parse: flagged, effort from the fallback.
            return SimulatorReply("??", "medium", None, True, "??", malformed=True)
        return await self.inner.answer(ctx, question)


def test_failing_simulator_is_retried_or_dropped_and_counted(tasks, tok, domain):
    sim = FlakySimulator()
    items = [Item(t, "concise_question", "vague") for t in tasks[:4]]
    orch = orchestrator(tok, domain, [ASK, ASK, finish("x.py:f")], simulator=sim, max_retries=1)
    ro = orch.collect(items, {t.task_id: t for t in tasks}, seed=1)
    m = ro.metrics
    assert sim.failures > 0
    assert m["rollout/retried"] + m["rollout/dropped_errors"] > 0
    assert m["rollout/episodes"] == len(ro.records) == 4 * G - m["rollout/dropped_errors"]
    assert not any(r.stats.get("simulator_errors") for r in ro.records)  # no failed episode trains
    assert ro.batch is not None


def test_run_requests_keeps_order(tasks, tok, domain):
    reqs = [EpisodeRequest(t, "no_preference", "precise", f"g{i}", 2) for i, t in enumerate(tasks[:3])]
    policy = SeededEnginePolicy(ScriptedEngine(tok, [finish("a.py:f")]), tok)
    groups = asyncio.run(run_requests(reqs, domain, policy, EmbeddedUserSimulator(),
                                      episode=EpisodeConfig(max_turns=2), concurrency=2,
                                      max_retries=0, seed=0, counters=RolloutCounters()))
    assert [[r.task_id for r in g] for g in groups] == [[t.task_id] * 2 for t in tasks[:3]]


# ------------------------------------------------------------------------------------------------
# Robustness: malformed replies, odd task scores, shrunk groups, overlong shaping, empty groups
# ------------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402

from ppp_jax.rl import dapo as dapo_mod  # noqa: E402
from ppp_jax.envs.reward import reward_breakdown  # noqa: E402
from ppp_jax.config.rl import DapoConfig  # noqa: E402
from ppp_jax.rollout.orchestrator import _affected, _clamp_task_score  # noqa: E402


@pytest.fixture(scope="module")
def record(tasks, domain, tok):
    task = for_user(tasks[0], "concise_question")
    policy = EnginePolicy(ScriptedEngine(tok, [ASK, finish(tasks[0].gold[0])]), tok)
    return asyncio.run(run_episode(domain, task, policy, EmbeddedUserSimulator(),
                                   preference_id="concise_question", prompt_kind="vague"))


def test_malformed_reply_or_nan_score_is_affected_and_odd_scores_are_clamped(record):
    assert not _affected(record)
    assert _affected(dataclasses.replace(record, stats={**record.stats, "simulator_malformed": 1}))
    assert _affected(dataclasses.replace(record, task_score=float("nan")))
    c = RolloutCounters()
    assert _clamp_task_score(record, c) is record and c.task_score_clamped == 0
    assert _clamp_task_score(dataclasses.replace(record, task_score=1.5), c).task_score == 1.0
    assert _clamp_task_score(dataclasses.replace(record, task_score=-0.2), c).task_score == 0.0
    assert c.task_score_clamped == 2 and c.metrics()["rollout/task_score_clamped"] == 2.0


class MalformedSimulator:
    """Every reply malformed (the backend could not parse it)."""

    async def answer(self, ctx, question):
        return SimulatorReply("??", "medium", None, True, "??", malformed=True)


def test_malformed_replies_are_retried_then_dropped(tasks, tok, domain):
    items = [Item(tasks[0], "concise_question", "vague")]
    orch = orchestrator(tok, domain, [ASK, finish("x.py:f")], simulator=MalformedSimulator(),
                        max_retries=1)
    ro = orch.collect(items, {t.task_id: t for t in tasks}, seed=0)
    m = ro.metrics
    assert m["rollout/retried"] == G and m["rollout/dropped_errors"] == G
    assert m["rollout/groups_dropped_empty"] == 1 and ro.batch is None and not ro.records


class FailAfterFirstSimulator:
    """Answers the first question, fails every later one."""

    def __init__(self):
        self.inner, self.calls = EmbeddedUserSimulator(), 0

    async def answer(self, ctx, question):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("simulated outage")
        return await self.inner.answer(ctx, question)


def test_group_shrunk_to_one_episode_is_dropped_and_counted(tasks, tok, domain):
    items = [Item(tasks[0], "concise_question", "vague")]
    orch = orchestrator(tok, domain, [ASK, finish("x.py:f")], simulator=FailAfterFirstSimulator(),
                        max_retries=0)
    ro = orch.collect(items, {t.task_id: t for t in tasks}, seed=0)
    m = ro.metrics
    assert m["rollout/dropped_errors"] == G - 1
    assert m["rollout/groups_dropped_small"] == 1 and m["rollout/dropped_small_group"] == 1
    assert ro.batch is None and not ro.records  # no un-normalised singleton advantage trains


def test_overlong_penalty_applies_to_the_unclipped_reward(tok, domain, record):
    length = dapo_mod.policy_token_count(record.tokens.loss_mask)
    unclipped = reward_breakdown(record, RewardConfig(variant="released", clip=True)).unclipped
    assert unclipped > 1.0  # right answer + proactivity/personalisation bonuses
    orch = orchestrator(tok, domain, [ASK])
    orch.reward = RewardConfig(variant="released", clip=True)
    orch.rl = RLConfig(advantage=AdvantageConfig(group_size=G, clip_reward_01=True),
                       dapo=DapoConfig(overlong_buffer_len=length, max_response_len=length,
                                       overlong_penalty_factor=0.5))
    # penalty = -0.5 at L = L_max; clipped once afterwards (not clip -> penalty)
    assert orch.rewards_of([record])[0] == pytest.approx(min(unclipped - 0.5, 1.0))
    assert orch.rewards_of([record])[0] > 0.5


class FailTaskSimulator:
    """Fails every question about one task."""

    def __init__(self, task_id):
        self.inner, self.task_id = EmbeddedUserSimulator(), task_id

    async def answer(self, ctx, question):
        if ctx.precise_prompt == self.task_id:
            raise ConnectionError("simulated outage")
        return await self.inner.answer(ctx, question)


def test_dynamic_sampling_counts_groups_emptied_by_errors(tasks, tok, domain):
    items = [Item(tasks[0], "concise_question", "vague"), Item(tasks[1], "concise_question", "vague")]
    orch = orchestrator(tok, domain, [ASK, finish("x.py:f")],
                        simulator=FailTaskSimulator(tasks[0].precise_prompt), max_retries=0)
    orch.rl = RLConfig(advantage=AdvantageConfig(group_size=G, clip_reward_01=False),
                       dapo=DapoConfig(dynamic_sampling=True, max_gen_batches=3))
    orch.rewards_of = lambda recs: np.arange(len(recs), dtype=np.float64)  # every group has spread
    ro = orch.collect(items, {t.task_id: t for t in tasks}, seed=0,
                      more_items=lambda r: [items[1]])
    m = ro.metrics
    assert m["rollout/groups_dropped_empty"] == 1 and m["dapo/num_gen_batches"] == 2
    assert ro.groups == [items[1].uid] * G * 2
