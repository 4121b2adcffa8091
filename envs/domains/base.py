"""What every task domain provides: tasks, a system prompt, tool schemas, tool execution, scoring.

A `Task` is one benchmark instance with both prompts (precise and vague) and the hidden
information the user simulator may reveal. A `TaskDomain` is what the episode runner talks to:

    domain.name, domain.task_family     -> "stdlib_loc", "swe" | "search" (simulator effort scale)
    domain.system_prompt(task)          -> str
    domain.first_message(task, kind)    -> str            (kind: "precise" | "vague")
    domain.tool_schemas(task)           -> list[dict]     (OpenAI function tools, `finish` included;
                                                           the runner adds `ask_user`)
    await domain.run_tool(task, name, args, state) -> str (never raises: errors are observations)
    await domain.score(task, answer)    -> float in [0, 1]

Optional, used when present: `check_finish` (below), `async score_details(task, answer) ->
(score, details)` (a score with its explanation, recorded in `stats["score_details"]`),
`close_episode(task, state)` (sync or async; per-episode cleanup, called once when the episode
ends) and `finish_needs_answer = False` (finish without an `answer`: the domain makes it).

`state` is a dict owned by the runner, one per episode, for per-episode tool state (the pages
a search agent has already seen, a shell's working directory). Tool work that blocks (file I/O,
regexes, retrieval) runs in a worker thread so concurrent episodes keep going.

This module also holds the helpers domains share: the observation-truncation rules of the
reference (merge >32 identical consecutive lines, keep <=500 lines, <=6000 chars per line), the
function-tool schema builder, the `ask_user` schema and the SWE-Func-Loc F1 with its path
normalization.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

from ppp_jax.envs.domains.rows import read_located_rows

PromptKind = Literal["vague", "precise"]

ASK_USER = "ask_user"
FINISH = "finish"


@dataclasses.dataclass(frozen=True)
class Task:
    """One task instance.

    Attributes:
      task_id: unique id (e.g. "astropy__astropy-12907", "stdlib:json/decoder.py:JSONDecoder.raw_decode").
      domain: the domain name ("swe_func_loc", "browsecomp_plus", "stdlib_loc").
      precise_prompt: the full problem statement (what the simulator sees as the "full question").
      vague_prompt: the under-specified rewrite the agent sees in the vague setting.
      hidden_info: text only the simulator sees beyond the precise prompt (e.g. gold file and
        function for function localization, gold document snapshots for search).
      gold: the gold answers (function locations, or acceptable answer strings).
      split: "train" or "test".
      metadata: anything else (repo, base commit, docids, source row ...); JSON-serializable.
    """

    task_id: str
    domain: str
    precise_prompt: str
    vague_prompt: str
    hidden_info: str
    gold: tuple[str, ...]
    split: str = "train"
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def prompt(self, kind: PromptKind) -> str:
        """The problem text the agent sees for a prompt kind."""
        if kind == "precise":
            return self.precise_prompt
        if kind == "vague":
            return self.vague_prompt
        raise ValueError(f"prompt kind must be 'precise' or 'vague', got {kind!r}")


@runtime_checkable
class TaskDomain(Protocol):
    """A task domain as the episode runner uses it (see the module docstring)."""

    name: str
    task_family: str  # "swe" or "search": which effort scale the user simulator uses

    def system_prompt(self, task: Task) -> str: ...

    def first_message(self, task: Task, kind: PromptKind) -> str: ...

    def tool_schemas(self, task: Task) -> list[dict[str, Any]]: ...

    async def run_tool(self, task: Task, name: str, args: Mapping[str, Any],
                       state: dict[str, Any]) -> str: ...

    async def score(self, task: Task, answer: str | None) -> float: ...

    def check_finish(self, task: Task, args: Mapping[str, Any],
                     state: dict[str, Any]) -> str | None:
        """Asked before an episode ends on `finish(args)`: a message refusing the finish (shown to
        the agent) or None to accept it; may set `state[episode.ANSWER_OVERRIDE]`. May also be
        async. Domains without a finish rule return None."""
        ...


def function_tool(name: str, description: str, properties: Mapping[str, Mapping[str, Any]],
                  required: Sequence[str] = ()) -> dict[str, Any]:
    """An OpenAI function-tool dict. `parameters.properties` is always present (the Seed-OSS
    chat template fails to render a tool without it)."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": dict(properties),
                           "required": list(required)},
        },
    }


