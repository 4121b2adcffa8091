"""Malformed released data files for `simulator.preference_texts` are refused naming the file,
row and field, instead of being skipped (the simulator would fall back to our texts silently)."""

from __future__ import annotations

import json

import pytest

from ppp_jax.envs.domains.rows import DataError
from ppp_jax.envs.preference_texts import read_preference_texts

CONCISE = {"concise_question": {"preference": "RELEASED-CONCISE", "reward": "None"}}


def _write(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_one_path_is_one_file_not_its_characters(tmp_path):
    path = _write(tmp_path / "test_id.jsonl", {"extra_info": {"preference": CONCISE}})
    for given in (str(path), path, [str(path)]):
        assert read_preference_texts(given)["concise_question"].instruction == "RELEASED-CONCISE"


def test_preference_as_json_text_is_read(tmp_path):
    path = _write(tmp_path / "t.jsonl", {"extra_info": {"preference": json.dumps(CONCISE)}})
    assert set(read_preference_texts(path)) == {"concise_question"}


@pytest.mark.parametrize("pref,match", [
    ("concise_question", "t.jsonl:2: extra_info.preference: a string that is not JSON"),
    (["concise_question"], "t.jsonl:2: extra_info.preference: expected an object .*got list"),
    (3, "t.jsonl:2: extra_info.preference: expected an object .*got int"),
])
def test_a_preference_that_is_not_an_object_is_refused(tmp_path, pref, match):
    path = _write(tmp_path / "t.jsonl", {"extra_info": {"preference": CONCISE}},
                  {"extra_info": {"preference": pref}})
    with pytest.raises(DataError, match=match):
        read_preference_texts(path)


def test_files_without_any_preference_are_refused(tmp_path):
    path = _write(tmp_path / "rows.jsonl", {"extra_info": {"is_vague": True}}, {"x": 1},
                  {"extra_info": {"preference": {"no_ask": None}}})
    with pytest.raises(DataError, match="rows.jsonl: extra_info.preference: no row names a "
                                        "preference"):
        read_preference_texts([path])
