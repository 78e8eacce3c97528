"""The Tantivy lexical index: filters as kb.search passes them, BM25 order, migration from older knowledge bases,
text kept once, and a writer killed before its commit."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kb.lexical import LexicalIndex
from kb.search import Filters, search
from kb.types import Chunk
from tests.test_search import put

ROOT = Path(__file__).resolve().parent.parent


def test_every_filter_of_kb_search_narrows_lexical_hits(open_kb):
    store = open_kb()
    put(store, "report.pdf", ["Harbour ice in January.", "Harbour ice in March.", "Harbour ice in May."],
        modality="pdf_text", pages=True, ingested_at=1000.0)
    put(store, "talk.mp4", ["Harbour ice on video.", "Harbour ice again.", "Harbour ice at the end."],
        modality="video_segment", seconds=60.0, ingested_at=5000.0)
    put(store, "notes.md", ["Harbour ice notes."], ingested_at=9000.0)

    def found(**filters) -> set[tuple[str, object]]:
        hits = search(store, "harbour ice", k=20, mode="lexical", filters=Filters(**filters), parse_times=False)
        return {(h.chunk.rel, h.chunk.page if h.chunk.page is not None else h.chunk.t_start) for h in hits}

    assert len(found()) == 7
    assert found(pages=(2, 3)) == {("report.pdf", 2), ("report.pdf", 3)}
    assert found(seconds=(70, 130)) == {("talk.mp4", 60.0), ("talk.mp4", 120.0)}
    assert found(modalities=["video"]) == {("talk.mp4", 0.0), ("talk.mp4", 60.0), ("talk.mp4", 120.0)}
    assert found(sources=["notes.md"]) == {("notes.md", None)}
    assert found(ingested_after=4000.0) == found(sources=["talk.mp4"]) | found(sources=["notes.md"])
    # A moment in the question keeps other kinds and only the video segments around it.
    window = found(video_window=(100.0, 110.0))
    assert ("talk.mp4", 60.0) in window and ("notes.md", None) in window and ("talk.mp4", 0.0) not in window


def test_bm25_puts_the_passage_with_more_rare_words_first(open_kb):
    store = open_kb()
    put(store, "a.md", ["The quarterly audit of the warehouse found nothing unusual."])
    put(store, "b.md", ["Warehouse audit: pallet 7 had crushed crates and the audit flagged crushed crates twice."])
    put(store, "c.md", ["The canteen menu changes every week."])
    hits = store.lexical_query("crushed crates audit", 10)
    assert [h.chunk.rel for h in hits] == ["b.md", "a.md"]
    assert hits[0].score > hits[1].score > 0


def test_text_is_kept_once_in_the_lexical_index_and_dense_hits_still_carry_it(open_kb):
    store = open_kb()
    put(store, "ledger.md", ["Invoice INV-2024-0117 was paid in March.", "The auditor signed on Friday."])
    assert store._collection.get(include=["documents"])["documents"] == [None, None]
    hits = search(store, "auditor signature", k=2, mode="dense")
    assert {h.chunk.text for h in hits} == {"Invoice INV-2024-0117 was paid in March.", "The auditor signed on Friday."}
    chunks, vectors = store.chunks_of("/library/ledger.md", with_embeddings=True)
    assert [c.text for c in chunks] == ["Invoice INV-2024-0117 was paid in March.", "The auditor signed on Friday."]
    assert len(vectors) == 2 and len(vectors[0]) == store.embedder.dimension


def _old_chroma_kb(store) -> None:
    """Turn a store into one from before the Tantivy index: texts in Chroma's documents, no lexical folder."""
    got = store._collection.get(include=["metadatas", "embeddings"])
    texts = store.lexical.rows(got["ids"])
    store._collection.upsert(ids=got["ids"], embeddings=got["embeddings"], metadatas=got["metadatas"],
                             documents=[texts[i][1] for i in got["ids"]])


