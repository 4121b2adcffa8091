"""The released data's exact preference strings, read from the user's copy of the data files.

Our preference instructions and judging rules (`envs/preferences.py`) are paraphrases of the
paper's Table 4. The released strings are stored only in the released data files (the parquet
files `train_12n1`, `test_id`, `test_ood` distributed with PPP-Agent), one per row, as

    extra_info.preference = {"preference_name": NAME?, NAME: {"preference": TEXT, "reward": RULE}, ...}

(the released `UserEnv._extract_preference_info`: `preference_name` when present, else the first
key whose value is not null). A rule of "None" or one containing "[function]" means "no reward
rule": the user adds no [Reward] tag (the preference is judged from the trajectory or not at all).

`read_preference_texts(paths)` collects them; `with_texts(pref, texts)` is the preference with
the released instruction and rubric. The run config's `simulator.preference_texts` names the
files; the LLM simulator then tells the user the released strings instead of ours.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from ppp_jax.envs.domains.rows import DataError, read_located_rows
from ppp_jax.envs.preferences import Preference, get_preference


@dataclasses.dataclass(frozen=True)
class PreferenceText:
    """One preference's released strings: what the user is told, and its judging rule (None =
    "no reward rule")."""

    instruction: str
    rubric: str | None


def _extra_info(where: str, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    info = row.get("extra_info")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            raise DataError(where, "extra_info", "a string that is not JSON") from None
    return info if isinstance(info, Mapping) else None


def _preference_entry(where: str, pref: Mapping[str, Any]) -> tuple[str, PreferenceText] | None:
    name = pref.get("preference_name")
    if name is None:
        name = next((k for k, v in pref.items() if v is not None and k != "preference_name"), None)
    if name is None:
        return None
    entry = pref.get(name)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("preference"), str):
        raise DataError(where, f"extra_info.preference.{name}",
                        "expected {preference: text, reward: rule}")
    rule = entry.get("reward", "None")
    rubric = None if (rule is None or rule == "None" or "[function]" in str(rule)) else str(rule)
    return str(name), PreferenceText(entry["preference"], rubric)


def read_preference_texts(paths: Sequence[str | os.PathLike] | str | os.PathLike
                          ) -> dict[str, PreferenceText]:
    """{preference id: its released strings} over the rows of the given data files
    (.parquet/.jsonl/.json; one path or several). Rows without a preference are skipped; a
    DataError for a preference written two different ways, an id our registry does not know, an
    `extra_info.preference` that is not an object (or its JSON text), and files none of whose
    rows names a preference (not the released data files: the simulator would silently fall
    back to our texts)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: dict[str, PreferenceText] = {}
    for path in paths:
        for where, row in read_located_rows(str(path)):
            info = _extra_info(where, row)
            pref = info.get("preference") if info else None
            if isinstance(pref, str):
                try:
                    pref = json.loads(pref)
                except json.JSONDecodeError:
                    raise DataError(where, "extra_info.preference", "a string that is not JSON") \
                        from None
            if pref is None:
                continue
            if not isinstance(pref, Mapping):
                raise DataError(where, "extra_info.preference", "expected an object {NAME: "
                                f"{{preference, reward}}}}, got {type(pref).__name__}")
            found = _preference_entry(where, pref)
            if found is None:
                continue
            name, text = found
            try:
                get_preference(name)
            except KeyError:
                raise DataError(where, "extra_info.preference", f"unknown preference {name!r}") from None
            if name in out and out[name] != text:
                raise DataError(where, f"extra_info.preference.{name}",
                                "differs from an earlier row's text for the same preference")
            out[name] = text
    if not out:
        raise DataError(", ".join(str(p) for p in paths), "extra_info.preference",
                        "no row names a preference (simulator.preference_texts wants the "
                        "released data files: train_12n1, test_id, test_ood)")
    return out


def with_texts(pref: Preference, texts: Mapping[str, PreferenceText] | None) -> Preference:
    """`pref` with the released instruction and rubric when `texts` has them, else unchanged."""
    text = (texts or {}).get(pref.id)
    if text is None:
        return pref
    return dataclasses.replace(pref, instruction=text.instruction, rubric=text.rubric)
