"""The LLM user simulator and the chat client, against a real fake server on loopback."""

import asyncio
import functools
import logging

import pytest

from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig, LLMRequestError, backoff_delay
from ppp_jax.envs.simulator import CAP_REPLY, SimulatorContext, SimulatorUnavailable
from ppp_jax.envs.simulator_llm import (
    LLMSimulatorConfig,
    LLMUserSimulator,
    MalformedReplyError,
    build_messages,
    build_system_prompt,
    parse_reply,
)
from tests.envs.fake_openai_server import (
    delayed,
    error,
    malformed,
    reply,
    tool_call_reply,
)

KEY_ENV = "PPP_TEST_SIM_KEY"
SECRET = "sk-test-DO-NOT-LOG-4f9a1c"
PRECISE = "Saving a drawing with an empty layer crashes the editor. Expected: empty layers are skipped."
HIDDEN = "editor/save.py:write_layers"


@pytest.fixture
def fake(fake, monkeypatch):  # the shared fake server (tests/conftest.py), with the API key set
    monkeypatch.setenv(KEY_ENV, SECRET)
    return fake


def client_cfg(server, **kw):
    base = dict(model="fake-model", base_url=server.base_url, api_key_env=KEY_ENV,
                timeout_s=5.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
    base.update(kw)
    return LLMClientConfig(**base)


_OPEN_CLIENTS: list[LLMClient] = []


def make_client(server, **kw):
    client = LLMClient(client_cfg(server, **kw))
    _OPEN_CLIENTS.append(client)
    return client


def make_sim(server, client_kw=None, **kw):
    cfg = LLMSimulatorConfig(client=client_cfg(server, **(client_kw or {})), **kw)
    return LLMUserSimulator(cfg, client=make_client(server, **(client_kw or {})))


def ctx(pref="concise_question", answered=0, **kw):
    return SimulatorContext(PRECISE, HIDDEN, pref, answered, **kw)


def asynctest(fn):
    """Runs an async test body in one fresh event loop (clients live inside that loop)."""

    async def body(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        finally:
            while _OPEN_CLIENTS:
                await _OPEN_CLIENTS.pop().close()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(body(*args, **kwargs))

    return wrapper


# --- prompt content ------------------------------------------------------------------------


def test_system_prompt_content():
    p = build_system_prompt(ctx("do_selection"))
    assert "lettered options" in p  # the preference instruction (our wording)
    assert "Judging rule:" in p and "[Reward 1]" in p
    assert PRECISE in p and HIDDEN in p
    for level in range(1, 6):
        assert f"Cost {level}:" in p
    assert "never ask the agent a question" in p
    # No rubric -> told there is none, and no reward line in the format.
    p = build_system_prompt(ctx("answer_more"))
    assert "no judging rule" in p and "[Reward 1]" not in p
    # Amateur users never see the gold location.
    assert HIDDEN not in build_system_prompt(ctx("amateur"))
    # Search scale and document block.
    p = build_system_prompt(ctx(task_family="search"))
    assert "Cost 3: you used the ground-truth document excerpts." in p and "Cost 4" not in p


def test_messages_carry_history_and_question():
    msgs = build_messages(ctx(history=(("Which OS?", "Linux."),)), "Is it every save?")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "The agent asks: Which OS?" in msgs[1]["content"]
    assert msgs[2]["content"] == "Linux."
    assert "The agent asks: Is it every save?" in msgs[3]["content"]


@asynctest
async def test_request_sent_to_server_contains_the_prompt(fake):
    fake.push(reply("Yes, every time.\n[Cost 1]\n[Reward 1]"))
    sim = make_sim(fake)
    await sim.answer(ctx(), "Every save?")
    body = fake.requests[-1]["body"]
    assert body["model"] == "fake-model"
    assert body["messages"][0]["role"] == "system" and PRECISE in body["messages"][0]["content"]
    assert "Every save?" in body["messages"][-1]["content"]
    assert fake.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET}"


# --- tag parsing ---------------------------------------------------------------------------


def test_parse_reply_strict():
    p = parse_reply("Yes, every time.\n[Cost 1]\n[Reward 1]", "swe", True)
    assert (p.body, p.level, p.followed) == ("Yes, every time.", 1, True)
    assert parse_reply("Nope.\n\n[Cost 3]\n[Reward 0]\n", "swe", True).followed is False
    assert parse_reply("In save.py.\n[Cost 4]", "swe", False).level == 4
    bad = [
        ("Yes.", "swe", False),  # no tag
        ("Yes. [Cost 1]", "swe", False),  # tag not on its own line
        ("Yes.\n[Cost 1]", "swe", True),  # reward missing
        ("Yes.\n[Reward 1]\n[Cost 1]", "swe", True),  # wrong order
        ("Yes.\n[Cost 1]\n[Reward 1]", "swe", False),  # reward present without a rubric
        ("Yes.\n[Cost 5]", "search", False),  # not on the search scale
        ("[Cost 1]", "swe", False),  # empty body
        ("Yes [Cost 2].\n[Cost 1]", "swe", False),  # tag inside body
        ("Yes.\n[Cost 9]", "swe", False),
    ]
    for raw, fam, rew in bad:
        with pytest.raises(MalformedReplyError):
            parse_reply(raw, fam, rew)


@asynctest
async def test_tags_stripped_by_default_and_shown_with_switch(fake):
    raw = "It crashes on every save.\n[Cost 1]\n[Reward 1]"
    fake.push(reply(raw), reply(raw))
    r = await make_sim(fake).answer(ctx(), "Every save?")
    assert (r.text, r.effort, r.followed, r.level, r.raw) == ("It crashes on every save.", "low", True, 1, raw)
    r = await make_sim(fake, show_tags_to_agent=True).answer(ctx(), "Every save?")
    assert r.text == raw


@asynctest
async def test_effort_mapping_from_levels(fake):
    fake.push(reply("No idea.\n[Cost 3]\n[Reward 0]"), reply("write_layers.\n[Cost 5]\n[Reward 1]"),
              reply("The docs say so.\n[Cost 3]"))
    sim = make_sim(fake)
    r = await sim.answer(ctx(), "Hmm?")
    assert (r.effort, r.followed) == ("medium", False)
    assert (await sim.answer(ctx(), "Which function?")).effort == "high"
    r = await sim.answer(ctx("no_preference", task_family="search"), "Which doc?")
    assert (r.effort, r.followed) == ("high", None)


# --- retries, timeouts, malformed ----------------------------------------------------------


@asynctest
async def test_retry_on_500_and_429(fake):
    fake.push(error(500), error(429), error(503), reply("Yes.\n[Cost 1]\n[Reward 1]"))
    sim = make_sim(fake)
    r = await sim.answer(ctx(), "Every save?")
    assert r.text == "Yes." and not r.malformed
    s = sim.client.stats
    assert s["retries"] == 3 and s["retry_server_error"] == 2 and s["retry_rate_limit"] == 1
    assert s["successes"] == 1 and len(fake.requests) == 4


@asynctest
async def test_non_retriable_4xx_and_exhausted_retries(fake):
    fake.push(error(400, "bad request"))
    client = make_client(fake)
    with pytest.raises(LLMRequestError, match="non-retriable"):
        await client.chat([{"role": "user", "content": "hi"}])
    assert client.stats["retries"] == 0 and client.stats["failures"] == 1
    fake.push(*[error(500)] * 4)
    with pytest.raises(LLMRequestError, match="gave up after 4 tries"):
        await client.chat([{"role": "user", "content": "hi"}])


@asynctest
async def test_timeout_is_retried_then_counted(fake):
    fake.push(delayed(reply("late\n[Cost 1]\n[Reward 1]"), 0.8), reply("Yes.\n[Cost 1]\n[Reward 1]"))
    sim = make_sim(fake, client_kw=dict(timeout_s=0.3))
    r = await sim.answer(ctx(), "Every save?")
    assert r.text == "Yes." and sim.client.stats["retry_timeout"] == 1
    assert r.request_retries == 1 and r.format_retries == 0
    # Every attempt times out: the simulator counts a request failure and raises a distinct,
    # documented error (never an answer that would be scored).
    fake.push(*[delayed(reply("late"), 0.6)] * 2)
    sim = make_sim(fake, client_kw=dict(timeout_s=0.2, max_retries=1))
    with pytest.raises(SimulatorUnavailable, match="gave up after 2 tries"):
        await sim.answer(ctx(), "Every save?")
    assert sim.stats["request_failures"] == 1 and sim.client.stats["retry_timeout"] == 1
    assert sim.stats["malformed"] == 0


@asynctest
async def test_malformed_http_body_is_retried(fake):
    fake.push(malformed("this is not json"), malformed('{"choices": []}'), malformed('{"foo": 1}'),
              malformed("<html>", content_type="text/html"), reply("Yes.\n[Cost 1]\n[Reward 1]"))
    sim = make_sim(fake, client_kw=dict(max_retries=4))
    r = await sim.answer(ctx(), "Every save?")
    assert r.text == "Yes." and sim.client.stats["retry_malformed"] == 4


@asynctest
async def test_malformed_reply_format_retried_then_counted(fake):
    fake.push(reply("Yes, always."), reply("Yes.\n[Cost 1]\n[Reward 1]"))
    sim = make_sim(fake)
    r = await sim.answer(ctx(), "Every save?")
    assert not r.malformed and sim.stats["format_retries"] == 1 and sim.stats["malformed"] == 0
    assert r.format_retries == 1
    fake.push(reply("Yes, always. [Cost 1]"), reply("Sure.\n[Cost 7]\n[Reward 1]"), reply("Hm.\n[Cost 1]"))
    r = await sim.answer(ctx(), "Every save?")
    assert r.malformed and sim.stats["malformed"] == 1 and sim.stats["format_retries"] == 3
    assert (r.effort, r.followed, r.level, r.answered) == ("medium", None, None, True)
    assert r.text == "Hm." and "[Cost" not in r.text  # tags never leak in the fallback
    assert r.format_retries == 2


@asynctest
async def test_cap_makes_no_request(fake):
    sim = make_sim(fake, max_questions=4)
    r = await sim.answer(ctx(answered=4), "Fifth?")
    assert (r.answered, r.effort, r.text) == (False, "medium", CAP_REPLY)
    assert fake.requests == [] and sim.stats["capped"] == 1


@asynctest
async def test_compliance_from_rule_or_both(fake):
    fake.push(reply("Yes.\n[Cost 1]\n[Reward 0]"), reply("Yes.\n[Cost 1]"))
    sim = make_sim(fake, compliance_judge="both")
    r = await sim.answer(ctx(), "Every save?")
    assert (r.followed, r.rule_followed) == (False, True)
    sim = make_sim(fake, compliance_judge="rule")
    r = await sim.answer(ctx(), "Every save?")
    assert (r.followed, r.rule_followed) == (True, None)
    assert "Judging rule" not in fake.requests[-1]["body"]["messages"][0]["content"]


@asynctest
async def test_concurrency_limit(fake):
    fake.responder = lambda body: delayed(reply("ok"), 0.2)
    client = make_client(fake, max_concurrency=2)

    async def many():
        await asyncio.gather(*(client.chat([{"role": "user", "content": str(i)}]) for i in range(6)))

    await many()
    assert fake.max_in_flight == 2 and client.stats["successes"] == 6


@asynctest
async def test_tool_call_replies_are_returned(fake):
    fake.push(tool_call_reply("ask_user", {"query": "Which OS?"}))
    client = make_client(fake)
    tools = [{"type": "function", "function": {"name": "ask_user", "parameters": {"type": "object"}}}]
    res = await client.chat([{"role": "user", "content": "go"}], tools=tools)
    assert res.tool_calls[0]["name"] == "ask_user"
    assert res.tool_calls[0]["arguments"] == '{"query": "Which OS?"}'
    assert res.finish_reason == "tool_calls"
    assert fake.requests[-1]["body"]["tools"] == tools


@asynctest
async def test_api_key_never_logged(fake, caplog):
    caplog.set_level(logging.DEBUG)  # root: includes openai, httpx, our modules
    for name in ("openai", "httpx", "httpcore", "ppp_jax"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    fake.push(error(500), reply("Yes.\n[Cost 1]\n[Reward 1]"), reply("bad format"), reply("bad"),
              reply("bad"), error(401, "invalid key"))
    sim = make_sim(fake)
    await sim.answer(ctx(), "Every save?")
    await sim.answer(ctx(), "Every save?")
    errors = []
    try:
        await sim.client.chat([{"role": "user", "content": "x"}])
    except LLMRequestError as e:
        errors.append(str(e))
    assert errors and len(caplog.records) > 3  # something was actually logged
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"  # key was used
    assert SECRET not in caplog.text
    assert all(SECRET not in e for e in errors)
    assert SECRET not in repr(sim.client) and SECRET not in repr(sim.config)


def test_missing_required_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(LLMRequestError, match=KEY_ENV):
        LLMClient(LLMClientConfig(api_key_env=KEY_ENV, require_api_key=True))


def test_backoff_is_exponential_and_capped():
    assert [backoff_delay(a, 1.0, 5.0) for a in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_configs_load_with_the_config_system(monkeypatch):
    from ppp_jax.config.loader import ConfigError, from_dict
    from ppp_jax.envs.simulator_backends import SimulatorConfig, make_simulator
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator

    cfg = from_dict(LLMSimulatorConfig, {"client": {"model": "m", "base_url": "http://127.0.0.1:1/v1"},
                                         "show_tags_to_agent": True, "compliance_judge": "both"})
    assert cfg.client.model == "m" and cfg.show_tags_to_agent
    with pytest.raises(ConfigError):
        from_dict(LLMSimulatorConfig, {"compliance_judge": "vibes"})
    assert isinstance(make_simulator(SimulatorConfig()), EmbeddedUserSimulator)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sim = make_simulator(from_dict(SimulatorConfig, {"backend": "llm", "max_questions": 2,
                                                     "base_url": "http://127.0.0.1:1/v1"}))
    assert isinstance(sim, LLMUserSimulator) and sim.config.max_questions == 2
    with pytest.raises(ConfigError):
        from_dict(SimulatorConfig, {"backend": "gpt"})


def test_client_survives_a_new_event_loop_per_round(fake):
    """The trainer runs each rollout round under its own asyncio.run: the simulator's client (and
    its semaphore) must work in round 2 and later, with the concurrency limit contended."""
    fake.responder = lambda body: delayed(reply("Yes.\n[Cost 1]\n[Reward 1]"), 0.05)
    sim = make_sim(fake, client_kw=dict(max_concurrency=2, max_retries=0))

    async def round_():
        return await asyncio.gather(*(sim.answer(ctx(), f"Every save {i}?") for i in range(5)))

    for _ in range(3):
        replies = asyncio.run(round_())
        assert [r.text for r in replies] == ["Yes."] * 5
        assert not any(r.malformed for r in replies)
    assert sim.client.stats["successes"] == 15 and sim.client.stats["failures"] == 0
    assert sim.client.stats["loop_rebinds"] == 2
    assert fake.max_in_flight <= 2
    asyncio.run(sim.close())  # closing from yet another loop is safe
    _OPEN_CLIENTS.remove(sim.client)
