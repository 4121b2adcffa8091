"""Model-free compliance judges for all 20 preferences, and judge-agreement measurement.

Two kinds of rule:

* text rules (`judge_question`): one verdict per question, from its text alone. Most are exact
  restatements of the rubric (no commas, valid JSON, three sentences, Italian, ...); `joke`,
  `amateur` and `detail_question` are approximations (see each preference's `rule_note`) and their
  agreement with an LLM judge can be measured with `judge_agreement`.
* trajectory rules (`judge_trajectory`): one verdict per episode, from the ordered tool calls
  (`answer_more`, `only_begin`, `no_ask`, `ask_many`, `first_try`).

Both return None where the preference has no rule of that kind. Unknown preference ids raise
`UnknownPreferenceError`. Language detection uses lingua with a fixed set of ten languages, built
once per process on first use (0.8 s on an idle core, up to ~5 s on a loaded 2-core machine);
non-Latin scripts are recognised by Unicode script without a model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import unicodedata
from collections.abc import Sequence

from ppp_jax.envs.preferences import get_preference
from ppp_jax.envs.records import ToolCall

# Tool names that count as a question to the user (ours and the released code's).
ASK_TOOL_NAMES: frozenset[str] = frozenset({"ask_user", "ask_question"})
# Tool names that are not "trying on one's own" for first_try.
_NON_WORK_TOOLS: frozenset[str] = ASK_TOOL_NAMES | {"finish", "think"}

CONCISE_MAX_WORDS = 20
DETAIL_MIN_WORDS = 25
AMATEUR_MAX_WORDS = 30
MULTI_MIN_LANGUAGES = 5

_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


# ---------------------------------------------------------------------------------------------
# Sentence splitting and language detection (lazy singletons).


@functools.lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by pysbd, stripped, empty ones dropped."""
    text = text.strip()
    if not text:
        return []
    return [s.strip() for s in _segmenter().segment(text) if s.strip()]


# lingua decides among these Latin-script languages (the ones a question in a European
# language is likely to use); other scripts are identified by their Unicode script below, which
# costs nothing to load. Building the detector takes ~1-5 s on a busy 2-core machine.
_LANGUAGE_NAMES = ("ENGLISH", "ITALIAN", "FRENCH", "GERMAN", "SPANISH", "PORTUGUESE", "DUTCH")
# (first code point, last code point, language name) for non-Latin scripts.
_SCRIPT_RANGES = (
    (0x0370, 0x03FF, "GREEK"),
    (0x0400, 0x04FF, "RUSSIAN"),  # Cyrillic, reported as Russian
    (0x0590, 0x05FF, "HEBREW"),
    (0x0600, 0x06FF, "ARABIC"),
    (0x0900, 0x097F, "HINDI"),  # Devanagari
    (0x0E00, 0x0E7F, "THAI"),
    (0x3040, 0x30FF, "JAPANESE"),  # Hiragana + Katakana
    (0xAC00, 0xD7AF, "KOREAN"),  # Hangul syllables
    (0x4E00, 0x9FFF, "CHINESE"),  # Han (Japanese if any kana is present)
)


@functools.lru_cache(maxsize=1)
def language_detector():
    """The shared lingua detector over the Latin-script `_LANGUAGE_NAMES` (built once)."""
    from lingua import Language, LanguageDetectorBuilder

    langs = [getattr(Language, n) for n in _LANGUAGE_NAMES]
    return LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models().build()


def _script_language(text: str) -> str | None:
    """The language implied by a non-Latin script holding most of the letters, else None."""
    counts: dict[str, int] = {}
    letters = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        cp = ord(ch)
        for lo, hi, name in _SCRIPT_RANGES:
            if lo <= cp <= hi:
                counts[name] = counts.get(name, 0) + 1
                break
    if not letters or sum(counts.values()) * 2 <= letters:
        return None
    if counts.get("JAPANESE"):
        return "JAPANESE"
    return max(sorted(counts), key=counts.get)


