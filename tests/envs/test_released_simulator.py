"""What the simulated user sees and says under `profile: released`: tags shown to the agent (both
backends), the released canned refusal past the cap, and the amateur user's gold location
hidden for SWE only."""

import asyncio

from ppp_jax.envs.simulator import CAP_REPLY, RELEASED_CAP_REPLY, SimulatorContext
from ppp_jax.envs.simulator_backends import SimulatorConfig, make_simulator
from ppp_jax.envs.simulator_llm import build_system_prompt

PRECISE = "Saving a drawing with an empty layer crashes the editor. Expected: empty layers are skipped."


def ctx(pref="concise_question", answered=0, family="swe", hidden="editor/save.py:write_layers"):
    return SimulatorContext(PRECISE, hidden, pref, answered, task_family=family)


def answer(cfg, c, q):
    return asyncio.run(make_simulator(cfg).answer(c, q))


def test_embedded_tags_follow_the_setting():
    q = "Does saving crash with an empty layer?"
    plain = answer(SimulatorConfig(), ctx(), q)
    tagged = answer(SimulatorConfig(show_tags_to_agent=True), ctx(), q)
    assert plain.level == tagged.level == 1 and plain.effort == tagged.effort == "low"
    assert "[Cost" not in plain.text
    verdict = int(plain.followed)  # concise_question has an LLM rubric: a [Reward k] line
    assert tagged.text == f"{plain.text}\n[Cost 1]\n[Reward {verdict}]"
    # no rubric (no_preference): the cost line only
    bare = answer(SimulatorConfig(show_tags_to_agent=True), ctx("no_preference"), q)
    assert bare.text.endswith("\n[Cost 1]") and "[Reward" not in bare.text


def test_cap_reply_text_and_no_tags():
    for cfg, text in ((SimulatorConfig(), CAP_REPLY),
                      (SimulatorConfig(show_tags_to_agent=True, cap_reply=RELEASED_CAP_REPLY),
                       RELEASED_CAP_REPLY)):
        r = answer(cfg, ctx(answered=4), "One more question?")
        assert r.text == text and not r.answered and r.level is None and r.effort == "medium"


def test_amateur_hides_the_gold_for_swe_and_by_setting_for_search():
    docs = "[DOC d01] The lighthouse was designed by Ottilie Brask"
    search = ctx("amateur", family="search", hidden=docs)
    assert docs not in build_system_prompt(search, amateur_hidden="all")
    assert docs in build_system_prompt(search, amateur_hidden="swe")  # released: search keeps it
    swe = ctx("amateur")
    for hidden in ("all", "swe"):
        assert "editor/save.py:write_layers" not in build_system_prompt(swe, amateur_hidden=hidden)
    assert "editor/save.py:write_layers" in build_system_prompt(ctx("professional"))
    # the embedded user answers an amateur's search question from the documents under "swe"
    q = "Can you give me a hint about the designer name?"
    c = ctx("amateur", family="search", hidden=docs)
    kept = answer(SimulatorConfig(amateur_hidden="swe"), c, q)
    hid = answer(SimulatorConfig(), c, q)
    assert (kept.text, kept.effort, kept.level) == (docs, "high", 3)
    assert (hid.text, hid.effort) == ("I don't know.", "medium")


def test_released_preference_strings_replace_ours(tmp_path, fake, monkeypatch):
    """Rows shaped like the released parquet files: the LLM user is told their strings, a
    `[function]` rule means no [Reward] tag, and a conflicting or unknown entry is refused."""
    import json

    import pytest

    from ppp_jax.envs.domains.rows import DataError
    from ppp_jax.envs.preference_texts import read_preference_texts

    concise = {"preference": "RELEASED-CONCISE: the user wants very short questions.",
               "reward": "RELEASED-RULE: one short sentence -> [Reward 1]."}
    rows = [
        {"extra_info": {"preference": {"concise_question": concise, "no_ask": None}}},
        {"extra_info": json.dumps({"preference": {
            "preference_name": "answer_more",
            "answer_more": {"preference": "RELEASED-MORE", "reward": "[function] ask_more"}}})},
        {"extra_info": {"is_vague": False}},  # no preference: skipped
    ]
    path = tmp_path / "test_id.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = read_preference_texts([str(path)])
    assert texts["concise_question"].instruction.startswith("RELEASED-CONCISE")
    assert texts["answer_more"].rubric is None and set(texts) == {"concise_question", "answer_more"}

    prompt = build_system_prompt(ctx(), texts=texts)
    assert "RELEASED-CONCISE" in prompt and "RELEASED-RULE" in prompt
    assert "RELEASED" not in build_system_prompt(ctx())  # ours without the files

    monkeypatch.setenv("PPP_TEST_TEXTS_KEY", "sk-test")
    cfg = SimulatorConfig(backend="llm", model="fake-model", base_url=fake.base_url,
                          api_key_env="PPP_TEST_TEXTS_KEY", max_retries=0,
                          preference_texts=(str(path),))
    from tests.envs.fake_openai_server import reply

    fake.push(reply("Sure, more than three is fine.\n[Cost 1]"))
    r = answer(cfg, ctx("answer_more"), "Can I ask you a few things?")
    assert r.level == 1 and not r.malformed  # no [Reward] line expected: "[function]" rule
    sent = fake.requests[-1]["body"]["messages"][0]["content"]
    assert "RELEASED-MORE" in sent

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"extra_info": {"preference": {"concise_question": {
        "preference": "other text", "reward": "None"}}}}) + "\n")
    with pytest.raises(DataError, match="differs from an earlier row"):
        read_preference_texts([str(path), str(bad)])
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"extra_info": {"preference": {"be_nice": {
        "preference": "x", "reward": "None"}}}}) + "\n")
    with pytest.raises(DataError, match="unknown preference 'be_nice'"):
        read_preference_texts([str(unknown)])
