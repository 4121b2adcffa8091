"""The 20 UserVille user preferences: ids, split, instruction text, judges and penalties.

Each preference says how a simulated user wants to be asked questions. The registry below is the
single source of truth for:

* a stable id (`concise_question`, `lang_ita`, ...), written in configs, and the paper's order
  (1..20);
* the display name (`Concise_Question`, `Speak_Italian`, ...), the paper's name, shown in reports
  (`DISPLAY_NAMES` maps one to the other; `preference_table_markdown()` renders the table that
  docs/userville.md carries);
* the split: preferences 1-12 are used in training ("train"), 13-20 are held out ("heldout");
* `instruction`: what the simulated user is told about itself (our own wording);
* `rubric`: the per-question rule an LLM judge (the simulated user) applies, tagging each question
  as following it or not; None where the paper judges the preference from the trajectory or not at
  all;
* `rule_judge`: how our model-free judge (envs.judges) decides compliance: "text" (one verdict per
  question, from its text), "trajectory" (one verdict per episode, from the tool-call sequence) or
  "none" (no judge: `no_preference`, `professional`);
* `rule_exact`: False where the rule judge only approximates the rubric (`joke`, `amateur`,
  `detail_question`, `first_try`); `rule_note` says how;
* the penalty of the paper's Table 5 as a `PenaltySpec` (see `penalty`).

Penalty conventions (all values <= 0):
  per_question  -weight * (number of questions judged non-compliant)
  answer_more   min(num_asks - 3, 0)
  binary        -1 if the trajectory rule is violated, else 0
  none          no penalty function (the preference has no judge)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Split = Literal["train", "heldout"]
RuleJudgeKind = Literal["text", "trajectory", "none"]
PenaltyKind = Literal["per_question", "answer_more", "binary", "none"]


class UnknownPreferenceError(KeyError):
    """A preference id that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return self.args[0] if self.args else "unknown preference"


@dataclasses.dataclass(frozen=True)
class PenaltySpec:
    """How violations of one preference turn into a (non-positive) reward penalty.

    Attributes:
      kind: see the module docstring.
      weight: the per-violation weight for `per_question` (0.1 or 0.5 in the paper's Table 5).
    """

    kind: PenaltyKind
    weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class Preference:
    """One user preference. See the module docstring for the meaning of each field."""

    id: str
    index: int  # 1..20, the paper's order
    split: Split
    display_name: str
    instruction: str
    rubric: str | None  # LLM-judge rule; None = the LLM judge is told "no reward rule"
    rule_judge: RuleJudgeKind
    rule_exact: bool
    rule_note: str
    penalty_spec: PenaltySpec

    @property
    def has_judge(self) -> bool:
        """False for preferences without any compliance judge (no_preference, professional)."""
        return self.penalty_spec.kind != "none"

    @property
    def llm_judged(self) -> bool:
        """True where the paper's simulator tags each question (an LLM rubric exists)."""
        return self.rubric is not None


_PQ01 = PenaltySpec("per_question", 0.1)
_PQ05 = PenaltySpec("per_question", 0.5)
_BINARY = PenaltySpec("binary")
_NONE = PenaltySpec("none")