def test_a_knowledge_base_from_before_tantivy_gets_its_index_from_chroma(open_kb, embedder):
    import shutil

    from kb.store import open_store

    store = open_kb()
    put(store, "ledger.md", ["Invoice INV-2024-0117 was paid in March."])
    _old_chroma_kb(store)
    store.close()
    shutil.rmtree(store.settings.home / "lexical")
    again = open_store(store.settings, embedder)
    try:
        assert [h.chunk.rel for h in again.lexical_query("INV-2024-0117", 10)] == ["ledger.md"]
    finally:
        again.close()


def test_a_knowledge_base_with_the_old_fts5_index_moves_to_tantivy(open_kb, embedder):
    import shutil

    from kb.store import open_store

    store = open_kb()
    put(store, "ledger.md", ["Invoice INV-2024-0117 was paid in March.", "Receipt E_ACCESS_4711 filed."])
    rows = [(cid, text, json.dumps(meta)) for cid, text, meta in store.lexical.rows_of("/library/ledger.md")]
    store.close()
    shutil.rmtree(store.settings.home / "lexical")
    old = sqlite3.connect(store.settings.home / "lexical.sqlite")  # the columns the FTS5 index had and we read
    old.execute("CREATE TABLE chunks (rowid INTEGER PRIMARY KEY, id TEXT, text TEXT, meta TEXT, tokens TEXT)")
    old.executemany("INSERT INTO chunks (id, text, meta, tokens) VALUES (?, ?, ?, '')", rows)
    old.commit()
    old.close()
    again = open_store(store.settings, embedder)
    try:
        assert [h.chunk.text for h in again.lexical_query("E_ACCESS_4711", 10)] == ["Receipt E_ACCESS_4711 filed."]
        assert not (store.settings.home / "lexical.sqlite").exists()
    finally:
        again.close()


def test_a_lost_lexical_index_of_a_new_knowledge_base_is_a_clear_error(open_kb, embedder):
    import shutil

    from kb.errors import StoreError
    from kb.store import open_store

    store = open_kb()
    put(store, "ledger.md", ["Invoice INV-2024-0117 was paid in March."])
    store.close()
    shutil.rmtree(store.settings.home / "lexical")
    with pytest.raises(StoreError, match="lexical index .* is missing") as err:
        open_store(store.settings, embedder)
    assert "ingest the files again" in err.value.fix


KILLED_WRITER = """
import sys, time
from pathlib import Path
from kb.lexical import LexicalIndex
from kb.types import Chunk
index = LexicalIndex(Path(sys.argv[1]), lambda paths: {p: "v1" for p in paths}, exclusive=True)
def chunk(n, word):
    return Chunk(id=f"c{n}", text=f"{word} number {n}", rel="s", path="/s", sha256="v1", modality="text",
                 position=n)
index.upsert([chunk(n, "committed") for n in range(3)])
with index._open.lock:  # what upsert does, stopped before the commit
    writer = index._open.writer
    for n in range(3, 400):
        writer.add_document(__import__("kb.lexical", fromlist=["_document"])._document(chunk(n, "uncommitted"), {}))
    print("ready", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_before_its_commit_leaves_the_last_commit_whole(tmp_path: Path):
    path = tmp_path / "lexical"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    index = LexicalIndex(path, lambda paths: {p: "v1" for p in paths}, exclusive=True)
    try:
        assert index.count() == 3
        assert [cid for cid, *_ in index.query("committed", 10)] != [] and index.query("uncommitted", 10) == []
        # The dead process's lock is gone with it: this one writes.
        index.upsert([Chunk(id="c9", text="after the crash", rel="s", path="/s", sha256="v1",
                            modality="text", position=9)])
        assert [cid for cid, *_ in index.query("crash", 10)] == ["c9"] and index.count() == 4
    finally:
        index.close()


def test_a_second_process_waits_for_the_writer_in_server_mode(tmp_path: Path):
    """Several processes on one knowledge base (a Chroma server): a write waits for the other's commit."""
    path = tmp_path / "lexical"
    holder = LexicalIndex(path, lambda paths: {p: "v1" for p in paths}, exclusive=True)
    holder.upsert([Chunk(id="a", text="first writer", rel="s", path="/s", sha256="v1", modality="text",
                         position=0)])
    script = ("import sys; from pathlib import Path; from kb.lexical import LexicalIndex; from kb.types import Chunk;"
              "i = LexicalIndex(Path(sys.argv[1]), lambda p: {x: 'v1' for x in p}, exclusive=False);"
              "i.upsert([Chunk(id='b', text='second writer', rel='s', path='/s', sha256='v1', "
              "modality='text', position=1)]); i.close()")
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT)
    time.sleep(3)
    assert child.poll() is None  # still waiting: this process holds the writer
    holder.close()  # gives the writer back
    assert child.wait(timeout=120) == 0
    reader = LexicalIndex(path, lambda paths: {p: "v1" for p in paths}, exclusive=False)
    try:
        assert {cid for cid, *_ in reader.query("writer", 10)} == {"a", "b"}
    finally:
        reader.close()


