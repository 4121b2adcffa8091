"""The preference registry: ids, split, wording, judges and the Table-5 penalty functions."""

import pytest

from ppp_jax.envs import preferences as P

EXPECTED_IDS = (
    "no_preference", "concise_question", "detail_question", "answer_more", "only_begin",
    "no_ask", "do_selection", "professional", "amateur", "ask_many", "one_question",
    "first_try", "lang_ita", "lang_multi", "capital", "commas", "json", "joke", "snippet",
    "length",
)


def test_ids_order_and_split():
    assert P.PREFERENCE_IDS == EXPECTED_IDS
    assert [p.index for p in P.list_preferences()] == list(range(1, 21))
    assert P.TRAIN_IDS == EXPECTED_IDS[:12]
    assert P.HELDOUT_IDS == EXPECTED_IDS[12:]
    assert len(P.list_preferences("train")) == 12 and len(P.list_preferences("heldout")) == 8
    with pytest.raises(ValueError):
        P.list_preferences("test")


def test_unknown_preference_is_a_clear_error():
    with pytest.raises(P.UnknownPreferenceError) as e:
        P.get_preference("speak_klingon")
    assert "speak_klingon" in str(e.value) and "concise_question" in str(e.value)
    with pytest.raises(P.UnknownPreferenceError):
        P.penalty("speak_klingon", num_asks=1)


def test_wording_is_our_own_and_complete():
    prefs = P.list_preferences()
    assert len({p.instruction for p in prefs}) == 20
    assert all(len(p.instruction) > 20 for p in prefs)
    # The paper's Fig. 3 do_selection instruction must not be copied verbatim.
    paper = "The user can only answer selection questions. Therefore, the agent's question must provide options"
    assert paper not in P.get_preference("do_selection").instruction


def test_judge_kinds_match_the_paper():
    no_rubric = {p.id for p in P.list_preferences() if p.rubric is None}
    assert no_rubric == {"no_preference", "professional", "answer_more", "only_begin", "no_ask", "ask_many"}
    traj = {p.id for p in P.list_preferences() if p.rule_judge == "trajectory"}
    assert traj == {"answer_more", "only_begin", "no_ask", "ask_many", "first_try"}
    none = {p.id for p in P.list_preferences() if not p.has_judge}
    assert none == {"no_preference", "professional"}
    approx = {p.id for p in P.list_preferences() if not p.rule_exact}
    assert {"joke", "amateur"} <= approx
    for pid in approx:
        assert "Approximation" in P.get_preference(pid).rule_note


PER_QUESTION = {
    "concise_question": 0.1, "detail_question": 0.1, "amateur": 0.1, "first_try": 0.1,
    "do_selection": 0.5, "one_question": 0.5, "lang_ita": 0.5, "lang_multi": 0.5,
    "capital": 0.5, "commas": 0.5, "json": 0.5, "joke": 0.5, "snippet": 0.5, "length": 0.5,
}


@pytest.mark.parametrize("pid", EXPECTED_IDS)
def test_penalty_function_of_every_preference(pid):
    if pid in PER_QUESTION:
        w = PER_QUESTION[pid]
        assert P.penalty(pid, num_asks=3, num_not_followed=0) == 0.0
        assert P.penalty(pid, num_asks=3, num_not_followed=1) == pytest.approx(-w)
        assert P.penalty(pid, num_asks=3, num_not_followed=3) == pytest.approx(-3 * w)
    elif pid == "answer_more":
        got = [P.penalty(pid, num_asks=n) for n in range(6)]
        assert got == [-3.0, -2.0, -1.0, 0.0, 0.0, 0.0]
    elif pid in ("only_begin", "no_ask", "ask_many"):
        assert P.penalty(pid, num_asks=2, trajectory_followed=True) == 0.0
        assert P.penalty(pid, num_asks=2, trajectory_followed=False) == -1.0
        with pytest.raises(ValueError):
            P.penalty(pid, num_asks=2)
    else:
        assert pid in ("no_preference", "professional")
        assert P.penalty(pid, num_asks=2, num_not_followed=2) is None


def test_penalty_rejects_negative_counts():
    with pytest.raises(ValueError):
        P.penalty("json", num_asks=-1)


def test_display_names_map_config_ids_to_report_names():
    assert list(P.DISPLAY_NAMES) == list(EXPECTED_IDS)
    assert len(set(P.DISPLAY_NAMES.values())) == 20  # one name per preference
    assert P.DISPLAY_NAMES["lang_ita"] == P.display_name("lang_ita") == "Speak_Italian"
    assert P.DISPLAY_NAMES["commas"] == "No_Comma"
    with pytest.raises(P.UnknownPreferenceError):
        P.display_name("speak_klingon")


def test_userville_doc_carries_the_generated_preference_table():
    import pathlib

    doc = (pathlib.Path(__file__).parents[2] / "docs" / "userville.md").read_text()
    begin = doc.index("<!-- preference-table:")
    body = doc[doc.index("\n", begin) + 1:doc.index("<!-- end preference-table -->")]
    assert body.strip() == P.preference_table_markdown(), (
        "docs/userville.md's preference table is stale: regenerate it with "
        "`python -m ppp_jax.envs.preferences`")
    for pid, name in P.DISPLAY_NAMES.items():
        assert f"| `{pid}` | {name} |" in body