def detect_language(text: str) -> str | None:
    """Upper-case name of the language of `text` (e.g. "ITALIAN"), None if undecidable.

    Non-Latin scripts are named by script (Cyrillic -> RUSSIAN, Han -> CHINESE, kana ->
    JAPANESE, ...); Latin-script text is decided by lingua among `_LANGUAGE_NAMES`.
    """
    by_script = _script_language(text)
    if by_script is not None:
        return by_script
    lang = language_detector().detect_language_of(text)
    return None if lang is None else lang.name


def _clauses(text: str) -> list[str]:
    """Splits on sentence punctuation, semicolons, commas, dashes and newlines (all scripts)."""
    parts = re.split(r"[.!?;:,\n。！？；，、¿¡—–]+|\s-\s", text)
    return [p.strip() for p in parts if len(_words(p)) >= 1 and p.strip()]


def detected_languages(text: str) -> set[str]:
    """The distinct languages of the clauses of `text` (clauses of >= 2 words, or any clause in a
    non-Latin script)."""
    found = set()
    for clause in _clauses(text):
        if len(_words(clause)) < 2 and _script_language(clause) is None:
            continue
        lang = detect_language(clause)
        if lang is not None:
            found.add(lang)
    return found


# ---------------------------------------------------------------------------------------------
# Text rules, one per text-judged preference. Each takes the question text, returns a bool.

_CONTEXT_CUES = re.compile(
    r"\b(because|since|i found|i see|i saw|i noticed|i checked|i looked|i tried|i ran|"
    r"currently|so that|looking at|it seems|it looks|the error|the traceback|the issue|"
    r"right now|at the moment|for example|e\.g\.|in order to|my understanding|i'm trying|"
    r"i am trying|which means|otherwise|before i)\b",
    re.IGNORECASE,
)


def _is_concise(q: str) -> bool:
    return len(split_sentences(q)) == 1 and 0 < len(_words(q)) <= CONCISE_MAX_WORDS


def _is_detailed(q: str) -> bool:
    return (
        len(_words(q)) >= DETAIL_MIN_WORDS
        and _CONTEXT_CUES.search(q) is not None
        and ("?" in q or "？" in q)
    )


_OPTION_RE = re.compile(r"(?:^|[\s(\[])([A-Ha-h])(?:\)|\]|\.(?=\s)|:(?=\s))", re.MULTILINE)


def _has_options(q: str) -> bool:
    letters = {m.group(1) for m in _OPTION_RE.finditer(q)}
    return {"A", "B"} <= letters or {"a", "b"} <= letters


# Code-like tokens: paths, dotted names, snake_case, CamelCase, call syntax, backticks.
_CODE_TOKEN_RE = re.compile(
    r"`|(?:\w+/)+\w+|\b\w+\.(?:py|js|ts|rs|go|java|c|cc|cpp|h|rst|md|txt|toml|yaml|yml|json|cfg)\b"
    r"|\b[A-Za-z_]\w*\.[A-Za-z_]\w*\b|\b\w*_\w+\b|\b[a-z]+[A-Z]\w*\b|\b[A-Z][a-z]+[A-Z]\w*\b"
    r"|\b\w+\(\)"
)
_JARGON = frozenset(
    """function functions method methods class classes module modules traceback stack
    exception exceptions regex api apis parameter parameters argument arguments kwarg kwargs
    commit branch dependency dependencies compile compiler runtime refactor variable variables
    attribute attributes decorator import imports backend endpoint schema serializer
    subclass inheritance mutex thread threads async await pointer null none typeerror
    valueerror keyerror config repository repo codebase unittest pytest dtype numpy regression
    deprecation overload signature callback""".split()
)


def _is_amateur(q: str) -> bool:
    if _CODE_TOKEN_RE.search(q):
        return False
    words = [w.lower() for w in _words(q)]
    return 0 < len(words) <= AMATEUR_MAX_WORDS and not any(w in _JARGON for w in words)


def _is_one_question(q: str) -> bool:
    return q.count("?") + q.count("？") == 1