def test_ids_are_replaced_not_duplicated(tmp_path: Path):
    index = LexicalIndex(tmp_path / "lexical", lambda paths: {p: "v1" for p in paths}, exclusive=True)
    try:
        chunk = Chunk(id="x", text="old words", rel="s", path="/s", sha256="v1", modality="text", position=0)
        index.upsert([chunk])
        index.upsert([Chunk(**{**chunk.__dict__, "text": "new words"})])
        assert index.count() == 1 and [row[1] for row in index.rows(["x"]).values()] == ["new words"]
    finally:
        index.close()


def test_several_sources_written_at_once_are_each_replaced_whole(open_kb):
    from kb.manifest import SourceRecord

    store = open_kb()

    def version(name: str, texts: list[str]):
        path = f"/library/{name}"
        sha = hashlib.sha256("".join(texts).encode()).hexdigest()
        chunks = [Chunk(id=f"{sha[:16]}:{n}", text=t, rel=name, path=path, sha256=sha, modality="text",
                        position=n) for n, t in enumerate(texts)]
        return SourceRecord(path=path, rel=name, sha256=sha, size=1, kind="text", status="ok", chunks=0,
                            engine="test", model=""), chunks, None

    store.replace_sources([version("a.md", ["Alpha report on turbines.", "Alpha appendix."]),
                           version("b.md", ["Beta report on turbines."])])
    assert {h.chunk.rel for h in store.lexical_query("turbines report", 10)} == {"a.md", "b.md"}
    store.replace_sources([version("a.md", ["Alpha, second edition: wind farms."])])
    found = search(store, "alpha", k=10, mode="lexical")
    assert [h.chunk.text for h in found] == ["Alpha, second edition: wind farms."]
    assert store.lexical.ids() == sorted(store._collection.get(include=[])["ids"]) and store.count() == 2
    with pytest.raises(ValueError, match="positions 0..n-1"):
        record, chunks, _ = version("c.md", ["Gamma."])
        store.replace_sources([(record, [Chunk(**{**chunks[0].__dict__, "position": 3})], None)])
    assert store.manifest.get("/library/c.md") is None


FILTERS = {"a common kind": {"modality": {"$in": ["pdf_text", "pdf_ocr"]}},
           "a rare kind": {"modality": {"$in": ["image_ocr"]}},
           "one source": {"source_abs": {"$in": ["/s7"]}},
           "a folder and pages": {"$and": [{"source_abs": {"$in": [f"/s{n}" for n in range(0, 40, 2)]}},
                                           {"page": {"$gte": 2}}, {"page": {"$lte": 5}}]},
           "not a kind": {"modality": {"$nin": ["image_ocr"]}}}


def _admits(where: dict, meta: dict) -> bool:
    """The test's own reading of the filters above, on a chunk's metadata."""
    if "$and" in where:
        return all(_admits(w, meta) for w in where["$and"])
    (key, cond), = where.items()
    (op, arg), = cond.items()
    value = meta.get(key)
    return {"$in": lambda: value in arg, "$nin": lambda: value not in arg, "$gte": lambda: value >= arg,
            "$lte": lambda: value <= arg}[op]()


