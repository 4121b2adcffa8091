"""An offline, deterministic user simulator: retrieval over the precise prompt plus rule judges.

`EmbeddedUserSimulator` needs no model. For each question it:

1. refuses past the question cap (effort medium, answered False);
2. applies the preference where it decides whether the user answers at all: `do_selection`
   users answer only questions with lettered options (with a single letter), `amateur` users only
   non-technical questions (and never see the hidden facts);
3. if the question asks for hidden task facts (which file / function / where / path / document /
   URL ..., or it matches a hidden line better than any prompt sentence) and there are some,
   reveals the best-matching hidden line: effort **high**. A question that asks for a function
   (method, class, routine ...) is answered with a `path:function` line, never with a bare file
   path, even when it shares no word with any hidden line;
4. otherwise answers with the precise-prompt sentences that best match the question under BM25,
   if at least `min_overlap` content words match: effort **low**;
5. otherwise says it does not know: effort **medium**.

Compliance (`followed`) comes from the rule judge (envs.judges.judge_question) for text-judged
preferences; it is None for trajectory-judged and unjudged preferences (the episode's
`judge_trajectory` covers those). Output is a pure function of (context, question).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

from ppp_jax.envs import judges
from ppp_jax.envs.preferences import get_preference
from ppp_jax.envs.simulator import (
    CAP_REPLY,
    DEFAULT_MAX_QUESTIONS,
    IDK_REPLY,
    AmateurHidden,
    SimulatorContext,
    SimulatorReply,
    cap_reply,
    check_question,
)

_STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from into onto about as is are
    was were be been being do does did doing have has had having i you he she it we they me my
    your our their this that these those there here what which who whom whose when where why how
    can could should would will shall may might must not no yes so too very just also any some
    all each more most other such only own same than s t don now please tell know want need does
    let us get got thing things one ok okay hi hello thanks thank question ask asking exactly
    its it's i'm i've""".split()
)
_TOKEN_RE = re.compile(r"[a-z0-9]+")

# Phrases that ask for the hidden facts (location of the change, gold documents).
_HIDDEN_REQUEST_RE = re.compile(
    r"\b(which|what)\s+(file|files|function|functions|method|methods|class|module|line|lines|"
    r"document|documents|page|source|url|link)\b|\bwhere\b|\bfile\s*paths?\b|\bpath\b|"
    r"\blocation\b|\blocate\b|\bline numbers?\b|\bname of the (function|method|file|class)\b|"
    r"\bgold\b|\burl\b|\blink\b|\bsource document\b|\bhint\b",
    re.IGNORECASE,
)
_KINDS = r"(?:files?|functions?|methods?|class(?:es)?|modules?|routines?|procedures?|callables?)"
# Requests phrased around the thing wanted ("which Python routine", "the function to edit"); a
# question about what a function should do ("what should the function return?") is not one.
_HIDDEN_THING_RE = re.compile(
    rf"\bwhich\s+(?:[\w-]+\s+){{0,2}}{_KINDS}\b|\b(?:the|a)\s+{_KINDS}\s+"
    r"(?:to|that|i|we|you|should|needs?|must|where|responsible|in\s+question)\b",
    re.IGNORECASE,
)
# The question wants a function-level answer (not just a file).
_ASKS_FUNCTION_RE = re.compile(
    r"\b(?:functions?|methods?|class(?:es)?|routines?|procedures?|callables?|def|"
    r"function\s+names?|method\s+names?)\b", re.IGNORECASE)
# A hidden line naming a function: `path:name` or `path:Class.method`.
_FUNCTION_LINE_RE = re.compile(r"^[^\s:]+:[A-Za-z_][\w.]*$")
# A code location as the user would paste it (`path/file.py:Qual.name`): kept as it is in a reply
# written in capitals, since a retyped location would no longer name the code.
_LOCATION_RE = re.compile(r"([\w./-]+\.py(?::[\w.]+)?)")  # a group: split() keeps the matches
_OPTION_SPLIT_RE = re.compile(r"(?:^|[\s(\[])([A-Ha-h])(?:\)|\]|\.(?=\s)|:(?=\s))", re.MULTILINE)