def _is_italian(q: str) -> bool:
    return detect_language(q) == "ITALIAN"


def _is_multilingual(q: str) -> bool:
    return len(detected_languages(q)) >= MULTI_MIN_LANGUAGES


def _is_capital(q: str) -> bool:
    letters = [ch for ch in q if ch.isalpha()]
    if not letters or not all("A" <= ch <= "Z" for ch in letters):
        return False
    return detect_language(q.lower()) == "ENGLISH"


def _is_comma(ch: str) -> bool:
    if unicodedata.category(ch) == "Mn":  # combining diacritics such as COMMA ABOVE
        return False
    return "COMMA" in unicodedata.name(ch, "")


def _has_no_comma(q: str) -> bool:
    return not any(_is_comma(ch) for ch in q)


def _is_json(q: str) -> bool:
    try:
        value = json.loads(q.strip())
    except (json.JSONDecodeError, ValueError):
        return False
    return isinstance(value, (dict, list)) and len(value) > 0


_HUMOUR_RE = re.compile(
    r"\b(joke|joking|pun|puns|punny|haha+|hehe+|lol|lmao|rofl|kidding|jk|knock knock|"
    r"walks into a bar|why did the|why do programmers|what do you call|no pun intended|"
    r"funny|punchline|humou?r|laugh)\b|[\U0001F600-\U0001F606\U0001F923\U0001F602\U0001F61C"
    r"\U0001F61D\U0001F609]",
    re.IGNORECASE,
)


def _is_joke(q: str) -> bool:
    return _HUMOUR_RE.search(q) is not None


_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_REF_RE = re.compile(
    r"https?://\S+|(?:[\w.-]+/)+[\w.-]+\.\w+|\b[\w-]+\.(?:py|js|ts|rs|go|java|c|cc|cpp|h|rst|md|"
    r"txt|toml|yaml|yml|json|cfg|ini|html)\b"
)


def _snippet_blocks(q: str) -> list[list[str]]:
    blocks = [[ln for ln in m.group(1).splitlines() if ln.strip()] for m in _FENCE_RE.finditer(q)]
    # Indented ("    ") or quoted ("> ") runs of lines outside fences.
    rest = _FENCE_RE.sub("\n", q)
    run: list[str] = []
    for line in rest.splitlines() + [""]:
        if line.strip() and (line.startswith(("    ", "\t", "> ", ">>> "))):
            run.append(line)
        else:
            if run:
                blocks.append(run)
            run = []
    return blocks


def _has_snippet(q: str) -> bool:
    has_block = any(len(b) >= 3 for b in _snippet_blocks(q))
    return has_block and _REF_RE.search(q) is not None


def _is_three_sentences(q: str) -> bool:
    return len(split_sentences(q)) == 3


TEXT_RULES = {
    "concise_question": _is_concise,
    "detail_question": _is_detailed,
    "do_selection": _has_options,
    "amateur": _is_amateur,
    "one_question": _is_one_question,
    "lang_ita": _is_italian,
    "lang_multi": _is_multilingual,
    "capital": _is_capital,
    "commas": _has_no_comma,
    "json": _is_json,
    "joke": _is_joke,
    "snippet": _has_snippet,
    "length": _is_three_sentences,
}


def judge_question(preference_id: str, question: str) -> bool | None:
    """The text rule's verdict on one question: True = follows the preference.

    None for preferences judged on the trajectory or not judged at all. Raises
    UnknownPreferenceError for unknown ids and TypeError if `question` is not a string.
    """
    pref = get_preference(preference_id)
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")
    if pref.rule_judge != "text":
        return None
    return bool(TEXT_RULES[preference_id](question))


# ---------------------------------------------------------------------------------------------
# Trajectory rules.


def is_ask(call: ToolCall) -> bool:
    """True for a call to the ask tool, valid or not (see `is_valid_ask`)."""
    return call.name in ASK_TOOL_NAMES


