import subprocess
import sys

import pytest

from kb.config import load_settings
from kb.errors import EmbedderMismatch
from kb.store import open_store

SECOND_PROCESS = """
import sys
from kb.config import load_settings
from kb.errors import StoreLocked
from kb.store import open_store
try:
    open_store(load_settings({"home": sys.argv[1], "embed_model": "bundled:all-MiniLM-L6-v2"}, env={}))
except StoreLocked as err:
    print(err)
    sys.exit(3)
"""


def test_a_second_process_is_told_to_use_a_server(open_kb, tmp_path):
    store = open_kb()
    done = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(store.settings.home)], capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3, done.stderr
    assert "another process" in done.stdout and "KB_CHROMA_URL" in done.stdout
    store.close()
    # once the owner closes it, the store opens again
    again = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(store.settings.home)], capture_output=True,
                           text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert again.returncode == 0, again.stdout + again.stderr


def test_opening_with_another_embedding_model_is_an_error(open_kb, tmp_path):
    store = open_kb()
    home = store.settings.home
    store.close()

    class OtherEmbedder:
        name, dimension, fallback_reason = "some/other-model", 384, ""

    with pytest.raises(EmbedderMismatch) as err:
        open_store(load_settings({"home": home}, env={}), OtherEmbedder())
    assert "all-MiniLM" in str(err.value) and "KB_EMBED_MODEL" in str(err.value)


def test_only_cleanups_of_gone_processes_are_taken_over(open_kb):
    """An open finishes the deletes and replaces of killed processes, never one another process is doing."""
    import os
    import socket

    from kb.manifest import Cleanup
    from kb.store import _owner

    store = open_kb()
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    mine, alive = _owner(), f"{host}:{os.getppid()}:other"
    assert not store._abandoned(Cleanup("/a", "a", [], mine, 0.0))  # in flight in this process
    assert store._abandoned(Cleanup("/a", "a", [], alive, 0.0))  # embedded: the lock proves it is gone
    lock, store._lock = store._lock, None  # as with KB_CHROMA_URL: other processes may share the server
    try:
        assert not store._abandoned(Cleanup("/a", "a", [], alive, 0.0))
        assert not store._abandoned(Cleanup("/a", "a", [], f"another-host:{gone.pid}:t", 0.0))
        assert store._abandoned(Cleanup("/a", "a", [], f"{host}:{gone.pid}:t", 0.0))
        assert not store._abandoned(Cleanup("/a", "a", [], "garbled", 0.0))
    finally:
        store._lock = lock


def test_a_knowledge_base_made_with_another_ef_search_gets_the_current_one(open_kb):
    """ef_search is how far a dense query looks (recall against speed, docs/benchmarks.md "Scale"): a knowledge
    base from a version with another value searches with the current one once reopened."""
    from chromadb.api.client import SharedSystemClient

    from kb.store import EF_SEARCH

    store = open_kb()
    store._collection.modify(configuration={"hnsw": {"ef_search": 10}})
    store.close()
    SharedSystemClient.clear_system_cache()
    again = open_kb()
    assert again._collection.configuration_json["hnsw"]["ef_search"] == EF_SEARCH != 10


def _reopen_with_busy_modify(open_kb, monkeypatch, busy_tries: int):
    """A knowledge base with an older ef_search, reopened while Chroma's database answers the first `busy_tries`
    configuration writes with SQLITE_BUSY (as it did in CI when the previous client of the process was still
    writing; another process's lock is waited for by Chroma itself)."""
    from chromadb.api.client import SharedSystemClient
    from chromadb.api.models.Collection import Collection
    from chromadb.errors import InternalError

    import kb.store

    store = open_kb()
    store._collection.modify(configuration={"hnsw": {"ef_search": 10}})
    store.close()
    SharedSystemClient.clear_system_cache()
    real_modify, tries = Collection.modify, []

    def busy_modify(self, *args, **kwargs):
        tries.append(1)
        if len(tries) <= busy_tries:
            raise InternalError("error returned from database: (code: 5) database is locked")
        return real_modify(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "modify", busy_modify)
    monkeypatch.setattr(kb.store, "EF_SEARCH_RETRY_WAITS", (0.01, 0.01, 0.01))
    return open_kb(), len(tries)