def content_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens minus stopwords; `snake_case`/paths split into parts."""
    return [t for t in _TOKEN_RE.findall(text.lower()) if t not in _STOPWORDS and len(t) > 1]


@functools.lru_cache(maxsize=256)
def prompt_sentences(precise_prompt: str) -> tuple[str, ...]:
    """The precise prompt split into lines, then sentences (pysbd); empty pieces dropped."""
    out = []
    for line in precise_prompt.splitlines():
        if line.strip():
            out.extend(judges.split_sentences(line))
    return tuple(out)


def bm25_scores(query: list[str], docs: list[list[str]], k1: float = 1.2, b: float = 0.75):
    """Okapi BM25 score of each tokenized doc for the tokenized query (pure, deterministic)."""
    n = len(docs)
    if n == 0:
        return []
    avgdl = sum(len(d) for d in docs) / n or 1.0
    df: dict[str, int] = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    scores = []
    for d in docs:
        s = 0.0
        for t in set(query):
            f = d.count(t)
            if f == 0:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(s)
    return scores


@dataclasses.dataclass(frozen=True)
class EmbeddedSimulatorConfig:
    """Settings of the embedded simulator."""

    max_questions: int = DEFAULT_MAX_QUESTIONS  # answers at most this many questions per episode
    min_overlap: int = 2  # content words a prompt sentence must share with a low-effort question
    max_answer_sentences: int = 2  # prompt sentences quoted in a low-effort answer
    show_tags_to_agent: bool = False  # append [Cost N] (and [Reward k]) lines, as the released code
    cap_reply: str = CAP_REPLY  # the untagged refusal past `max_questions`
    amateur_hidden: AmateurHidden = "all"  # families hiding the gold from `amateur` ("swe": released)

    def __post_init__(self):
        if self.max_questions < 0 or self.min_overlap < 1 or self.max_answer_sentences < 1:
            raise ValueError(f"invalid EmbeddedSimulatorConfig {self}")


class EmbeddedUserSimulator:
    """Offline deterministic simulator (see the module docstring). Safe to share across tasks."""

    def __init__(self, config: EmbeddedSimulatorConfig = EmbeddedSimulatorConfig()):
        self.config = config

    async def answer(self, ctx: SimulatorContext, question: str) -> SimulatorReply:
        return self.answer_sync(ctx, question)

    def answer_sync(self, ctx: SimulatorContext, question: str) -> SimulatorReply:
        """The synchronous core of `answer` (the simulator does no I/O); with
        `show_tags_to_agent`, the text carries the released code's tag lines."""
        out = self._answer(ctx, question)
        if not self.config.show_tags_to_agent or not out.answered or out.level is None:
            return out
        text = f"{out.text}\n[Cost {out.level}]"
        if get_preference(ctx.preference_id).rubric is not None and out.followed is not None:
            text += f"\n[Reward {int(out.followed)}]"
        return dataclasses.replace(out, text=text, raw=text)

    def _answer(self, ctx: SimulatorContext, question: str) -> SimulatorReply:
        check_question(question)
        pref = get_preference(ctx.preference_id)
        if ctx.questions_answered >= self.config.max_questions:
            return cap_reply(ctx, self.config.cap_reply)
        followed = judges.judge_question(pref.id, question)
        fam = ctx.task_family
        idk_level = 3 if fam == "swe" else 2

        def reply(text: str, effort: str, level: int) -> SimulatorReply:
            text = _in_manner(pref.id, text)
            return SimulatorReply(text, effort, followed, True, text, level)  # type: ignore[arg-type]

        if pref.id == "amateur" and not followed:
            return reply(IDK_REPLY, "medium", idk_level)
        if pref.id == "do_selection" and not followed:
            return reply(IDK_REPLY, "medium", idk_level)

        q_tokens = content_tokens(question)
        sentences = prompt_sentences(ctx.precise_prompt)
        sent_tokens = [content_tokens(s) for s in sentences]
        overlaps = [len(set(q_tokens) & set(t)) for t in sent_tokens]
        best_prompt_overlap = max(overlaps, default=0)

        hidden = [ln.strip() for ln in (ctx.hint + "\n" + ctx.hidden_info).splitlines() if ln.strip()]
        if pref.id == "amateur" and (fam == "swe" or self.config.amateur_hidden == "all"):
            hidden = []  # amateur users are not shown the gold location (released: SWE only)
        hidden_overlaps = [len(set(q_tokens) & set(content_tokens(h))) for h in hidden]
        asks_hidden = _HIDDEN_REQUEST_RE.search(question) is not None or (
            _HIDDEN_THING_RE.search(question) is not None) or (
            max(hidden_overlaps, default=0) >= self.config.min_overlap
            and max(hidden_overlaps, default=0) > best_prompt_overlap
        )

        if pref.id == "do_selection":
            return self._select(ctx, question, sentences, sent_tokens, hidden, asks_hidden)

        if asks_hidden and hidden:
            candidates = range(len(hidden))
            if _ASKS_FUNCTION_RE.search(question):
                functions = [j for j in candidates if _FUNCTION_LINE_RE.match(hidden[j])]
                candidates = functions or candidates  # a function, not a file, if there is one
            i = max(candidates, key=lambda j: (hidden_overlaps[j], -j))
            item = hidden[i]
            return reply(item, "high", _hidden_level(fam, item, ctx.hint))
        if best_prompt_overlap >= self.config.min_overlap:
            scores = bm25_scores(q_tokens, sent_tokens)
            ranked = sorted(range(len(sentences)), key=lambda j: (-scores[j], j))
            top = [j for j in ranked[: self.config.max_answer_sentences] if overlaps[j] > 0]
            text = " ".join(sentences[j] for j in sorted(top))
            return reply(text, "low", 1)
        return reply(IDK_REPLY, "medium", idk_level)

    def _select(self, ctx, question, sentences, sent_tokens, hidden, asks_hidden):
        """do_selection: pick the option that the user's knowledge supports best; reply a letter."""
        fam = ctx.task_family
        marks = list(_OPTION_SPLIT_RE.finditer(question))
        options = []
        for k, m in enumerate(marks):
            end = marks[k + 1].start() if k + 1 < len(marks) else len(question)
            options.append((m.group(1), content_tokens(question[m.end() : end])))
        stem = content_tokens(question[: marks[0].start()]) if marks else []
        known = set().union(*sent_tokens) if sent_tokens else set()
        hidden_tokens = set().union(*(content_tokens(h) for h in hidden)) if hidden else set()
        best, best_key, effort, level = None, None, "medium", (3 if fam == "swe" else 2)
        for k, (letter, toks) in enumerate(options):
            # How well the best single prompt sentence supports "stem + this option".
            support = max(bm25_scores(stem + toks, sent_tokens), default=0.0)
            in_prompt = len(set(toks) & known)
            in_hidden = len(set(toks) & hidden_tokens)
            key = (in_prompt > 0, support, -k)
            if asks_hidden:
                key = (in_hidden > 0, in_hidden, -k)
            if best_key is None or key > best_key:
                best, best_key = letter, key
        if best_key is not None and best_key[0]:
            effort, level = ("high", _hidden_level(fam, "", "")) if asks_hidden else ("low", 1)
        text = best if (best is not None and effort != "medium") else IDK_REPLY
        followed = judges.judge_question("do_selection", question)
        return SimulatorReply(text, effort, followed, True, text, level)  # type: ignore[arg-type]


def _hidden_level(family: str, item: str, hint: str) -> int:
    """Released-code level for revealing `item`: SWE hint 2, file path 4, function name 5."""
    if family == "search":
        return 3
    if hint and item in hint:
        return 2
    return 5 if ":" in item else 4


def _in_manner(preference_id: str, text: str) -> str:
    """Shapes a reply the way a user with this preference would write it, where observable."""
    if preference_id == "capital":  # locations sit at the odd indices of the split
        return "".join(p if i % 2 else p.upper() for i, p in enumerate(_LOCATION_RE.split(text)))
    if preference_id == "commas":
        return "".join(" " if judges._is_comma(ch) else ch for ch in text).replace("  ", " ")
    if preference_id == "lang_ita" and text == IDK_REPLY:
        return "Non lo so."
    return text