def is_valid_ask(call: ToolCall) -> bool:
    """True for an ask call that reached the user (`error is None`): the ones trajectory rules
    count, matching the questions in `EpisodeRecord.questions` (malformed, refused or errored ask
    calls are not questions)."""
    return is_ask(call) and call.error is None


def first_try_violations(tool_calls: Sequence[ToolCall]) -> int:
    """Number of valid ask calls made before the agent's first working (non-ask, non-finish,
    non-think) tool call: each is a question asked without trying first."""
    n = 0
    for call in tool_calls:
        if is_ask(call):
            n += is_valid_ask(call)
        elif call.name not in _NON_WORK_TOOLS:
            break
    return n


def judge_trajectory(preference_id: str, tool_calls: Sequence[ToolCall]) -> bool | None:
    """The trajectory rule's verdict for one episode: True = the preference was followed.

    Rules (the released code's where it has one); "ask call" means a valid one (`is_valid_ask`:
    `error is None`), so malformed or failed ask calls never count:
      answer_more  at least 3 ask calls;
      only_begin   every ask call is in the agent's first turn, turn 0 (the released code: no ask
                   after the first assistant message);
      no_ask       no ask call;
      ask_many     at most one ask call;
      first_try    no ask call before the first working tool call (see first_try_violations).
    None for the other preferences. Raises UnknownPreferenceError for unknown ids.
    """
    pref = get_preference(preference_id)
    if pref.rule_judge != "trajectory":
        return None
    asks = [c for c in tool_calls if is_valid_ask(c)]
    if preference_id == "answer_more":
        return len(asks) >= 3
    if preference_id == "only_begin":
        return all(c.turn == 0 for c in asks)
    if preference_id == "no_ask":
        return not asks
    if preference_id == "ask_many":
        return len(asks) <= 1
    if preference_id == "first_try":
        return first_try_violations(tool_calls) == 0
    raise AssertionError(f"no trajectory rule for {preference_id}")


# ---------------------------------------------------------------------------------------------
# Agreement between two judges.


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Agreement of two judges over paired verdicts.

    n: pairs where both verdicts are not None; skipped: pairs with a None on either side;
    agreement: fraction of the n pairs that agree (nan if n == 0); kappa: Cohen's kappa (nan if
    undefined, i.e. n == 0 or both judges constant and equal chance agreement is 1);
    confusion: counts keyed (llm, rule) -> n.
    """

    n: int
    skipped: int
    agreement: float
    kappa: float
    confusion: dict[tuple[bool, bool], int]


def judge_agreement(
    llm_verdicts: Sequence[bool | None], rule_verdicts: Sequence[bool | None]
) -> Agreement:
    """Agreement and Cohen's kappa between LLM-judge and rule-judge verdicts (paired by index).

    kappa = (p_o - p_e) / (1 - p_e) with p_o the observed agreement and p_e the chance agreement
    from each judge's marginal rate of True.
    """
    if len(llm_verdicts) != len(rule_verdicts):
        raise ValueError(
            f"verdict lists differ in length: {len(llm_verdicts)} vs {len(rule_verdicts)}"
        )
    confusion = {(a, b): 0 for a in (True, False) for b in (True, False)}
    skipped = 0
    for a, b in zip(llm_verdicts, rule_verdicts):
        if a is None or b is None:
            skipped += 1
            continue
        confusion[(bool(a), bool(b))] += 1
    n = sum(confusion.values())
    if n == 0:
        return Agreement(0, skipped, float("nan"), float("nan"), confusion)
    p_o = (confusion[(True, True)] + confusion[(False, False)]) / n
    p_llm = (confusion[(True, True)] + confusion[(True, False)]) / n
    p_rule = (confusion[(True, True)] + confusion[(False, True)]) / n
    p_e = p_llm * p_rule + (1 - p_llm) * (1 - p_rule)
    kappa = float("nan") if p_e == 1.0 else (p_o - p_e) / (1 - p_e)
    return Agreement(n, skipped, p_o, kappa, confusion)