def test_a_busy_database_at_open_is_waited_for(open_kb, monkeypatch):
    from kb.store import EF_SEARCH

    store, tries = _reopen_with_busy_modify(open_kb, monkeypatch, busy_tries=2)
    assert tries == 3
    assert store._collection.configuration_json["hnsw"]["ef_search"] == EF_SEARCH


def test_a_database_that_stays_busy_still_opens_and_searches(open_kb, embedder, monkeypatch, caplog):
    """The ef_search update is not worth failing an open for: the knowledge base opens with its old value,
    answers searches, says so in the log, and the next open tries again."""
    from kb.manifest import SourceRecord
    from kb.types import Chunk

    store, tries = _reopen_with_busy_modify(open_kb, monkeypatch, busy_tries=99)
    assert tries == 4
    assert store._collection.configuration_json["hnsw"]["ef_search"] == 10
    assert "kept ef_search 10" in caplog.text and "database stayed busy" in caplog.text
    sha = "a" * 64
    store.replace_source(SourceRecord(path="/docs/a.txt", rel="a.txt", sha256=sha, size=9, kind="text",
                                      status="ok", chunks=0, engine="none", model=""),
                         [Chunk(id="a:0", text="the lighthouse keeper's log", rel="a.txt", path="/docs/a.txt",
                                sha256=sha, modality="text", position=0)])
    hits = store.query(embedder.embed_query("who kept the lighthouse?"), 3)
    assert [hit.chunk.text for hit in hits] == ["the lighthouse keeper's log"]


def test_other_errors_of_the_ef_search_update_are_not_hidden(open_kb, monkeypatch):
    from chromadb.api.client import SharedSystemClient
    from chromadb.api.models.Collection import Collection
    from chromadb.errors import InternalError

    store = open_kb()
    store._collection.modify(configuration={"hnsw": {"ef_search": 10}})
    store.close()
    SharedSystemClient.clear_system_cache()

    def broken_modify(self, *args, **kwargs):
        raise InternalError("disk I/O error")

    monkeypatch.setattr(Collection, "modify", broken_modify)
    with pytest.raises(InternalError, match="disk I/O error"):
        open_kb()


def test_wider_vectors_get_a_better_linked_graph(open_kb, tmp_path):
    """M follows the embedder's dimension (kb/store.py: at 1M chunks of 1024-d vectors M 16 left 3-5 % of the late
    chunks unreachable, recall@10 0.946; M 24 0.974): the bundled 384-d embedder keeps 16, a 1024-d one gets 24."""

    class WideEmbedder:  # Qwen3-Embedding-0.6B's width; nothing is embedded here
        name, dimension, fallback_reason = "Qwen/Qwen3-Embedding-0.6B", 1024, ""

    narrow = open_kb()._collection.configuration_json["hnsw"]
    wide = open_store(load_settings({"home": tmp_path / "wide"}, env={}), WideEmbedder())
    try:
        assert (narrow["max_neighbors"], wide._collection.configuration_json["hnsw"]["max_neighbors"]) == (16, 24)
    finally:
        wide.close()