_PREFERENCES: tuple[Preference, ...] = (
    Preference(
        "no_preference", 1, "train", "No_Preference",
        "You have no particular wishes about how the agent asks you things.",
        None, "none", True, "No judge: any question is acceptable.", _NONE,
    ),
    Preference(
        "concise_question", 2, "train", "Concise_Question",
        "You are busy and want every question to be brief: a single short sentence that gets "
        "straight to the point.",
        "Mark the question as following the preference only if it is one short sentence with no "
        "preamble or background; anything longer or spread over several sentences does not follow.",
        "text", True,
        "Exactly one sentence (pysbd) of at most 20 words.", _PQ01,
    ),
    Preference(
        "detail_question", 3, "train", "Detail_Question",
        "You want questions that explain themselves: say what the agent is working on, what it has "
        "seen so far and why it needs the answer.",
        "Mark the question as following the preference only if it gives enough background for you "
        "to understand why it is asked (what was tried or observed, and what is unclear); a bare "
        "one-line question does not follow.",
        "text", False,
        "Approximation: at least 25 words and at least one context cue (because, I found, "
        "currently, so that, looking at, ...) plus an actual question.", _PQ01,
    ),
    Preference(
        "answer_more", 4, "train", "Answer_More",
        "You like to be involved and expect the agent to check in with you several times, at "
        "least three questions over the task.",
        None, "trajectory", True,
        "Counts ask calls; three or more follow.", PenaltySpec("answer_more"),
    ),
    Preference(
        "only_begin", 5, "train", "Only_Begin",
        "You are only around at the very start. Questions are welcome in the agent's first turn; "
        "after that you are gone.",
        None, "trajectory", True,
        "Every ask call must be made in the agent's first turn.", _BINARY,
    ),
    Preference(
        "no_ask", 6, "train", "No_Ask",
        "You do not want to be bothered at all; the agent should work it out without asking you "
        "anything.",
        None, "trajectory", True,
        "Any ask call violates.", _BINARY,
    ),
    Preference(
        "do_selection", 7, "train", "Do_Selection",
        "You only reply to multiple-choice questions. Each question has to offer lettered options "
        "(A, B, C, ...) and you answer with the single letter you pick; anything else gets "
        "\"I don't know\".",
        "Mark the question as following the preference only if it offers at least two lettered "
        "options for you to choose from.",
        "text", True,
        "At least two lettered options, A and B at least (A) / (A) / A. / A: forms).", _PQ05,
    ),
    Preference(
        "professional", 8, "train", "Professional",
        "You are an experienced engineer and happily take deep technical questions.",
        None, "none", True, "No judge: any question is acceptable.", _NONE,
    ),
    Preference(
        "amateur", 9, "train", "Amateur",
        "You are not technical. You can answer plain, everyday questions about what you want, but "
        "technical ones (code, files, functions, errors) get \"I don't know\".",
        "Mark the question as following the preference only if a non-technical person could "
        "answer it from common sense, without knowing code, file names or jargon.",
        "text", False,
        "Approximation: no code-like tokens (paths, snake_case, CamelCase, dotted names, "
        "backticks), no word from a technical-jargon list, at most 30 words.", _PQ01,
    ),
    Preference(
        "ask_many", 10, "train", "Ask_Many",
        "You would rather get all the agent's questions together in one message than be "
        "interrupted again and again.",
        None, "trajectory", True,
        "At most one ask call in the episode (the released code's ask_one rule).", _BINARY,
    ),
    Preference(
        "one_question", 11, "train", "One_Question",
        "You can only handle one thing at a time: each message from the agent must contain a "
        "single question.",
        "Mark the question as following the preference only if it asks exactly one thing.",
        "text", True,
        "Exactly one question mark (ASCII or full-width) in the text.", _PQ05,
    ),
    Preference(
        "first_try", 12, "train", "First_Try",
        "You expect the agent to try on its own first and come to you only when it is truly "
        "stuck.",
        "Mark the question as following the preference only if it shows the agent already "
        "investigated on its own and names the concrete obstacle it hit.",
        "trajectory", False,
        "Approximation: a question follows iff some non-ask tool call came before it; when the "
        "simulator gave per-question LLM verdicts those are used instead.", _PQ01,
    ),
    Preference(
        "lang_ita", 13, "heldout", "Speak_Italian",
        "You only understand Italian. Questions in any other language go unanswered.",
        "Mark the question as following the preference only if it is written in Italian.",
        "text", True,
        "The whole question is Italian (lingua among seven Latin-script languages).", _PQ05,
    ),
    Preference(
        "lang_multi", 14, "heldout", "Multi_lingual",
        "You are a polyglot and want each question to mix at least five different languages.",
        "Mark the question as following the preference only if at least five different "
        "languages appear in it.",
        "text", True,
        "At least five distinct languages over the question's clauses: lingua for Latin-script "
        "clauses (seven languages), the Unicode script for others (Cyrillic, Greek, Han, kana, ...).", _PQ05,
    ),
    Preference(
        "capital", 15, "heldout", "Capital_Letter",
        "You want questions written in English and entirely in capital letters.",
        "Mark the question as following the preference only if it is English and has no "
        "lower-case letters at all.",
        "text", True,
        "Every letter is A-Z (no lower case, no non-ASCII letters) and lingua reads it as "
        "English.", _PQ05,
    ),
    Preference(
        "commas", 16, "heldout", "No_Comma",
        "You cannot stand commas: a question must not contain a single one.",
        "Mark the question as following the preference only if it contains no comma of any kind.",
        "text", True,
        "No character whose Unicode name contains COMMA (non-combining).", _PQ05,
    ),
    Preference(
        "json", 17, "heldout", "JSON_Format",
        "You read questions with a program: every question must be one valid JSON value and "
        "nothing else.",
        "Mark the question as following the preference only if the entire question is valid JSON "
        "with no text around it.",
        "text", True,
        "The stripped question parses with json.loads to an object or array.", _PQ05,
    ),
    Preference(
        "joke", 18, "heldout", "Be_Humor",
        "You like a laugh: each question should carry a joke.",
        "Mark the question as following the preference only if it contains an actual joke or "
        "clearly humorous remark.",
        "text", False,
        "Approximation: looks for humour markers (pun, joke, punchline set-ups, laughter, "
        "laughing emoji); it cannot tell whether a joke is funny.", _PQ05,
    ),
    Preference(
        "snippet", 19, "heldout", "Add_Reference",
        "You want evidence: each question should quote at least three lines of the code or "
        "documentation it is about and say which file or web page they come from.",
        "Mark the question as following the preference only if it quotes at least three lines of "
        "code or documentation and names the file or URL they come from.",
        "text", True,
        "A fenced or indented block of >= 3 non-empty lines plus a file path or URL.", _PQ05,
    ),
    Preference(
        "length", 20, "heldout", "Three_Sentences",
        "You want every question to be exactly three sentences long.",
        "Mark the question as following the preference only if it consists of exactly three "
        "sentences.",
        "text", True,
        "pysbd splits the question into exactly three sentences.", _PQ05,
    ),
)