# Cost-model constants of kb/lexical.py that force each way a filtered query can run: scoring never pays (rank
# everything, and go deeper when too few pass), costs nothing, or costs about as much as ranking (some of each).
PLAN_COSTS = {"rank-then-filter": {"SCORE_US": 1e12}, "some-ranked-some-scored": {"SCORE_US": 1.0, "RANK_US": 0.0,
                                                                                  "PLACE_US": 1.0},
              "scores-filtered": {"SCORE_US": 0.0}}


@pytest.mark.parametrize("costs", list(PLAN_COSTS.values()), ids=list(PLAN_COSTS))
def test_a_filtered_query_returns_the_filtered_top_10_of_the_unfiltered_ranking(tmp_path: Path, monkeypatch,
                                                                                  costs: dict[str, float]):
    """Whichever way a filtered query runs (ranking everything and dropping what the filter refuses, which prunes,
    or scoring only what it admits), its top 10 is the unfiltered ranking's best 10 that pass the filter."""
    import random

    import kb.lexical

    for name, value in costs.items():
        monkeypatch.setattr(kb.lexical, name, value)
    rng = random.Random(5)
    words = [f"w{n}" for n in range(60)]
    index = LexicalIndex(tmp_path / "lexical", lambda paths: {p: "v" for p in paths}, exclusive=True)
    try:
        for n in range(40):
            kind = "image_ocr" if n % 20 == 0 else "pdf_ocr" if n % 20 < 5 else "pdf_text"
            index.upsert([Chunk(id=f"{n}:{i}", text=" ".join(rng.choices(words, k=rng.randint(5, 40))),
                                rel=f"s{n}.pdf", path=f"/s{n}", sha256="v", modality=kind, page=i + 1,
                                position=i) for i in range(15)])
        # Chunks that tie exactly (same words, same length): the top 10 then ends inside a run of equal scores.
        index.upsert([Chunk(id=f"tie:{i}", text="w99 w98 w97", rel="tie.pdf", path="/tie", sha256="v",
                            modality="image_ocr" if i % 20 == 0 else "pdf_text", position=i) for i in range(300)])
        admitting: set[str] = set()
        for query in ["w1 w7 w30", "w2", "w45 w3 w3 w59", "w0 w11", "w99"]:
            everything = index.query(query, 600)
            for name, where in FILTERS.items():
                expected = [cid for cid, _, meta, _ in everything if _admits(where, meta)][:10]
                assert [cid for cid, *_ in index.query(query, 10, where)] == expected, (query, name)
                admitting.update([name] if expected else [])
        assert admitting == set(FILTERS)  # each filter admits some of the matches of some query
    finally:
        index.close()


@pytest.mark.parametrize("switches", [True, False], ids=["switches-to-scoring", "goes-deeper"])
def test_a_filter_that_refuses_the_best_ranked_chunks_still_gets_its_own_best_10(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switches: bool) -> None:
    """Ranked past the others, a filter whose chunks all rank below the first search's depth finds none there: the
    query then scores what the filter admits (when the cost model says that is cheaper than searching deeper) or
    searches deeper, and returns the filter's own best 10 either way."""
    import kb.lexical

    # Ranked first (8 x 300 admitted > 1 x 2,000 places), then scored (2,400 < the 3,000 places of a deeper search).
    monkeypatch.setattr(kb.lexical, "SCORE_US", 8.0 if switches else 1e12)
    monkeypatch.setattr(kb.lexical, "RANK_US", 0.0)
    monkeypatch.setattr(kb.lexical, "PLACE_US", 1.0)
    narrowed: list[int] = []
    original = kb.lexical._narrowed

    def counted(*args: Any) -> Any:
        narrowed.append(1)
        return original(*args)

    monkeypatch.setattr(kb.lexical, "_narrowed", counted)
    index = LexicalIndex(tmp_path / "lexical", lambda paths: {p: "v" for p in paths}, exclusive=True)
    try:
        index.upsert([Chunk(id=f"text:{i}", text="turbine " * 3 + f"t{i}", rel="a.pdf", path="/a", sha256="v",
                            modality="pdf_text", position=i) for i in range(2700)])
        index.upsert([Chunk(id=f"photo:{i}", text="turbine " + "blade " * (1 + i % 50) + f"p{i}", rel="b.png",
                            path="/b", sha256="v", modality="image_ocr", position=i) for i in range(300)])
        where = {"modality": {"$in": ["image_ocr"]}}
        expected = [cid for cid, _, meta, _ in index.query("turbine", 3000) if meta["modality"] == "image_ocr"][:10]
        assert len(expected) == 10 and all(cid.startswith("photo:") for cid in expected)
        narrowed.clear()
        assert [cid for cid, *_ in index.query("turbine", 10, where)] == expected
        assert bool(narrowed) == switches  # it went the way the cost model said
    finally:
        index.close()