def test_collection_settings_are_fixed_when_a_knowledge_base_is_made(open_kb, make_settings, embedder, tmp_path,
                                                                     monkeypatch):
    """HNSW settings (M, ef_construction: fill speed against recall, docs/benchmarks.md "Scale") apply to new
    knowledge bases; one made with other settings (an older version's) keeps them and still fills, finds and
    deletes."""
    from chromadb.api.client import SharedSystemClient

    import kb.store
    from kb.manifest import SourceRecord
    from kb.types import Chunk

    def add(store, name: str, texts: list[str]) -> None:
        path, sha = f"/docs/{name}", f"{name:0>64}"
        chunks = [Chunk(id=f"{name}:{n}", text=t, rel=name, path=path, sha256=sha, modality="text", position=n)
                  for n, t in enumerate(texts)]
        store.replace_source(SourceRecord(path=path, rel=name, sha256=sha, size=9, kind="text", status="ok",
                                          chunks=0, engine="none", model=""), chunks)

    older = {"space": "cosine", "ef_search": kb.store.EF_SEARCH, "max_neighbors": 12, "ef_construction": 77}
    with monkeypatch.context() as patch:
        patch.setattr(kb.store, "NEW_COLLECTION_HNSW", older)
        store = open_kb(home=tmp_path / "older")
        add(store, "a.txt", ["invoices are paid within thirty days", "the warehouse opens at nine"])
        store.close()
    SharedSystemClient.clear_system_cache()

    store = open_kb(home=tmp_path / "older")
    hnsw = store._collection.configuration_json["hnsw"]
    assert (hnsw["max_neighbors"], hnsw["ef_construction"]) == (12, 77)  # kept, whatever new ones get
    add(store, "b.txt", ["the ferry leaves the harbour at dawn"])
    hits = store.query(embedder.embed_query("when are invoices paid?"), 1)
    assert [h.chunk.text for h in hits] == ["invoices are paid within thirty days"]
    assert store.delete_source("/docs/a.txt") == 2
    assert [h.chunk.text for h in store.query(embedder.embed_query("invoices"), 3)] == [
        "the ferry leaves the harbour at dawn"]

    fresh = open_kb(home=tmp_path / "fresh")._collection.configuration_json["hnsw"]
    assert {k: fresh[k] for k in kb.store.NEW_COLLECTION_HNSW} == kb.store.NEW_COLLECTION_HNSW


def test_a_replace_after_an_unfinished_write_removes_the_chunks_only_chroma_got(open_kb):
    """A replace removes the old version by the ids the lexical index holds, unless the path has an unfinished
    write or delete in the journal: then Chroma may hold chunks the lexical index never got, and they go too."""
    from kb.manifest import SourceRecord
    from kb.store import _owner
    from kb.types import Chunk

    store = open_kb()
    path = "/docs/report.txt"

    def version(tag: str, texts: list[str]) -> tuple[SourceRecord, list[Chunk]]:
        sha = f"{tag:0>64}"
        chunks = [Chunk(id=f"{tag}:{n}", text=t, rel="report.txt", path=path, sha256=sha, modality="text",
                        position=n) for n, t in enumerate(texts)]
        return SourceRecord(path=path, rel="report.txt", sha256=sha, size=9, kind="text", status="ok", chunks=0,
                            engine="none", model=""), chunks

    def chroma_ids() -> set[str]:
        return set(store._collection.get(include=[])["ids"])

    store.replace_source(*version("a", ["first draft of the report", "its appendix"]))
    assert chroma_ids() == {"a:0", "a:1"}
    store.replace_source(*version("b", ["second draft of the report"]))  # an ordinary replace: by id
    assert chroma_ids() == {"b:0"} and {r[0] for r in store.lexical.rows_of(path)} == {"b:0"}

    # A write that got into Chroma and no further (its lexical upsert failed, and so did its cleanup).
    _, half = version("c", ["third draft", "never committed"])
    store.manifest.begin_cleanup(path, "report.txt", {half[0].sha256}, _owner())
    store._collection.upsert(ids=[c.id for c in half], embeddings=store.embedder.embed_documents(
        [c.text for c in half]), metadatas=[c.metadata() for c in half])
    store.replace_source(*version("d", ["final report"]))
    assert chroma_ids() == {"d:0"} and store.manifest.cleanups_of(path) is None
    assert [h.chunk.text for h in store.query(store.embedder.embed_query("report draft"), 5)] == ["final report"]
