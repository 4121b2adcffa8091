"""The episode runner end to end, offline: scripted policies on embedded stdlib tasks."""

import asyncio
import time

import pytest

from ppp_jax.sampling import chat
from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.episode import EpisodeConfig, EpisodeSpec, masked_spans, run_episode, run_episodes
from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine, ScriptedPolicy
from ppp_jax.envs.reward import RewardConfig, ppp_reward
from ppp_jax.envs.simulator import SimulatorReply, SimulatorUnavailable
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call


@pytest.fixture(scope="module")
def task():
    tasks = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=12, seed=3))
    return next(t for t in tasks if "." in t.metadata["qualname"])  # a method


@pytest.fixture(scope="module")
def domain():
    return stdlib_loc.make_domain()


def call(name, **args):
    return render_tool_call(name, args)


def solve_script(task, ask: bool):
    path, qual = task.gold[0].split(":")
    name = qual.split(".")[-1]
    script = []
    if ask:
        script.append("<seed:think>The report is vague.</seed:think>"
                      + call("ask_user", question="Which file and function is it in?"))
    script.append("<seed:think>Look for it.</seed:think>Searching.\n"
                  + call("grep", pattern=rf"def {name}\(", path=path))
    script.append(call("view_file", path=path, start_line=task.metadata["lineno"],
                       end_line=task.metadata["lineno"] + 3))
    script.append(call("finish", answer=f"{path}:{qual}"))
    return script


def run(coro):
    return asyncio.run(coro)


def test_scripted_policy_solves_without_asking(task, domain):
    rec = run(run_episode(domain, task, ScriptedPolicy(solve_script(task, ask=False)),
                          EmbeddedUserSimulator(), preference_id="no_ask", prompt_kind="precise"))
    assert rec.finish_reason == "finish" and rec.answer == task.gold[0]
    assert rec.task_score == 1.0 and rec.num_turns == 3
    assert rec.questions == () and rec.trajectory_followed is True
    grep_obs = rec.tool_calls[0].observation
    assert f"{task.metadata['path']}:{task.metadata['lineno']}:" in grep_obs
    assert f"{task.metadata['lineno']:6}\t" in rec.tool_calls[1].observation
    assert rec.messages[1]["content"] == task.precise_prompt
    assert [m["role"] for m in rec.messages[:3]] == ["system", "user", "assistant"]
    assert rec.messages[2]["reasoning_content"] == "Look for it."
    assert rec.messages[3]["role"] == "tool"
    r = ppp_reward(rec, RewardConfig())
    assert r == pytest.approx(1.0)  # s = 1, no questions, no_ask followed (penalty 0, no bonus)
    assert rec.stats["malformed_calls"] == rec.stats["tool_errors"] == 0


def _runs_as_seed_oss(task, domain, script, chat_format):
    """Runs `solve_script` in the Seed-OSS format and `script` (the same steps) in `chat_format`
    and checks both give the same tool calls, observations, answer and score."""
    records = [run(run_episode(domain, task, ScriptedPolicy(steps, chat_format=fmt),
                               EmbeddedUserSimulator(), preference_id="no_ask",
                               prompt_kind="precise"))
               for steps, fmt in ((solve_script(task, ask=False), "seed_oss"),
                                  (script, chat_format))]
    seed_rec, rec = records
    assert rec.finish_reason == "finish" and rec.task_score == 1.0
    assert [(c.name, c.arguments, c.observation) for c in rec.tool_calls] == \
        [(c.name, c.arguments, c.observation) for c in seed_rec.tool_calls]
    assert rec.answer == seed_rec.answer and rec.num_turns == seed_rec.num_turns
    assert rec.stats["malformed_calls"] == 0


def _steps(task):
    """(grep arguments, view_file arguments, finish arguments) of `solve_script`."""
    path, qual = task.gold[0].split(":")
    lineno = task.metadata["lineno"]
    return ({"pattern": rf"def {qual.split('.')[-1]}\(", "path": path},
            {"path": path, "start_line": lineno, "end_line": lineno + 3},
            {"answer": f"{path}:{qual}"})


def test_hermes_format_policy_runs_its_tools_as_the_seed_oss_one_does(task, domain):
    """The same script written as Qwen's Hermes `<tool_call>{json}</tool_call>` calls."""
    from ppp_jax.sampling.chat_format import hermes

    grep, view, finish = _steps(task)
    _runs_as_seed_oss(task, domain, [
        "<think>Look for it.</think>Searching.\n" + hermes.render_tool_call("grep", grep),
        hermes.render_tool_call("view_file", view), hermes.render_tool_call("finish", finish)],
        "hermes")


