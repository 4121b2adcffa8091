"""Turning precise task prompts into vague ones (paper section 4.1).

Both vaguenizers follow the paper's two principles: keep the intent of the precise prompt, and
keep only partial information with the specifics generalised away.

* `RuleVaguenizer` (offline, deterministic): drops fenced and indented code blocks, tracebacks,
  interactive-session lines, inline code, URLs, file paths, code identifiers (snake_case,
  CamelCase, dotted names, calls, dunder names), version strings and numbers, then keeps the first
  statement of intent (the first remaining sentence with at least `min_words` words).
* `LLMVaguenizer`: asks an OpenAI-compatible model (through envs.llm_client) to rewrite the
  prompt, with an append-only JSONL cache on disk keyed by a content hash of (prompt version,
  model, precise text). Each finished rewrite is appended as one line and fsync'ed, so a crashed
  run resumes where it stopped; a torn last line from a crash is skipped (and counted) on load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ppp_jax.envs.llm_client import LLMClient

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Rule vaguenizer.

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_FENCED = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_TRACEBACK = re.compile(
    r"^[ \t]*Traceback \(most recent call last\):.*?(?:^[ \t]*[\w.]*(?:Error|Exception|Warning|"
    r"Exit|Interrupt)\b[^\n]*$|\Z)",
    re.DOTALL | re.MULTILINE,
)
_SESSION_LINE = re.compile(r"^[ \t]*(?:>>>|\.\.\.|\$|In \[\d+\]:|Out\[\d+\]:)[^\n]*$", re.MULTILINE)
_INDENTED_LINE = re.compile(r"^(?: {4}|\t)[^\n]*$", re.MULTILINE)
_CALL = re.compile(r"\b[A-Za-z_][\w.]*\([^()\n]*\)")  # foo(a, b=1), x.y(z)
_ASSIGNMENT = re.compile(r"\b\w+\s*=\s*(?:\"[^\"\n]*\"|'[^'\n]*'|\S+)")  # key="value"
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")
_PATH = re.compile(
    r"(?:[A-Za-z]:)?(?:[\w.~-]*[/\\])+[\w.-]+|\b[\w-]+\.(?:py|pyx|pxd|pyi|js|ts|tsx|jsx|c|cc|cpp|h|"
    r"hpp|rs|go|java|kt|rb|php|cs|sh|rst|md|txt|toml|yaml|yml|json|cfg|ini|xml|html|css|lock|log)\b"
)
_VERSION = re.compile(r"\bv?\d+(?:\.\d+)+(?:[-.]?(?:dev|rc|a|b|post)\d*)?\b|\bv\d+\b", re.IGNORECASE)
_IDENTIFIER = re.compile(
    r"\b[\w]+(?:\.[\w]+)+(?:\(\))?"  # dotted names: np.array, a.b.c(), obj.attr
    r"|\b\w+\(\)"  # calls: foo()
    r"|\b_*[A-Za-z0-9]+(?:_+[A-Za-z0-9]+)+_*\b"  # snake_case / CONSTANT_CASE / __dunder__
    r"|\b_\w+\b"  # _private
    r"|\b[a-z]+[A-Z][A-Za-z0-9]*\b"  # camelCase
    r"|\b[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*\b"  # CamelCase
    r"|\b[A-Z]{2,}[a-z]+[A-Za-z0-9]*\b"  # HTTPServer
    r"|\b[A-Za-z]+\d+[A-Za-z0-9]*\b"  # utf8, int64
    r"|(?<![\w-])--?[A-Za-z][\w-]*"  # command-line flags
    r"|\b\d+(?:\.\d+)?[A-Za-z]+\b"  # numbers with units: 20MB, 3s
)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,_]*(?:\.\d+)?(?:e[-+]?\d+)?%?(?![\w.])", re.IGNORECASE)
_LEFTOVER = re.compile(r"\(\s*[,;:]*\s*\)|\[\s*\]|\{\s*\}|\"\s*\"|'\s*'")


def _sentences(text: str) -> list[str]:
    from ppp_jax.envs.judges import split_sentences

    out = []
    for block in re.split(r"\n\s*\n|\n(?=[#*\-]\s)", text):
        block = " ".join(block.split())
        if block:
            out.extend(split_sentences(block))
    return out


def strip_specifics(text: str) -> str:
    """`text` with code blocks, tracebacks, paths, identifiers, numbers and versions removed."""
    t = text.replace("\r\n", "\n")
    t = _HTML_COMMENT.sub(" ", t)
    t = _FENCED.sub("\n\n", t)
    t = _TRACEBACK.sub("\n\n", t)
    t = _SESSION_LINE.sub("", t)
    t = _INDENTED_LINE.sub("", t)
    t = _INLINE_CODE.sub(" ", t)
    t = _CALL.sub(" ", t)
    t = _ASSIGNMENT.sub(" ", t)
    t = _URL.sub(" ", t)
    t = _PATH.sub(" ", t)
    t = _VERSION.sub(" ", t)
    t = _IDENTIFIER.sub(" ", t)
    t = _NUMBER.sub(" ", t)
    for _ in range(2):
        t = _LEFTOVER.sub(" ", t)
    t = re.sub(r"[ \t]+([,.;:!?])", r"\1", t)
    t = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", t)
    t = re.sub(r"[ \t]{2,}", " ", t)
    return t


_ERROR_LINE = re.compile(r"\b((?:[A-Z]\w*\.)*[A-Z]\w*(?:Error|Exception|Warning|Exit)):[ \t]*"
                         r"([^\n`]*[^\s`.:])")
_TITLE_MAX_WORDS = 25


def _title(precise: str) -> str | None:
    """The first line of an issue when it reads as a title: short, prose, not a template
    heading or code; None otherwise."""
    for line in _HTML_COMMENT.sub(" ", precise.replace("\r\n", "\n")).split("\n"):
        line = line.strip().lstrip("#").strip()
        if not line:
            continue
        if (line.startswith(("```", ">>>", "$", "- ", "* ")) or len(line.split()) > _TITLE_MAX_WORDS
                or len(re.findall(r"[^\W\d_]{2,}", line)) < 3):
            return None
        return line.rstrip(" .:")
    return None


@dataclasses.dataclass(frozen=True)
class RuleVaguenizer:
    """Deterministic offline vaguenizer (see the module docstring).

    style: "strip" keeps the first statement of intent with every specific removed (the
      embedded domains' vague prompts); "paper" writes what the paper's example keeps: the
      issue's title and the exact error line it quotes (`Title: ... gives "ValueError: ..."`),
      falling back to "strip" when there is no title line; in both styles, a rewrite that keeps
      80% or more of the precise text's words is cut to its first half, so a short statement
      never comes back unchanged.
    """

    min_words: int = 3  # a statement of intent has at least this many words
    max_sentences: int = 1  # sentences of intent kept
    style: Literal["strip", "paper"] = "strip"

    def vaguenize(self, precise: str) -> str:
        """The vague version of `precise`; never empty (falls back to a generic request)."""
        if not isinstance(precise, str):
            raise TypeError(f"precise prompt must be str, got {type(precise).__name__}")
        out = self._paper(precise) if self.style == "paper" else None
        if out is None:
            kept = []
            for s in _sentences(strip_specifics(precise)):
                s = s.strip(" \t-*#:;,>")
                if len(re.findall(r"[^\W\d_]{2,}", s)) >= self.min_words:
                    kept.append(s)
                if len(kept) >= self.max_sentences:
                    break
            if not kept:
                return "Something is not working as expected; please look into it."
            out = " ".join(kept)
        words, total = out.split(), len(precise.split())
        if self.style == "paper" and total >= 4 and len(words) >= 0.8 * total:
            out = " ".join(words[: max(3, total // 2)]).rstrip(" ,;:") + " ..."
        return out[0].upper() + out[1:]

    @staticmethod
    def _paper(precise: str) -> str | None:
        title = _title(precise)
        if title is None:
            return None
        body = precise.split("\n", 1)[1] if "\n" in precise else ""
        m = _ERROR_LINE.search(body) or _ERROR_LINE.search(title)
        if m is None or m.group(0) in title:
            return title
        return f'{title}, with the error "{m.group(1)}: {m.group(2).strip()}"'


# ---------------------------------------------------------------------------------------------
# LLM vaguenizer with a crash-safe cache.

PROMPT_VERSION = "v2"

# The paper's published example (Fig. 3 / Fig. 12): SWE-bench Verified astropy__astropy-13033.
# The paper prints the precise issue abbreviated. The text here was written without network
# access, from recollection of that instance's problem statement (HTML comments of the issue
# template left out): it has not been checked against the SWE-bench row and may differ in
# detail; replace it with the row's `problem_statement` when online. The vague side is the
# paper's, verbatim.
PAPER_EXAMPLE_PRECISE = """TimeSeries: misleading exception when required column check fails.

### Description

For a `TimeSeries` object that has additional required columns (in addition to `time`), when codes mistakenly try to remove a required column, the exception it produces is misleading.

### Expected behavior

An exception that informs the users required columns are missing.

### Actual behavior

The actual exception message is confusing:
`ValueError: TimeSeries object is invalid - expected 'time' as the first columns but found 'time'`

### Steps to Reproduce

```python
from astropy.time import Time
from astropy.timeseries import TimeSeries

time=Time(np.arange(100000, 100003), format='jd')
ts = TimeSeries(time=time, data = {"flux": [99.9, 99.8, 99.7]})
ts._required_columns = ["time", "flux"]
ts.remove_column("flux")
```

### System Details

```
Windows-10-10.0.22000-SP0
Python 3.9.10 | packaged by conda-forge | (main, Feb  1 2022, 21:21:54) [MSC v.1916 64 bit (AMD64)]
Numpy 1.22.3
pyerfa 2.0.0.1
astropy 5.0.3
Scipy 1.8.0
Matplotlib 3.5.1
```"""
PAPER_EXAMPLE_VAGUE = ("TimeSeries: removing column gives confusing error \"ValueError: TimeSeries "
                       "object is invalid - expected 'time' as the first columns but found "
                       "'time'\"")

# The two principles of the paper (section 4.1), then its example. The example sits in the
# system message (not as extra turns), so the request is always [system, user=precise text].
_SYSTEM = (
    "You rewrite a precise task description into the vague first message a busy user would "
    "actually send. Follow two principles:\n"
    "1. Keep the same goal as the original: the rewrite asks for exactly the same thing.\n"
    "2. Keep only part of the information, and make the specifics general: keep the gist (for "
    "an issue report, its title and, if there is one, the exact error message the user saw), "
    "and leave out the reproduction code, stack traces, expected/actual details, file paths, "
    "versions and environment details. For a research question, keep what is asked but drop "
    "most of the identifying constraints (dates, numbers, places, names), so that the question "
    "alone no longer pins down the answer.\n"
    "Write one or two plain sentences in the user's voice, shorter than the original. Output "
    "only the rewritten text, with no preamble, quotes or explanation.\n\n"
    "Example. Original:\n<<<\n" + PAPER_EXAMPLE_PRECISE + "\n>>>\nRewrite:\n"
    + PAPER_EXAMPLE_VAGUE
)


def prompt_record() -> dict[str, str]:
    """The vaguenization prompt as the manifest records it: version, full text and its sha256."""
    return {"version": PROMPT_VERSION, "system": _SYSTEM,
            "sha256": hashlib.sha256(_SYSTEM.encode("utf-8")).hexdigest(),
            "user": "the precise prompt, verbatim"}


class RewriteRejected(ValueError):
    """The model's reply is not a usable vague prompt; `why` says what is wrong with it."""

    def __init__(self, why: str, reply: str):
        self.why = why
        super().__init__(f"vaguenizer model returned an unusable rewrite ({why}): {reply[:80]!r}")


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:vague(?: prompt| version)?|rewrite|rewritten(?: text| "
                    r"prompt)?|answer|output)(?:\*\*)?\s*:\s*", re.IGNORECASE)
_COMMENTARY = re.compile(r"^\s*(?:sure\b|certainly\b|here(?:'s| is)\b|i (?:can(?:no|')t|am "
                         r"sorry|'m sorry|apologi[sz]e)|as an ai\b)", re.IGNORECASE)
_SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>|\[/?INST\]|<\|?im_(?:start|end)")


def clean_rewrite(reply: str) -> str:
    """The reply with a leading label ("Rewrite:") and wrapping quotes or backticks removed."""
    text = _LABEL.sub("", reply.strip()).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def check_rewrite(precise: str, vague: str, min_words: int = 3) -> str | None:
    """Why `vague` is not a usable rewrite of `precise` (None when it is): empty, fewer than
    `min_words` words, the same as the precise text, not shorter than it, chat-template tokens,
    or commentary/refusal instead of a rewrite."""
    if not vague.strip():
        return "empty"
    if _SPECIAL.search(vague):
        return "chat-template tokens in the reply"
    if _COMMENTARY.match(vague):
        return "commentary or a refusal instead of a rewrite"
    if len(re.findall(r"[^\W\d_]+", vague)) < min_words:
        return f"fewer than {min_words} words"
    if " ".join(vague.split()) == " ".join(precise.split()):
        return "the same as the precise prompt"
    if len(vague.split()) >= len(precise.split()) and len(vague) >= len(precise):
        return "not shorter than the precise prompt"
    return None


def cache_key(precise: str, model: str, prompt_version: str = PROMPT_VERSION) -> str:
    """sha256 hex of (prompt version, model, precise text): the cache's content hash."""
    h = hashlib.sha256()
    for part in (prompt_version, model, precise):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class VagueCache:
    """Append-only JSONL cache `{"key": ..., "vague": ...}` per line; crash-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        self.corrupt_lines = 0
        if self.path.exists():
            with self.path.open("r", encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.entries[row["key"]] = row["vague"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.corrupt_lines += 1
            if self.corrupt_lines:
                log.warning("%s: skipped %d unreadable line(s)", self.path, self.corrupt_lines)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, vague: str) -> None:
        """Appends one entry as a single line and fsyncs it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "vague": vague}, ensure_ascii=False) + "\n"
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"  # a torn line from a crash: start fresh
        with self.path.open("a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + line)
            f.flush()
            os.fsync(f.fileno())
        self.entries[key] = vague


class LLMVaguenizer:
    """Rewrites precise prompts with an LLM; results cached on disk (see the module docstring)."""

    def __init__(self, client: LLMClient, cache_path: str | Path, prompt_version: str = PROMPT_VERSION,
                 tries: int = 1, retry_temperature: float = 1.0):
        self.client = client
        self.cache = VagueCache(cache_path)
        self.prompt_version = prompt_version
        self.tries, self.retry_temperature = max(1, tries), retry_temperature
        self.stats = {"hits": 0, "misses": 0, "rejected": 0, "retried": 0}

    def _key(self, precise: str) -> str:
        return cache_key(precise, self.client.config.model, self.prompt_version)

    async def vaguenize(self, precise: str) -> str:
        """The vague version of `precise`, from the cache or the model (then cached). A reply
        `check_rewrite` refuses is asked again (at `retry_temperature`) up to `tries` times in
        all; then RewriteRejected says why the last one was refused."""
        if not isinstance(precise, str) or not precise.strip():
            raise ValueError("precise prompt must be a non-empty string")
        key = self._key(precise)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["hits"] += 1
            return hit
        self.stats["misses"] += 1
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": precise}]
        for attempt in range(self.tries):
            if attempt:
                self.stats["retried"] += 1
            params = {"temperature": self.retry_temperature} if attempt else {}
            result = await self.client.chat(messages, **params)
            vague = clean_rewrite(result.text)
            why = check_rewrite(precise, vague)
            if why is None:
                self.cache.put(key, vague)
                return vague
            self.stats["rejected"] += 1
        raise RewriteRejected(why, result.text)

    async def vaguenize_many(self, texts: Sequence[str]) -> list[str]:
        """Rewrites all `texts` concurrently (bounded by the client's limit), in input order.

        Each finished rewrite is cached at once, so a crash loses only the unfinished ones. If
        some fail, all others still finish (and are cached) before the first error is raised.
        """
        results = await asyncio.gather(*(self.vaguenize(t) for t in texts), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return list(results)
