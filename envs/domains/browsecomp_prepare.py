"""`ppp data browsecomp`: BrowseComp-Plus queries and corpus -> a prepared data set folder.

    queries + corpus (local .jsonl/.json/.parquet, or the Hugging Face hub when online)
      -> every query and document checked (`browsecomp.check_query_rows`, `Corpus.from_rows`:
         a malformed row refuses the set); queries with no evidence document in the corpus are
         dropped and counted
      -> vague queries (`envs.prepare.vaguenize_rows`; a row's `vague_query` is kept)
      -> the BM25 index (bm25s, `bm25/`) and the dense index (`dense/embeddings.npy`: [N, D]
         float32 written batch by batch through a memory map, memory-mapped at load; the
         sentence-embedding model is `dense.model`, the packaged MiniLM by default)
      -> the train/test split (the paper: 450 / 100) -> `<output>/`: queries.jsonl, train.jsonl,
         test.jsonl, corpus.jsonl (the documents in index order), bm25/, dense/, dropped.json,
         manifest.json; whole or not at all.

Each kept query row carries `full_query` (precise: what the simulator and judge see), `query`
and `vague_query` (the vague one the agent sees), `vague_source` and `split`. A run uses it with
`domain.browsecomp_queries: <output>/train.jsonl`, `domain.browsecomp_corpus:
<output>/corpus.jsonl` and `domain.browsecomp_index: <output>` (its saved indexes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ppp_jax.envs.domains.browsecomp import (
    HF_CORPUS,
    HF_QUERIES,
    _docids,
    _query_id,
    check_query_rows,
)
from ppp_jax.envs.domains.retrievers import (
    BM25_DIR,
    DENSE_DIR,
    Corpus,
    DenseSpec,
    write_bm25_index,
    write_dense_index,
)
from ppp_jax.envs.domains.rows import DataError, DropReport, load_located_rows
from ppp_jax.envs.prepare import (
    BarFactory,
    NullBar,
    PreparedFolder,
    SplitSpec,
    VaguenizerSpec,
    drops_record,
    file_sha256,
    split_counts,
    vaguenize_and_split,
    vaguenizer_record,
)

__all__ = ["BrowseCompSource", "DenseSpec", "prepare_browsecomp"]

NO_EVIDENCE = "no evidence document in the corpus"


@dataclasses.dataclass(frozen=True)
class BrowseCompSource:
    """The `browsecomp:` section of a data config.

    queries: query rows (`query_id`, `query` or `full_query`, `answer`, `evidence_docs` or
      `gold_docs`): a local file, or a Hugging Face dataset name (network).
    corpus: document rows (`docid`, `text`, optional `url`): a local file or a hub name.
    queries_split, corpus_split: hub splits.
    require_evidence: drop (and count) queries none of whose evidence documents is in the corpus.
    """

    queries: str = HF_QUERIES[0]
    corpus: str = HF_CORPUS[0]
    queries_split: str = HF_QUERIES[1]
    corpus_split: str = HF_CORPUS[1]
    require_evidence: bool = True


def prepare_browsecomp(src: BrowseCompSource, dense: DenseSpec, vague: VaguenizerSpec,
                       split: SplitSpec, output: str, *, overwrite: bool = False,
                       bar: BarFactory = NullBar, config: dict[str, Any] | None = None,
                       client: Any = None, embedder: Any = None) -> dict[str, Any]:
    """Prepares `output` (see the module docstring) and returns its manifest. DataError for a
    bad row or file, no query left or too many failed rewrites; FileExistsError for an
    existing `output` without `overwrite`. Nothing is written then."""
    q_rows = load_located_rows(src.queries, src.queries_split)
    c_rows = load_located_rows(src.corpus, src.corpus_split)
    if not q_rows:
        raise DataError(src.queries, "", "no rows (browsecomp.queries)")
    if not c_rows:
        raise DataError(src.corpus, "", "no rows (browsecomp.corpus)")
    corpus = Corpus.from_rows(c_rows, what=src.corpus)
    located = check_query_rows(q_rows, what=src.queries)
    drops = DropReport(src.queries, rows=len(located))
    rows: dict[str, dict[str, Any]] = {}
    for i, (_, row) in enumerate(located):
        qid = _query_id(row, i)
        evidence = _docids(row.get("evidence_docs") or row.get("gold_docs"))
        if src.require_evidence and not any(text or corpus.get(d) for d, text in evidence):
            drops.drop(NO_EVIDENCE, qid)
            continue
        rows[qid] = dict(row)
    items = []
    for qid, row in rows.items():
        precise = str(row.get("full_query") or row["query"])
        own = row.get("vague_query") or (row["query"] if row.get("full_query") else None)
        items.append((qid, precise, own))
    done = vaguenize_and_split(items, vague, split, output, drops, src.queries, bar=bar,
                               client=client)
    outcome = done.outcome
    out_rows = []
    for qid in done.kept:
        row = dict(rows[qid])
        precise = str(row.get("full_query") or row["query"])
        row.update(query_id=qid, full_query=precise, query=outcome.vague[qid],
                   vague_query=outcome.vague[qid], vague_source=outcome.source[qid],
                   split=done.sides[qid])
        out_rows.append(row)
    counts = {**split_counts(out_rows, drops), "documents": len(corpus)}
    source = {"queries": src.queries, "corpus": src.corpus}
    for key in ("queries", "corpus"):
        if os.path.isfile(getattr(src, key)):
            source[f"{key}_sha256"] = file_sha256(getattr(src, key))
    with PreparedFolder(output, overwrite=overwrite) as folder:
        folder.write_splits("queries.jsonl", out_rows)
        folder.write_jsonl("corpus.jsonl", [{"docid": d.docid, "text": d.text, "url": d.url}
                                            for d in corpus.docs])
        write_bm25_index(corpus, folder.path)
        dense_info = write_dense_index(corpus, dense, folder.path, embedder=embedder, bar=bar)
        for sub in (BM25_DIR, DENSE_DIR):
            for f in sorted((folder.path / sub).iterdir()):
                folder.add_file(f"{sub}/{f.name}")
        folder.write_json("dropped.json", drops_record(drops))
        manifest = {"kind": "browsecomp", "counts": counts, "source": source,
                    "vaguenizer": vaguenizer_record(vague, outcome, done.cache_path),
                    "split": dataclasses.asdict(split), "dense": dense_info,
                    "bm25": {"library": "bm25s", "k1": 0.9, "b": 0.4, "stopwords": "en"},
                    "config": config or {}}
        folder.commit(manifest)
    return manifest