def test_llama3_format_policy_runs_its_tools_as_the_seed_oss_one_does(task, domain):
    """The same script written as Llama 3's JSON calls (after text with `<|python_tag|>`, ended by
    `<|eom_id|>`; bare, ended by `<|eot_id|>`)."""
    from ppp_jax.sampling.chat_format import llama3

    grep, view, finish = _steps(task)
    _runs_as_seed_oss(task, domain, [
        "Searching.<|python_tag|>" + llama3.render_tool_call("grep", grep) + "<|eom_id|>",
        llama3.render_tool_call("view_file", view) + "<|eot_id|>",
        llama3.render_tool_call("finish", finish)], "llama3")


def test_llama3_pythonic_policy_runs_its_tools_as_the_seed_oss_one_does(task, domain):
    """The same script written as Llama 3.2's pythonic call lists."""
    from ppp_jax.sampling.chat_format import llama3

    grep, view, finish = _steps(task)
    _runs_as_seed_oss(task, domain, [
        llama3.render_assistant_text_pythonic("Searching.", [("grep", grep)]) + "<|eom_id|>",
        llama3.render_tool_call_pythonic("view_file", view) + "<|eot_id|>",
        llama3.render_tool_call_pythonic("finish", finish)], "llama3_pythonic")


def test_scripted_policy_solves_with_ask_user(task, domain):
    rec = run(run_episode(domain, task, ScriptedPolicy(solve_script(task, ask=True)),
                          EmbeddedUserSimulator(), preference_id="no_ask", prompt_kind="vague"))
    assert rec.messages[1]["content"] == task.vague_prompt
    assert rec.task_score == 1.0 and len(rec.questions) == 1
    q = rec.questions[0]
    assert q.text == "Which file and function is it in?" and q.answered and q.turn == 0
    # The embedded user reveals the hidden gold location: a high-effort question.
    assert q.effort == "high" and q.answer in task.hidden_info.splitlines()
    assert rec.trajectory_followed is False  # no_ask, and the agent asked
    # Paper reward: 1 - 0.5 (high effort) - 1 (no_ask penalty) -> clipped at 0.
    assert ppp_reward(rec, RewardConfig()) == 0.0
    assert ppp_reward(rec, RewardConfig(proactivity_weight=0, personalization_weight=0)) == 1.0
    tool_msgs = [m for m in rec.messages if m["role"] == "tool"]
    assert tool_msgs[0]["content"] == q.answer and tool_msgs[0]["name"] == "ask_user"


def test_errors_become_counted_observations_and_the_agent_recovers(task, domain):
    script = [
        "I think I should look around.",  # no call -> nudge
        "<seed:tool_call>\n<function=grep>\n<parameter=pattern>x",  # unterminated block
        call("rm", path="/"),  # unknown tool
        call("view_file", path="a.py", start_line="ten"),  # bad argument
        call("view_file", path="../../etc/passwd"),  # refused by the tool: an error observation
        call("finish", answer="") ,  # empty answer: refused, episode continues
        call("finish", answer=task.gold[0]) + call("grep", pattern="x"),  # call after finish dropped
    ]
    rec = run(run_episode(domain, task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                          preference_id="concise_question", prompt_kind="precise"))
    s = rec.stats
    assert rec.finish_reason == "finish" and rec.task_score == 1.0 and rec.num_turns == 7
    assert s["no_call_turns"] == 1 and s["malformed_calls"] == 1 and s["unknown_tool"] == 1
    assert s["bad_argument"] == 1 and s["tool_errors"] == 1 and s["empty_finish"] == 1
    assert s["dropped_after_finish"] == 1
    errors = [c.error for c in rec.tool_calls]
    assert errors == ["unknown_tool", "bad_argument", None, "empty_answer", None]
    assert "outside the repository" in rec.tool_calls[2].observation
    nudges = [m for m in rec.messages if m["role"] == "tool" and "No tool call" in m["content"]]
    assert len(nudges) == 1