def ask_user_schema() -> dict[str, Any]:
    """The `ask_user(question)` tool the runner adds to every episode."""
    return function_tool(
        ASK_USER,
        "Ask the user a question when the task is unclear or information is missing. The user "
        "answers briefly. Asking costs the user effort: ask only when needed, and ask in the way "
        "the user prefers.",
        {"question": {"type": "string", "description": "The question for the user."}},
        ["question"])


# --- observation truncation (reference section 5.3, client side) --------------------------------

MAX_LINES = 500
MAX_LINE_CHARS = 6000
MERGE_REPEATS = 32
KEEP_TAIL_LINES = 5


def truncate_observation(text: str, max_lines: int = MAX_LINES, max_line_chars: int = MAX_LINE_CHARS,
                         merge_repeats: int = MERGE_REPEATS, keep_tail: int = KEEP_TAIL_LINES) -> str:
    """Bounds an observation the way the released code does.

    1. A run of more than `merge_repeats` identical consecutive lines is kept once, followed by
       `... (line repeated N more times) ...`.
    2. Lines longer than `max_line_chars` are cut, with `... (K chars omitted)`.
    3. More than `max_lines` lines: keep the first `max_lines - keep_tail - 1`, a marker
       `... N lines omitted ...`, and the last `keep_tail`.
    """
    lines = text.split("\n")
    merged: list[str] = []
    i = 0
    while i < len(lines):
        j = i
        while j + 1 < len(lines) and lines[j + 1] == lines[i]:
            j += 1
        run = j - i + 1
        if run > merge_repeats:
            merged.append(lines[i])
            merged.append(f"... (line repeated {run - 1} more times) ...")
        else:
            merged.extend(lines[i:j + 1])
        i = j + 1
    cut = [ln if len(ln) <= max_line_chars
           else ln[:max_line_chars] + f"... ({len(ln) - max_line_chars} chars omitted)"
           for ln in merged]
    if len(cut) > max_lines:
        head = max_lines - keep_tail - 1
        omitted = len(cut) - head - keep_tail
        cut = cut[:head] + [f"... {omitted} lines omitted ..."] + cut[-keep_tail:]
    return "\n".join(cut)


# --- function-localization F1 (reference section 6.1) -------------------------------------------

# The released scorer's `clean` (envs/repo_env.py, FuncLocEnv.reward_f1): after stripping, an
# optional `./` or `/` and then `testbed/` or `workspace/` are removed as one prefix.
_VIRTUAL_ROOT_PREFIX = re.compile(r"^(?:\.?/)?(?:testbed/|workspace/)")


def normalize_location(item: str) -> str:
    """Normalizes one `path:function` answer line as the released scorer does: strip whitespace,
    drop every leading `/`, drop one `testbed/` or `workspace/` prefix (itself optionally after
    `./` or `/`, so `/testbed/`, `./testbed/` and `/./testbed/` all go), then `os.path.normpath`
    (which also removes a plain leading `./` and inner `.` / `..` steps)."""
    item = item.strip().lstrip("/")
    item = _VIRTUAL_ROOT_PREFIX.sub("", item, count=1)
    return os.path.normpath(item)


def parse_location_answer(answer: str | None) -> set[str]:
    """Splits an answer into normalized, non-empty `path:function` lines."""
    if not answer:
        return set()
    return {normalize_location(line) for line in answer.splitlines() if line.strip()}


def location_f1(answer: str | None, gold: Sequence[str]) -> float:
    """Set F1 = 2|P∩G| / (|P|+|G|) over normalized locations; both empty -> 1, one empty -> 0.
    A missing answer (None: the episode never finished) scores 0."""
    if answer is None:
        return 0.0
    pred = parse_location_answer(answer)
    gold_set = {normalize_location(g) for g in gold if g.strip()}
    if not pred and not gold_set:
        return 1.0
    if not pred or not gold_set:
        return 0.0
    return 2 * len(pred & gold_set) / (len(pred) + len(gold_set))


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a local `.jsonl`, `.json` (a list, or {"rows": [...]}) or `.parquet` file.

    Any fault of the file (missing, empty of JSON, a line that is not JSON or not an object)
    raises `rows.DataError` naming the file and line (`rows.read_located_rows`, which also
    keeps each row's location).
    """
    return [row for _, row in read_located_rows(path)]