PREFERENCES: dict[str, Preference] = {p.id: p for p in _PREFERENCES}
PREFERENCE_IDS: tuple[str, ...] = tuple(p.id for p in _PREFERENCES)
DISPLAY_NAMES: dict[str, str] = {p.id: p.display_name for p in _PREFERENCES}  # config id -> report name
TRAIN_IDS: tuple[str, ...] = tuple(p.id for p in _PREFERENCES if p.split == "train")
HELDOUT_IDS: tuple[str, ...] = tuple(p.id for p in _PREFERENCES if p.split == "heldout")


def get_preference(preference_id: str) -> Preference:
    """The registry entry for `preference_id`; raises UnknownPreferenceError naming valid ids."""
    try:
        return PREFERENCES[preference_id]
    except (KeyError, TypeError):
        raise UnknownPreferenceError(
            f"unknown preference id {preference_id!r}; valid ids: {list(PREFERENCE_IDS)}"
        ) from None


def display_name(preference_id: str) -> str:
    """The name reports show for a preference id (`lang_ita` -> `Speak_Italian`)."""
    return get_preference(preference_id).display_name


def _rule_judge_text(p: Preference) -> str:
    if p.rule_judge == "none":
        return "none"
    return p.rule_judge + (" + LLM rubric" if p.rubric is not None else "")


def _penalty_text(spec: PenaltySpec) -> str:
    return {"per_question": f"-{spec.weight:g} per non-compliant question",
            "answer_more": "min(asks - 3, 0)", "binary": "-1 on violation",
            "none": "none"}[spec.kind]


def preference_table_markdown() -> str:
    """The preference table of docs/userville.md, generated from the registry: index, config id,
    report display name, split, rule judge, exactness and Table-5 penalty."""
    rows = [("| # | id (configs) | display name (reports) | split | rule judge | exact? | "
             "penalty (paper Table 5) |"),
            "|---|---|---|---|---|---|---|"]
    for p in _PREFERENCES:
        rows.append(f"| {p.index} | `{p.id}` | {p.display_name} | {p.split} | {_rule_judge_text(p)} | "
                    f"{'yes' if p.rule_exact else 'approx.'} | {_penalty_text(p.penalty_spec)} |")
    return "\n".join(rows)


def list_preferences(split: Split | None = None) -> tuple[Preference, ...]:
    """All preferences in the paper's order, optionally only one split."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"split must be 'train', 'heldout' or None, got {split!r}")
    return tuple(p for p in _PREFERENCES if split is None or p.split == split)


def penalty(
    preference_id: str,
    *,
    num_asks: int,
    num_not_followed: int = 0,
    trajectory_followed: bool | None = None,
) -> float | None:
    """The Table-5 penalty (<= 0) of one episode, or None for preferences with no judge.

    Args:
      preference_id: a registry id.
      num_asks: ask calls in the episode, answered or not (the released code's `ask_turn`).
      num_not_followed: questions judged non-compliant (the released code's `reward_0`); used by
        `per_question` penalties.
      trajectory_followed: the trajectory rule's verdict; required for `binary` penalties.
    """
    spec = get_preference(preference_id).penalty_spec
    if num_asks < 0 or num_not_followed < 0:
        raise ValueError(f"counts must be >= 0, got asks={num_asks} not_followed={num_not_followed}")
    if spec.kind == "none":
        return None
    if spec.kind == "per_question":
        return -spec.weight * num_not_followed
    if spec.kind == "answer_more":
        return float(min(num_asks - 3, 0))
    if spec.kind == "binary":
        if trajectory_followed is None:
            raise ValueError(f"{preference_id}: a trajectory verdict is needed for its penalty")
        return 0.0 if trajectory_followed else -1.0
    raise AssertionError(spec.kind)


if __name__ == "__main__":  # `python -m ppp_jax.envs.preferences` prints the docs table
    print(preference_table_markdown())