def test_turn_limit_and_unfinished_episode_scores_zero(task, domain):
    rec = run(run_episode(domain, task, ScriptedPolicy([call("list_dir", path=".")] * 10),
                          EmbeddedUserSimulator(), preference_id="no_preference",
                          config=EpisodeConfig(max_turns=3)))
    assert rec.finish_reason == "turn_limit" and rec.num_turns == 3
    assert rec.answer is None and rec.task_score == 0.0


def test_token_record_masks_exactly_the_policy_tokens(task, domain):
    script = solve_script(task, ask=True)
    script.insert(1, "<seed:think>Let me think for a long time" + " hmm" * 5 + "<cut>")  # cut turn
    tok = tiny_seed_tokenizer(extra_text=[task.precise_prompt, task.vague_prompt])
    engine = ScriptedEngine(tok, script)
    policy = EnginePolicy(engine, tok)
    rec = run(run_episode(domain, task, policy, EmbeddedUserSimulator(), preference_id="concise_question"))
    assert rec.finish_reason == "finish" and rec.task_score == 1.0
    view = rec.tokens
    ct = chat.ChatTokenizer(tok)
    policy_spans = [(a, b) for a, b, m in masked_spans(rec) if m == 1]
    other_spans = [(a, b) for a, b, m in masked_spans(rec) if m == 0]
    assert len(policy_spans) == len(script) == rec.num_turns
    assert [a for a, _ in policy_spans] == list(view.turn_starts)
    # Masked spans decode to exactly what the policy produced (+ <seed:eos> unless cut).
    for (a, b), text in zip(policy_spans, script):
        expect = text[:-5] if text.endswith("<cut>") else text + "<seed:eos>"
        assert ct.decode(view.token_ids[a:b]) == expect
        assert all(lp == -0.5 for lp in view.sampler_logprobs[a:b])
    # Unmasked spans are the rendered system/user/tool turns and the generation prompts.
    first = ct.decode(view.token_ids[slice(*other_spans[0])])
    assert first.startswith("<seed:bos>system\n" + domain.system_prompt(task))
    assert first.endswith(f"<seed:bos>user\n{task.vague_prompt}<seed:eos><seed:bos>assistant\n")
    assert "def grep(pattern: str,path: str" in first  # tool documentation
    second = ct.decode(view.token_ids[slice(*other_spans[1])])
    assert second == f"<seed:bos>tool\n{rec.questions[0].answer}<seed:eos><seed:bos>assistant\n"
    third = ct.decode(view.token_ids[slice(*other_spans[2])])
    assert third.startswith("<seed:eos><seed:bos>tool\n")  # the cut turn is closed, mask 0
    assert all(lp == 0.0 for a, b in other_spans for lp in view.sampler_logprobs[a:b])
    # Each engine request sent only the new tokens of its turn, in one session.
    assert len({r.session_id for r in engine.requests}) == 1
    assert sum(len(r.prompt_ids) for r in engine.requests) == sum(b - a for a, b in other_spans)
    assert policy.engine.sessions == {}  # the session was ended
    assert rec.stats["policy_prompt_len_mismatch"] == 0


def test_hermes_engine_episode_merges_consecutive_results_and_masks_only_sampled_tokens(task, domain):
    """A Qwen-format engine episode whose turn makes two calls: both results come back as ONE
    user turn of `<tool_response>` blocks (as the Qwen templates merge them), the loss mask
    covers exactly the sampled replies, and SFT's rendering of the record is the same tokens."""
    from ppp_jax.sampling.chat_format import hermes
    from ppp_jax.train.sft import episode_tools, render_token_view
    from tests.sampling.chat_templates import qwen_tokenizer

    path, qual = task.gold[0].split(":")
    name = qual.split(".")[-1]
    lineno = task.metadata["lineno"]
    script = [
        "<think>Look for it.</think>Searching.\n"
        + hermes.render_tool_call("grep", {"pattern": rf"def {name}\(", "path": path}) + "\n"
        + hermes.render_tool_call("view_file", {"path": path, "start_line": lineno,
                                              "end_line": lineno + 3}),
        hermes.render_tool_call("finish", {"answer": f"{path}:{qual}"}),
    ]
    ct = chat.ChatTokenizer(qwen_tokenizer(), "hermes")
    engine = ScriptedEngine(ct, script)
    rec = run(run_episode(domain, task, EnginePolicy(engine, ct), EmbeddedUserSimulator(),
                          preference_id="no_ask", prompt_kind="precise"))
    assert rec.finish_reason == "finish" and rec.task_score == 1.0
    assert [m["role"] for m in rec.messages[2:]] == ["assistant", "tool", "tool", "assistant",
                                                     "tool"]
    spans = masked_spans(rec)
    view = rec.tokens
    policy = [(a, b) for a, b, m in spans if m == 1]
    assert [ct.decode(view.token_ids[a:b]) for a, b in policy] == [s + "<|im_end|>" for s in script]
    grep_obs, view_obs = (c.observation for c in rec.tool_calls[:2])
    between = ct.decode(view.token_ids[slice(*[(a, b) for a, b, m in spans if m == 0][1])])
    assert between == (f"\n<|im_start|>user\n<tool_response>\n{grep_obs}\n</tool_response>\n"
                       f"<tool_response>\n{view_obs}\n</tool_response><|im_end|>\n"
                       "<|im_start|>assistant\n")
    sft = render_token_view(rec.messages, episode_tools(domain, task), ct)
    assert sft.token_ids == view.token_ids and sft.loss_mask == view.loss_mask
    assert rec.stats["policy_prompt_len_mismatch"] == 0