def test_the_cost_model_scores_small_filters_and_ranks_past_broad_ones_at_any_store_size() -> None:
    """kb.lexical.scores_admitted with its fitted constants, for the sizes measured (100k, 1M) and beyond: a source
    (200 chunks) is scored, a kind holding 95 % of the store is ranked past, the switch is one share per size (a
    larger filter is never scored when a smaller one is ranked past), and at 10M chunks a kind holding 20 % is still
    scored (the rule the model replaced ranked it past: its switch fell to 13 % of the store there)."""
    from kb.lexical import scores_admitted

    for total in (100_000, 1_000_000, 10_000_000, 100_000_000):
        assert scores_admitted(200, total, 0.94, 10)
        assert not scores_admitted(int(0.95 * total), total, 0.94, 10)
        picks = [scores_admitted(int(total * n / 100), total, 0.94, 10) for n in range(1, 101)]
        assert picks == sorted(picks, reverse=True)
    assert scores_admitted(2_000_000, 10_000_000, 0.94, 10)
    assert scores_admitted(250_000, 1_000_000, 0.94, 10) and not scores_admitted(750_000, 1_000_000, 0.94, 10)


def test_word_share_is_the_share_of_chunks_holding_a_query_word(tmp_path: Path) -> None:
    from kb.lexical import word_share

    index = LexicalIndex(tmp_path / "lexical", lambda paths: {p: "v" for p in paths}, exclusive=True)
    try:
        index.upsert([Chunk(id=f"c{i}", text=("alpha " if i < 3 else "") + ("beta " if i >= 8 else "") + f"x{i}",
                            rel="a.md", path="/a", sha256="v", modality="text", position=i) for i in range(10)])
        searcher = index._searcher()
        assert word_share(["alpha"], searcher) == pytest.approx(0.3)
        assert word_share(["alpha", "beta", "alpha"], searcher) == pytest.approx(0.5)
        assert word_share(["nowhere"], searcher) == 0.0
        assert word_share(["alpha", "beta", "x1", "x2", "x3", "x4", "x5", "x6"], searcher) == 1.0  # at most all
    finally:
        index.close()


def _previous_schema_index(path: Path, chunks: list[Chunk]) -> None:
    """A lexical index as Seekframe wrote it before the fast fields `length` and `key` (schema version 2)."""
    import tantivy

    from kb.lexical import tokenize

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("tokens", tokenizer_name="whitespace", index_option="freq")
    for name in ("id", "source_abs", "sha256", "source", "modality"):
        builder.add_text_field(name, tokenizer_name="raw", index_option="basic")
    for name in ("page", "position"):
        builder.add_integer_field(name, indexed=True, fast=True)
    for name in ("t_start", "t_end"):
        builder.add_float_field(name, indexed=True, fast=True)
    builder.add_bytes_field("row", stored=True)
    path.mkdir(parents=True)
    writer = tantivy.Index(builder.build(), str(path)).writer(15_000_000, 1)
    for chunk in chunks:
        meta, tokens, doc = chunk.metadata(), tokenize(chunk.text), tantivy.Document()
        doc.add_text("tokens", " ".join(tokens))
        for name in ("id", "source_abs", "sha256", "source", "modality"):
            value = chunk.id if name == "id" else meta.get(name)
            if value is not None:
                doc.add_text(name, str(value))
        for name in ("page", "position"):
            if getattr(chunk, name) is not None:
                doc.add_integer(name, int(getattr(chunk, name)))
        row = {"id": chunk.id, "text": chunk.text, "meta": meta, "length": len(tokens)}
        doc.add_bytes("row", json.dumps(row).encode())
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()


