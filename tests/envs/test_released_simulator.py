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
