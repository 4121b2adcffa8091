"""The embedded (offline) user simulator: effort grading, preference manners, cap, determinism."""

import asyncio

import pytest

from ppp_jax.envs.preferences import UnknownPreferenceError
from ppp_jax.envs.simulator import CAP_REPLY, IDK_REPLY, SimulatorContext, UserSimulator
from ppp_jax.envs.simulator_embedded import (
    EmbeddedSimulatorConfig,
    EmbeddedUserSimulator,
    bm25_scores,
)

PRECISE = """Exporting a report to CSV writes timestamps in local time instead of UTC.
The import step reads them back as UTC, so every imported record is shifted by the local offset.
This started after the timezone handling was reworked last month.
Expected: exported timestamps should be written in UTC with a trailing Z.
It happens on every export, for every user."""
HIDDEN = "reports/export.py:write_csv_row\nreports/timeutil.py:to_local"


def ctx(pref="no_preference", answered=0, **kw):
    return SimulatorContext(PRECISE, HIDDEN, pref, answered, **kw)


def ask(sim, c, q):
    return asyncio.run(sim.answer(c, q))


SIM = EmbeddedUserSimulator()


def test_it_is_a_user_simulator():
    assert isinstance(SIM, UserSimulator)


def test_low_effort_answer_comes_from_the_precise_prompt():
    r = ask(SIM, ctx(), "Should exported timestamps be in UTC or local time?")
    assert r.effort == "low" and r.answered and r.level == 1
    assert "UTC" in r.text
    assert "Expected: exported timestamps should be written in UTC with a trailing Z." in r.text
    assert "reports/" not in r.text  # hidden facts are not revealed for a prompt question
    r = ask(SIM, ctx(), "Does it happen on every export?")
    assert r.effort == "low" and "every export" in r.text


def test_high_effort_when_asking_for_hidden_location():
    r = ask(SIM, ctx(), "Which file and function write the CSV rows?")
    assert r.effort == "high"
    assert r.text == "reports/export.py:write_csv_row"
    assert r.level == 5  # a function name, on the released SWE scale
    r = ask(SIM, ctx(task_family="search"), "Where is the local time conversion done?")
    assert r.effort == "high" and r.level == 3 and "to_local" in r.text


def test_medium_effort_when_user_cannot_answer():
    r = ask(SIM, ctx(), "What database engine does your company use for billing?")
    assert (r.effort, r.text, r.level) == ("medium", IDK_REPLY, 3)
    # No hidden info: a location question gets "I don't know", not an invented answer.
    r = ask(SIM, SimulatorContext(PRECISE, "", "no_preference"), "Which file should I change?")
    assert r.effort == "medium" and r.text == IDK_REPLY


def test_cap_refuses_with_medium_effort():
    sim = EmbeddedUserSimulator(EmbeddedSimulatorConfig(max_questions=2))
    assert ask(sim, ctx(answered=1), "Does it happen on every export?").answered
    r = ask(sim, ctx(answered=2), "Does it happen on every export?")
    assert (r.answered, r.effort, r.followed, r.text) == (False, "medium", None, CAP_REPLY)


def test_compliance_from_rule_judge():
    assert ask(SIM, ctx("concise_question"), "Should exports use UTC?").followed is True
    long_q = "Hello. I have read the report. Should exports use UTC?"
    assert ask(SIM, ctx("concise_question"), long_q).followed is False
    assert ask(SIM, ctx("json"), '{"q": "Should exports use UTC?"}').followed is True
    # Trajectory-judged and unjudged preferences: no per-question verdict.
    assert ask(SIM, ctx("answer_more"), "Should exports use UTC?").followed is None
    assert ask(SIM, ctx("professional"), "Should exports use UTC?").followed is None


def test_do_selection_answers_with_a_letter_or_not_at_all():
    r = ask(SIM, ctx("do_selection"), "How should timestamps be exported? A) local time B) UTC with a trailing Z")
    assert (r.text, r.effort, r.followed) == ("B", "low", True)
    r = ask(SIM, ctx("do_selection"), "How should timestamps be exported?")
    assert (r.text, r.effort, r.followed) == (IDK_REPLY, "medium", False)