def test_a_lexical_index_of_the_previous_schema_is_rebuilt_on_open(open_kb, embedder):
    import shutil

    from kb.store import open_store

    store = open_kb()
    put(store, "ledger.md", ["Invoice INV-2024-0117 was paid in March.", "Receipt E_ACCESS_4711 filed late.",
                             "Invoice INV-2024-0118 is still open."], modality="pdf_text", pages=True)
    put(store, "photo.png", ["A photo of invoice INV-2024-0117 on a desk."], modality="image_ocr")
    before = [(h.chunk.id, h.chunk.text, h.chunk.page) for h in store.lexical_query("invoice INV-2024-0117", 10)]
    chunks = [Chunk.from_stored(*row) for path in ("/library/ledger.md", "/library/photo.png")
              for row in store.lexical.rows_of(path)]
    store.close()
    home = store.settings.home
    shutil.rmtree(home / "lexical")
    _previous_schema_index(home / "lexical", chunks)
    again = open_store(store.settings, embedder)
    try:
        assert [(h.chunk.id, h.chunk.text, h.chunk.page)
                for h in again.lexical_query("invoice INV-2024-0117", 10)] == before
        assert [h.chunk.rel for h in again.lexical_query("invoice", 10, Filters(modalities=["images"]).where(again))
                ] == ["photo.png"]
        assert again.lexical.count() == 4 and sorted(p.name for p in home.iterdir() if "lexical" in p.name) == [
            "lexical"]  # nothing left beside it
        put(again, "ledger.md", ["Invoice INV-2024-0117 was refunded."])  # and it takes new versions
        assert [h.chunk.text for h in again.lexical_query("refunded", 10)] == ["Invoice INV-2024-0117 was refunded."]
    finally:
        again.close()


def test_a_crash_while_swapping_in_the_rebuilt_index_loses_no_chunk(tmp_path: Path):
    """The upgrade renames the old index aside, the new one into place, then deletes the old one: a crash between
    any two steps leaves an index that opens with every chunk."""
    from kb.lexical import _aside

    path = tmp_path / "lexical"
    chunks = [Chunk(id=f"c{n}", text=f"turbine report number {n}", rel="s", path="/s", sha256="v1",
                    modality="text", position=n) for n in range(3)]
    for crash_after in ("old index set aside", "new index in place"):
        _previous_schema_index(path, chunks)
        path.rename(_aside(path))
        if crash_after == "new index in place":
            LexicalIndex.build(path, [(chunks, [c.metadata() for c in chunks])])
        index = LexicalIndex(path, lambda paths: {p: "v1" for p in paths}, exclusive=True)
        try:
            assert sorted(cid for cid, *_ in index.query("turbine report", 10)) == ["c0", "c1", "c2"], crash_after
            assert not _aside(path).exists()
        finally:
            index.close()
        shutil.rmtree(path)


def test_chunks_that_tie_in_tantivy_come_shorter_first_as_in_exact_bm25(tmp_path: Path):
    """Tantivy keeps a chunk's length in one byte, so a 153- and a 160-word chunk with the same match score alike;
    exact BM25 puts the shorter first, and so must we (it is read from a column, not from the stored rows)."""
    index = LexicalIndex(tmp_path / "lexical", lambda paths: {p: "v" for p in paths}, exclusive=True)
    try:
        def chunk(cid: str, fillers: int, position: int) -> Chunk:
            text = "needle " + " ".join(f"{cid}filler{n}" for n in range(fillers))
            return Chunk(id=cid, text=text, rel="s", path="/s", sha256="v", modality="text", position=position)

        index.upsert([chunk("longer", 159, 0), chunk("shorter", 152, 1)])  # the longer one is stored first
        hits = index.query("needle", 2)
        assert [cid for cid, *_ in hits] == ["shorter", "longer"]
        assert hits[0][3] == hits[1][3]  # a tie in Tantivy's scores: only the length tells them apart
    finally:
        index.close()
