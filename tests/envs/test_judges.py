"""Rule judges: the labelled question set, the trajectory rules, and judge agreement."""

import collections
import json
import math
from importlib import resources

import pytest

from ppp_jax.envs import judges
from ppp_jax.envs.preferences import UnknownPreferenceError, list_preferences
from ppp_jax.envs.records import ToolCall


def _labelled():
    text = resources.files("ppp_jax.envs").joinpath("data/labelled_questions.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


LABELLED = _labelled()
TEXT_JUDGED = [p.id for p in list_preferences() if p.rule_judge == "text"]


def test_labelled_set_covers_every_text_judged_preference():
    counts = collections.Counter((r["preference"], r["followed"]) for r in LABELLED)
    assert len(TEXT_JUDGED) == 13
    for pid in TEXT_JUDGED:
        assert counts[(pid, True)] >= 5, pid
        assert counts[(pid, False)] >= 5, pid


@pytest.mark.parametrize("pid", TEXT_JUDGED)
def test_rule_judge_classifies_the_labelled_set(pid):
    rows = [r for r in LABELLED if r["preference"] == pid]
    wrong = [r["question"] for r in rows if judges.judge_question(pid, r["question"]) is not r["followed"]]
    assert wrong == []


def test_non_text_preferences_have_no_question_verdict():
    for pid in ("no_preference", "professional", "answer_more", "only_begin", "no_ask", "ask_many", "first_try"):
        assert judges.judge_question(pid, "Which file?") is None


def test_judge_question_rejects_bad_input():
    with pytest.raises(UnknownPreferenceError):
        judges.judge_question("nope", "Which file?")
    with pytest.raises(TypeError):
        judges.judge_question("json", {"question": "x"})


def test_commas_of_other_scripts():
    for ch in (",", "，", "、", "،", "﹐", "⹁", "՝"):
        assert judges.judge_question("commas", f"Which file{ch} the first?") is False, hex(ord(ch))
    assert judges.judge_question("commas", "Which file is it?") is True


def test_lang_multi_counts_languages():
    langs = judges.detected_languages(
        "Which file? Quale file devo modificare? Quel fichier dois-je modifier? Welche Datei soll ich ändern?"
    )
    assert langs == {"ENGLISH", "ITALIAN", "FRENCH", "GERMAN"}


def _ask(turn):
    return ToolCall("ask_user", {"query": "q"}, turn)


def _bad_ask(turn, error="bad_argument"):
    return ToolCall("ask_user", {}, turn, "ERROR: ...", error)


def _work(turn, name="execute_bash"):
    return ToolCall(name, {"command": "ls"}, turn)


@pytest.mark.parametrize(
    "pid, calls, expected",
    [
        ("answer_more", [_ask(0), _ask(1)], False),
        ("answer_more", [_ask(0), _ask(1), _work(2), _ask(3)], True),
        ("no_ask", [_work(0), _work(1)], True),
        ("no_ask", [_work(0), _ask(1)], False),
        ("ask_many", [_ask(0), _work(1)], True),
        ("ask_many", [_ask(0), _ask(1)], False),
        ("ask_many", [], True),
        ("only_begin", [_ask(0), _ask(0), _work(1)], True),
        # Turn 0 is the agent's first turn even when it made no call: asking later violates.
        ("only_begin", [_work(1), _ask(1)], False),
        ("only_begin", [_ask(2)], False),
        ("only_begin", [_ask(0), _bad_ask(3)], True),  # a failed ask is not a question
        # Only valid ask calls (error None) count, as in len(record.questions).
        ("answer_more", [_ask(0), _ask(1), _bad_ask(2)], False),
        ("answer_more", [_ask(0), _ask(1), _bad_ask(2, "simulator_error"), _ask(3)], True),
        ("no_ask", [_bad_ask(0)], True),
        ("ask_many", [_ask(0), _bad_ask(1)], True),
        ("first_try", [_bad_ask(0), _work(1)], True),
        ("only_begin", [_ask(0), _work(1), _ask(2)], False),
        ("only_begin", [_work(0), _ask(1)], False),
        ("first_try", [_work(0), _ask(1)], True),
        ("first_try", [_ask(0), _work(1)], False),
        ("first_try", [ToolCall("think", {}, 0), _ask(1)], False),  # thinking is not trying
        ("first_try", [_work(0)], True),
        ("first_try", [ToolCall("ask_question", {"query": "x"}, 0)], False),  # released name
    ],
)
def test_trajectory_rules(pid, calls, expected):
    assert judges.judge_trajectory(pid, calls) is expected


def test_trajectory_rule_absent_for_text_preferences():
    assert judges.judge_trajectory("json", [_ask(0)]) is None
    assert judges.judge_trajectory("no_preference", [_ask(0)]) is None
    with pytest.raises(UnknownPreferenceError):
        judges.judge_trajectory("nope", [])


def test_first_try_violation_count():
    assert judges.first_try_violations([_ask(0), _ask(1), _work(2), _ask(3)]) == 2
    assert judges.first_try_violations([_work(0), _ask(1)]) == 0
    assert judges.first_try_violations([_ask(0), _bad_ask(0), _work(1)]) == 1


def test_answer_more_verdict_matches_its_penalty():
    from ppp_jax.envs.records import EpisodeRecord, Question
    from ppp_jax.envs.scoring import compliance

    calls = [_ask(0), _bad_ask(1), _ask(2), _bad_ask(3), _ask(4)]
    qs = tuple(Question("q", "a", "low", None, c.turn) for c in calls if c.error is None)
    r = EpisodeRecord("t", "swe_func_loc", "answer_more", "vague", questions=qs,
                      tool_calls=tuple(calls), task_score=1.0)
    c = compliance(r)
    assert (c.followed, c.penalty) == (True, 0.0)
    r = EpisodeRecord("t", "swe_func_loc", "answer_more", "vague", questions=qs[:2],
                      tool_calls=tuple(calls[:4]), task_score=1.0)
    c = compliance(r)
    assert (c.followed, c.penalty) == (False, -1.0)


def test_judge_agreement():
    a = judges.judge_agreement([True, True, False, False], [True, True, False, False])
    assert a.n == 4 and a.agreement == 1.0 and a.kappa == 1.0
    # 2x2 table: TT=3 TF=1 FT=1 FF=3 -> p_o = 0.75, p_e = 0.5, kappa = 0.5.
    llm = [True] * 4 + [False] * 4
    rule = [True, True, True, False, True, False, False, False]
    a = judges.judge_agreement(llm, rule)
    assert a.agreement == 0.75 and a.kappa == pytest.approx(0.5)
    assert a.confusion[(True, False)] == 1 and a.confusion[(False, True)] == 1
    a = judges.judge_agreement([True, None, False], [True, False, None])
    assert a.n == 1 and a.skipped == 2
    a = judges.judge_agreement([None], [True])
    assert a.n == 0 and math.isnan(a.agreement)
    with pytest.raises(ValueError):
        judges.judge_agreement([True], [True, False])


def test_agreement_of_rule_judge_with_itself_on_labelled_joke_set():
    rows = [r for r in LABELLED if r["preference"] == "joke"]
    rule = [judges.judge_question("joke", r["question"]) for r in rows]
    labels = [r["followed"] for r in rows]
    assert judges.judge_agreement(labels, rule).agreement == 1.0


def test_non_latin_scripts_are_languages():
    assert judges.detect_language("Какой файл нужно изменить?") == "RUSSIAN"
    assert judges.detect_language("どのファイルですか？") == "JAPANESE"
    assert judges.detect_language("哪个文件需要修改？") == "CHINESE"
    q = "Which file? Какой файл? Ποιο αρχείο; 어떤 파일입니까? 哪个文件？"
    assert judges.detected_languages(q) == {"ENGLISH", "RUSSIAN", "GREEK", "KOREAN", "CHINESE"}
    assert judges.judge_question("lang_multi", q) is True