def test_engine_policy_generation_prefix_is_template_not_policy(task, domain):
    from ppp_jax.sampling.chat_format.seed_oss import THINKING_BUDGET_0_PREFIX

    tok = tiny_seed_tokenizer()
    script = [call("finish", answer=task.gold[0])]
    policy = EnginePolicy(ScriptedEngine(tok, script), tok, generation_prefix=THINKING_BUDGET_0_PREFIX)
    rec = run(run_episode(domain, task, policy, EmbeddedUserSimulator(), preference_id="no_preference"))
    assert rec.task_score == 1.0 and rec.messages[2]["reasoning_content"].startswith("<seed:cot_budget")
    (a, b, m0), (c, d, m1) = masked_spans(rec)
    ct = chat.ChatTokenizer(tok)
    assert m0 == 0 and ct.decode(rec.tokens.token_ids[a:b]).endswith(
        "<seed:bos>assistant\n" + THINKING_BUDGET_0_PREFIX)
    assert m1 == 1 and ct.decode(rec.tokens.token_ids[c:d]) == script[0] + "<seed:eos>"


class SlowDomain:
    """Wraps a domain; every tool call sleeps in a worker thread first."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay
        self.name, self.task_family = inner.name, inner.task_family

    def __getattr__(self, item):
        return getattr(self.inner, item)

    async def run_tool(self, task, name, args, state):
        await asyncio.to_thread(time.sleep, self.delay)
        return await self.inner.run_tool(task, name, args, state)


class SlowUser:
    async def answer(self, ctx, question):
        await asyncio.sleep(0.4)
        return SimulatorReply("It's in the standard library.", "low", None, True, "", 1)


def test_many_episodes_run_concurrently(task, domain):
    n, delay = 8, 0.4
    script = solve_script(task, ask=True)  # 1 ask (0.4 s) + 2 tools (0.4 s each)
    specs = [EpisodeSpec(task, "no_preference", "vague", f"ep{i}") for i in range(n)]
    t0 = time.monotonic()
    recs = run(run_episodes(SlowDomain(domain, delay), specs, ScriptedPolicy(script), SlowUser(),
                            concurrency=n))
    elapsed = time.monotonic() - t0
    assert [r.task_score for r in recs] == [1.0] * n
    assert elapsed < n * 3 * delay / 2, elapsed  # serial would take n * 1.2 s = 9.6 s


def test_timeouts_and_crashing_tools_are_observations(task, domain):
    class Broken(SlowDomain):
        async def run_tool(self, task, name, args, state):
            if name == "grep":
                raise RuntimeError("boom")
            await asyncio.sleep(5)

    script = [call("grep", pattern="x"), call("list_dir"), call("finish", answer="x.py:f")]
    rec = run(run_episode(Broken(domain, 0), task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                          preference_id="no_preference", config=EpisodeConfig(tool_timeout_s=0.2)))
    assert rec.stats["tool_errors"] == 1 and rec.stats["tool_timeouts"] == 1
    assert "boom" in rec.tool_calls[0].observation and "timed out" in rec.tool_calls[1].observation
    assert rec.finish_reason == "finish" and rec.task_score == 0.0


def test_task_prompt_kind_validation():
    t = Task("t", "d", "precise", "vague", "", ("a.py:f",))
    assert t.prompt("vague") == "vague"
    with pytest.raises(ValueError):
        t.prompt("other")


class TinyDomain:
    """A minimal domain with short prompts, for the real-engine test."""

    name, task_family = "tiny", "swe"

    def system_prompt(self, task):
        return "Answer."

    def first_message(self, task, kind):
        return task.prompt(kind)

    def tool_schemas(self, task):
        from ppp_jax.envs.domains.base import function_tool
        return [function_tool("finish", "Finish.", {"answer": {"type": "string"}}, ["answer"])]

    async def run_tool(self, task, name, args, state):
        return "ERROR: no tools"

    async def score(self, task, answer):
        return 0.0

    def check_finish(self, task, args, state):
        return None


def test_engine_policy_with_the_real_jax_engine():
    """EnginePolicy on the JAX engine with a random tiny model: the token record is the engine's
    own output (sampled ids and log-probs), sessions line up, and template tokens are masked."""
    from ppp_jax.model import testing as mt
    from ppp_jax.model.config import tiny
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.config import EngineConfig

    tok = tiny_seed_tokenizer()
    model = mt.make_model(tiny(vocab_size=tok.get_vocab_size(), max_position_embeddings=4096))
    cfg = EngineConfig(num_slots=2, page_size=16, num_pages=200, max_seq_len=1536,
                       decode_steps=8, prefill_chunks=(64, 256), prefill_rows=(1,), block_pages=4)
    task = Task("t0", "tiny", "Say hi.", "Say hi.", "", ("hi",))
    with Engine(model, cfg) as engine:
        policy = EnginePolicy(engine, tok)
        rec = run(run_episode(TinyDomain(), task, policy, EmbeddedUserSimulator(),
                              preference_id="no_preference",
                              config=EpisodeConfig(max_turns=3, turn_max_new_tokens=12)))
    view = rec.tokens
    assert rec.num_turns >= 1 and len(view.token_ids) == rec.stats["context_tokens"]
    assert rec.stats["policy_prompt_len_mismatch"] == 0  # the engine saw the same conversation
    spans = masked_spans(rec)
    policy_spans = [(a, b) for a, b, m in spans if m == 1]
    assert len(policy_spans) == rec.num_turns and [a for a, _ in policy_spans] == list(view.turn_starts)
    for a, b in policy_spans:
        assert 1 <= b - a <= 12 and all(lp < 0 for lp in view.sampler_logprobs[a:b])
    ct = chat.ChatTokenizer(tok)
    first = ct.decode(view.token_ids[slice(*spans[0][:2])])
    assert first.startswith("<seed:bos>system\nAnswer.") and first.endswith("<seed:bos>assistant\n")


@pytest.mark.parametrize("from_engine", [False, True])
def test_context_limit_ends_the_episode_and_keeps_it(task, domain, from_engine):
    """A prompt that would not fit the context budget is never sent: the episode ends with
    "token_limit" and is kept, scored, with its token view (the engine would reject it). The
    budget is the episode's max_context_tokens, or the engine's max_seq_len when smaller."""
    tok = tiny_seed_tokenizer(extra_text=[task.precise_prompt, task.vague_prompt])
    script = solve_script(task, ask=False)
    probe = ScriptedEngine(tok, script)
    run(run_episode(domain, task, EnginePolicy(probe, tok), EmbeddedUserSimulator(),
                    preference_id="no_preference"))
    first_prompt = len(probe.requests[0].prompt_ids)
    second_prompt = len(probe.requests[1].prompt_ids)
    ctx1 = first_prompt + len(tok.encode(script[0]).ids) + 1  # + <seed:eos>
    assert second_prompt > 20
    limit = ctx1 + 10 + second_prompt // 2  # turn 2's prompt does not fit, but budget >= 10
    engine = ScriptedEngine(tok, script, max_seq_len=limit)
    budget = 32_768 if from_engine else limit
    rec = run(run_episode(domain, task, EnginePolicy(engine, tok), EmbeddedUserSimulator(),
                          preference_id="no_preference",
                          config=EpisodeConfig(max_context_tokens=budget, min_turn_tokens=10)))
    assert rec.finish_reason == "token_limit" and rec.stats["policy_errors"] == 0
    assert rec.num_turns == 1 and len(engine.requests) == 1
    assert rec.task_score == 0.0 and rec.answer is None
    assert len(rec.tokens.token_ids) == ctx1 == rec.stats["context_tokens"]
    assert rec.tokens.loss_mask[-1] == 1  # ends with the last sampled token
    assert rec.stats["token_limit_pending_prompt"] == second_prompt
    # The turn's generation cap leaves room for its prompt.
    assert engine.requests[0].params.max_new_tokens == min(2048, limit - first_prompt)
    assert ppp_reward(rec, RewardConfig()) == 0.0  # scorable


class RaisingUser:
    async def answer(self, ctx, question):
        raise SimulatorUnavailable("endpoint down")


def test_simulator_outage_is_counted_not_scored(task, domain):
    rec = run(run_episode(domain, task, ScriptedPolicy(solve_script(task, ask=True)),
                          RaisingUser(), preference_id="concise_question"))
    assert rec.stats["simulator_errors"] == 1 and "endpoint down" in rec.stats["simulator_error"]
    assert rec.questions == () and rec.tool_calls[0].error == "simulator_error"
    assert rec.finish_reason == "finish"


def test_llm_simulator_sees_its_raw_replies_and_malformed_is_marked(task, domain, monkeypatch):
    from ppp_jax.envs.llm_client import LLMClientConfig
    from ppp_jax.envs.simulator_llm import LLMSimulatorConfig, LLMUserSimulator
    from tests.envs.fake_openai_server import FakeOpenAIServer, error, reply

    monkeypatch.setenv("PPP_TEST_EPISODE_KEY", "k")
    tagged = "It crashes when I save.\n[Cost 1]\n[Reward 1]"
    script = [call("ask_user", question="What happens?"), call("ask_user", question="Where?"),
              call("ask_user", question="Anything else?"), call("ask_user", question="Down?"),
              call("finish", answer=task.gold[0])]
    with FakeOpenAIServer() as server:
        server.push(reply(tagged), reply("no tags at all"), reply("still none"), reply("nope [Cost 1]"),
                    reply("Nothing else.\n[Cost 1]\n[Reward 1]"), error(500))
        sim = LLMUserSimulator(LLMSimulatorConfig(client=LLMClientConfig(
            model="fake-model", base_url=server.base_url, api_key_env="PPP_TEST_EPISODE_KEY",
            max_retries=0, backoff_base_s=0.01)))

        async def go():
            try:
                return await run_episode(domain, task, ScriptedPolicy(script), sim,
                                         preference_id="concise_question")
            finally:
                await sim.close()

        rec = run(go())
        second = server.requests[1]["body"]["messages"]
        last = server.requests[-2]["body"]["messages"]
    # The simulator's history carries its own tagged reply, not the stripped text.
    assert second[2] == {"role": "assistant", "content": tagged}
    q0, q1, q2 = rec.questions
    assert q0.answer == "It crashes when I save." and q0.raw == tagged and not q0.malformed
    assert q1.malformed and q1.answer == "nope" and q1.raw == "nope [Cost 1]" and q1.followed is None
    # A malformed reply is fed back as the text the agent saw, not the broken raw output.
    assert last[4] == {"role": "assistant", "content": "nope"} and not q2.malformed
    s = rec.stats
    assert s["simulator_malformed"] == 1 and s["simulator_format_retries"] == 2
    # The endpoint failing for good is an infrastructure error, counted, with no Question.
    assert s["simulator_questions"] == 4 and s["simulator_errors"] == 1
    assert "SimulatorUnavailable" in s["simulator_error"]
    assert rec.tool_calls[3].error == "simulator_error" and len(rec.questions) == 3


class _CheckingDomain:
    """Wraps a domain with an async `check_finish`: refuses the first finish, then blanks."""

    def __init__(self, inner, fail=False):
        self.inner, self.fail, self.calls = inner, fail, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def check_finish(self, task, args, state):
        self.calls += 1
        if self.fail:
            raise RuntimeError("hook bug")
        if self.calls == 1:
            return "Not yet: look again."
        state["answer_override"] = ""
        return None


def test_domain_check_finish_hook_rejects_and_overrides(task, domain):
    from ppp_jax.envs.episode import ANSWER_OVERRIDE  # noqa: PLC0415

    assert ANSWER_OVERRIDE == "answer_override"
    script = [call("finish", answer=task.gold[0]), call("finish", answer=task.gold[0])]
    dom = _CheckingDomain(domain)
    rec = run(run_episode(dom, task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                          preference_id="no_preference", prompt_kind="precise"))
    assert rec.finish_reason == "finish" and rec.num_turns == 2 and dom.calls == 2
    assert rec.tool_calls[0].error == "finish_rejected"
    assert rec.tool_calls[0].observation == "Not yet: look again."
    assert rec.answer == "" and rec.task_score == 0.0
    assert rec.stats["finish_rejected"] == 1 and rec.stats["finish_overridden"] == 1
    # A hook that raises accepts the finish as given, and is counted.
    dom = _CheckingDomain(domain, fail=True)
    rec = run(run_episode(dom, task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                          preference_id="no_preference", prompt_kind="precise"))
    assert rec.num_turns == 1 and rec.answer == task.gold[0] and rec.task_score == 1.0
    assert rec.stats["finish_check_errors"] == 1 and "hook bug" in rec.stats["finish_check_error"]
    # Domains without the hook are unchanged.
    rec = run(run_episode(domain, task, ScriptedPolicy(script[:1]), EmbeddedUserSimulator(),
                          preference_id="no_preference", prompt_kind="precise"))
    assert rec.task_score == 1.0 and rec.stats["finish_rejected"] == 0


def test_the_agent_side_domain_keeps_the_finish_rule(task, domain):
    """Regression: PreferenceDomain (the domain the trainer and the evaluator run) forwards
    `check_finish`, so a domain's finish rule (BrowseComp-Plus: no answer without a search) holds
    in training and evaluation too, not only on the bare domain."""
    from ppp_jax.rollout.agent_domain import PreferenceDomain  # noqa: PLC0415

    script = [call("finish", answer=task.gold[0]), call("finish", answer=task.gold[0])]
    inner = _CheckingDomain(domain)
    rec = run(run_episode(PreferenceDomain(inner), task, ScriptedPolicy(script),
                          EmbeddedUserSimulator(), preference_id="no_preference",
                          prompt_kind="precise"))
    assert inner.calls == 2 and rec.stats["finish_rejected"] == 1
    assert rec.answer == "" and rec.stats["finish_overridden"] == 1


def test_qwen3_thinking_episode_opens_turns_with_the_templates_prefix_and_sft_renders_it_alike(
        task, domain):
    """A Qwen3 2507 thinking checkpoint's template writes `<think>\\n` after the ChatML generation
    prompt; `template_generation_prefix` finds it, the engine session forces it before every
    sampled turn (mask 0), the prompt before the sampled tokens is the template's rendering, and
    SFT's rendering of the record (whose assistant texts hold the prefix) is the same tokens."""
    from ppp_jax.sampling.chat_format import hermes, template_generation_prefix
    from ppp_jax.train.sft import episode_tools, render_token_view
    from tests.sampling.chat_templates import qwen3_tokenizer

    hf = qwen3_tokenizer("qwen3_thinking")
    prefix = template_generation_prefix(hf, "hermes")
    assert prefix == "<think>\n"
    script = ["Named in the report.\n</think>\n\n"
              + hermes.render_tool_call("finish", {"answer": task.gold[0]})]
    ct = chat.ChatTokenizer(hf, "hermes")
    policy = EnginePolicy(ScriptedEngine(ct, script), ct, generation_prefix=prefix)
    rec = run(run_episode(domain, task, policy, EmbeddedUserSimulator(),
                          preference_id="no_ask", prompt_kind="precise"))
    assert rec.finish_reason == "finish" and rec.task_score == 1.0
    (a, b, m0), (c, d, m1) = masked_spans(rec)
    assert m0 == 0 and ct.decode(rec.tokens.token_ids[a:b]).endswith(
        "<|im_start|>assistant\n<think>\n")
    assert m1 == 1 and ct.decode(rec.tokens.token_ids[c:d]) == script[0] + "<|im_end|>"
    template = hf.apply_chat_template(rec.messages[:2], tools=episode_tools(domain, task),
                                      tokenize=False, add_generation_prompt=True)
    assert ct.decode(rec.tokens.token_ids[a:b]) == template
    assert rec.messages[2]["raw"].startswith(prefix)
    sft = render_token_view(rec.messages, episode_tools(domain, task), ct, prefix)
    assert sft.token_ids == rec.tokens.token_ids and sft.loss_mask == rec.tokens.loss_mask
    # Without the prefix SFT would train the model to write `<think>\n` itself.
    assert render_token_view(rec.messages, episode_tools(domain, task), ct).loss_mask != \
        rec.tokens.loss_mask