def test_amateur_never_reveals_the_location_and_refuses_technical_questions():
    r = ask(SIM, ctx("amateur"), "Which function writes the CSV rows?")
    assert (r.effort, r.text, r.followed) == ("medium", IDK_REPLY, False)
    r = ask(SIM, ctx("amateur"), "Where should I look for the problem?")
    assert r.effort == "medium" and "reports" not in r.text  # hidden facts withheld
    r = ask(SIM, ctx("amateur"), "Should the exported times be in UTC?")
    assert r.effort == "low" and r.followed is True


def test_replies_in_the_manner_of_the_preference():
    r = ask(SIM, ctx("capital"), "SHOULD EXPORTED TIMESTAMPS BE IN UTC?")
    assert r.text == r.text.upper() and r.followed is True
    r = ask(SIM, ctx("commas"), "Does it happen on every export for every user?")
    assert "," not in r.text


def test_capital_reply_keeps_a_pasted_location_as_it_is():
    # a user who writes in capitals still pastes the location; retyped, it would name nothing
    r = ask(SIM, ctx("capital"), "Which file and function should I fix?")
    assert r.text == "reports/export.py:write_csv_row"
    c = SimulatorContext("The report writer in reports/export.py:write_csv_row drops the Z.",
                         HIDDEN, "capital", task_family="func_loc")
    r = ask(SIM, c, "What does the report writer drop?")
    assert r.text == "THE REPORT WRITER IN reports/export.py:write_csv_row DROPS THE Z."


def test_deterministic():
    qs = ["Should exported timestamps be in UTC?", "Which file?", "What is your favourite colour?"]
    a = [ask(EmbeddedUserSimulator(), ctx("length"), q) for q in qs]
    b = [ask(EmbeddedUserSimulator(), ctx("length"), q) for q in qs]
    assert a == b
    assert [r.effort for r in a] == ["low", "high", "medium"]


def test_bad_input():
    with pytest.raises(UnknownPreferenceError):
        ask(SIM, ctx("nope"), "Which file?")
    with pytest.raises(TypeError):
        ask(SIM, ctx(), None)
    with pytest.raises(ValueError):
        EmbeddedSimulatorConfig(min_overlap=0)


def test_bm25_prefers_matching_document():
    s = bm25_scores(["utc", "export"], [["utc", "export", "time"], ["import", "records"], []])
    assert s[0] > 0 and s[1] == 0 and s[2] == 0


# SWE-style hidden information: the gold files first, then the gold functions.
SWE_HIDDEN = ("reports/export.py\nreports/timeutil.py\n"
              "reports/export.py:write_csv_row\nreports/timeutil.py:to_local")
FUNCTION_QUESTIONS = [
    "Which function should I change?",  # shares no word with either hidden line
    "What method needs fixing?",
    "Which function or method is wrong?",
    "What is the name of the function I should edit?",
    "Could you point me to the function to modify?",
    "Which class method is responsible?",
    "Which routine in the codebase should be updated?",
]


@pytest.mark.parametrize("question", FUNCTION_QUESTIONS)
def test_a_function_question_gets_a_function_not_a_file(question):
    r = ask(SIM, SimulatorContext(PRECISE, SWE_HIDDEN, "no_preference"), question)
    assert r.effort == "high" and r.level == 5, (question, r)
    assert r.text in ("reports/export.py:write_csv_row", "reports/timeutil.py:to_local"), r.text


def test_function_questions_pick_the_best_matching_function_and_respect_the_preference():
    c = SimulatorContext(PRECISE, SWE_HIDDEN, "no_preference")
    assert ask(SIM, c, "Which function converts to local time?").text == "reports/timeutil.py:to_local"
    # A file question may still be answered with a file path.
    r = ask(SIM, c, "Which file should I look at?")
    assert r.effort == "high" and r.text.startswith("reports/")
    # Refusals per preference are unchanged: amateur users never reveal the location.
    r = ask(SIM, SimulatorContext(PRECISE, SWE_HIDDEN, "amateur"), "Which function should I change?")
    assert (r.effort, r.text) == ("medium", IDK_REPLY)
    # A question about what the code should do is not a request for its location.
    for q in ("What should the function return for exported timestamps, UTC or local time?",
              "Which value should the function write, UTC?"):
        r = ask(SIM, c, q)
        assert r.effort != "high" and "reports/" not in r.text, (q, r)
    # Only files hidden: the function question falls back to the best file.
    r = ask(SIM, SimulatorContext(PRECISE, "reports/export.py", "no_preference"),
            "Which function should I change?")
    assert r.text == "reports/export.py" and r.level == 4
