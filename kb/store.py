"""The vector store: Chroma (embedded under the home, or a server), the lexical index, the source manifest, the lock.

Visibility is atomic per source: new chunks are written first (Chroma, then the lexical index), the manifest
row is the commit point, old chunks are deleted last (both indexes), and queries of either index only return
chunks whose content hash matches the manifest. So the two indexes never disagree about what is visible.

Crash safety: before a source's chunks change, its path enters the manifest's cleanup journal; a delete
removes the manifest row in that same transaction (the source is gone for searches at once). Cleaning a path
removes every chunk of it that is not its manifest version (content hash and positions 0..chunks-1), then
the journal row. A process killed anywhere in between leaves the row, and the next open cleans the path, so
no chunk is left that nothing can reach, and a re-run never finds duplicates.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence
from urllib.parse import urlparse

from kb.config import Settings
from kb.embed import Embedder, load_embedder
from kb.errors import EmbedderMismatch, StoreError, StoreLocked
from kb.lexical import LexicalIndex, read_fts5
from kb.manifest import Cleanup, Manifest, NameQuery, SourceRecord
from kb.paths import display
from kb.types import Chunk, Hit

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.collection_configuration import CreateHNSWConfiguration

# A Chroma `where` filter: {"field": value}, {"field": {"$in": [...]}}, {"$and": [...]}, ...
Where = dict[str, Any]

log = logging.getLogger(__name__)
COLLECTION = "seekframe_chunks"
SCHEMA_VERSION = 1
# HNSW ef_search: candidates a dense query visits. Measured on 1024-d clustered vectors (bench/scale.py,
# docs/benchmarks.md "Scale"), reopened 1M-chunk store, 200 queries: recall@10 0.935 with 400, 0.947 with 800
# (0.910 with 200 on 50), Store.query 6.9 vs 8.8 CPU ms: 800 comes nearest the 0.95 target for 2 ms more.
EF_SEARCH = 800
# Chroma metadata keys (Chunk.metadata names): filters (kb/search.py), freshness, cleanup and orphan look-ups.
CHROMA_KEYS = frozenset({"source", "source_abs", "sha256", "modality", "page", "t_start", "t_end", "position"})
# Seconds waited between tries of the ef_search update while Chroma's database is busy (about 6 s in all).
EF_SEARCH_RETRY_WAITS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.0)
# What a new knowledge base's collection is made with; Chroma fixes M and ef_construction then, so an existing one
# keeps its own. ef_construction stays Chroma's 100: a cheaper graph loses recall that ef_search 800 does not win
# back (384-d, 252k chunks, recall@10: 0.985; ef_construction 64 0.960, 50 0.896; M 12 0.980) for 11-26 % less fill
# CPU (docs/benchmarks.md "HNSW build settings against recall"). M (max_neighbors) follows the vectors' dimension:
# at 1M chunks M 16 keeps recall@10 0.967 at 384-d but 0.946 at 1024-d, where 3-5 % of the chunks inserted late are
# left unreachable; M 24 gives 0.974 there (docs/benchmarks.md "M 24 at 1024-d"), for more fill CPU.
# sync_threshold stays 1,000: 20,000 saves 0.4 ms per chunk at 1M, but every open re-inserts the vectors not persisted.
NEW_COLLECTION_HNSW: CreateHNSWConfiguration = {"space": "cosine", "ef_search": EF_SEARCH}
HNSW_M_UP_TO_384_DIMENSIONS, HNSW_M_ABOVE = 16, 24


def new_collection_hnsw(dimension: int) -> CreateHNSWConfiguration:
    """The HNSW settings a new knowledge base is made with, for vectors of `dimension` (an M set in
    NEW_COLLECTION_HNSW, as bench/scale.py's --hnsw does, wins)."""
    m = HNSW_M_UP_TO_384_DIMENSIONS if dimension <= 384 else HNSW_M_ABOVE
    return {"max_neighbors": m, **NEW_COLLECTION_HNSW}


_PROCESS_TOKEN = uuid.uuid4().hex[:12]  # pids repeat (containers, reboots): this tells two processes apart
SERVER_FIX = ("run a Chroma server (`chroma run --path {dir} --port 8000`) and set "
              "KB_CHROMA_URL=http://localhost:8000 in every process that uses this knowledge base")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OwnerLock:
    """An exclusive lock on the embedded store. Chroma's PersistentClient is not safe across processes.

    Within one process the lock is shared (reference counted), so the app and its worker threads can
    open the same store more than once.
    """

    _held: dict[str, tuple[int, int]] = {}  # path -> (fd, count)
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard:
            fd, count = self._held.get(self.path, (-1, 0))
            if count == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise StoreLocked(f"the knowledge base at {path.parent} is open in another process (pid {owner})",
                                      "stop that process (the app or another ingest), or "
                                      + SERVER_FIX.format(dir=path.parent),
                                      code="store.locked", params={"folder": path.parent, "pid": owner}) from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._held[self.path] = (fd, count + 1)

    def release(self) -> None:
        with self._guard:
            fd, count = self._held.get(self.path, (-1, 0))
            if count == 1:
                os.close(fd)  # closing the descriptor drops the flock
                del self._held[self.path]
            elif count > 1:
                self._held[self.path] = (fd, count - 1)


def _client(settings: Settings) -> ClientAPI:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        try:
            return chromadb.HttpClient(host=url.hostname or "localhost", port=url.port or 8000,
                                       ssl=url.scheme == "https", settings=chroma_settings)
        except Exception as err:
            raise StoreError(f"cannot reach the Chroma server at {settings.chroma_url}: {err}",
                             "start it with `chroma run --path DIR --port 8000`, or unset KB_CHROMA_URL "
                             "to use the embedded store") from err
    return chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)


def _batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Store:
    """Chunks with vectors in Chroma, sources in the manifest. Use `open_store(settings)`."""

    def __init__(self, settings: Settings, client: ClientAPI, embedder: Embedder, lock: OwnerLock | None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.manifest = Manifest(settings.manifest_path)
        self._client = client
        self._lock = lock
        # Any: chromadb types every result field Optional (even those `include` asks for) and metadata values as
        # a union; what comes back is what `Chunk.metadata` stored, read as plain JSON.
        self._collection: Any = client.get_or_create_collection(
            COLLECTION, embedding_function=None, configuration={"hnsw": new_collection_hnsw(embedder.dimension)},
            metadata={"embed_model": embedder.name, "embed_dim": embedder.dimension,
                      "schema_version": SCHEMA_VERSION})
        self._check_embedder()
        self._use_ef_search()
        self._batch = max(1, min(5000, client.get_max_batch_size()))
        lexical_path = settings.home / "lexical"
        if not LexicalIndex.exists(lexical_path):
            self._build_lexical(lexical_path)
        self.lexical = LexicalIndex(lexical_path, self.manifest.current_shas, exclusive=lock is not None)
        self.recovered: list[Cleanup] = self._recover()

    def _build_lexical(self, path: Path) -> None:
        """A knowledge base from before the Tantivy index: build it once, from the old SQLite FTS5 index if there
        is one, else from the texts Chroma kept (knowledge bases older than both); an empty one for a new base."""
        old = self.settings.home / "lexical.sqlite"
        if old.exists():
            log.info("moving the lexical index from %s to Tantivy (once)", old)
            batches = (([Chunk.from_stored(*row) for row in rows], [row[2] for row in rows]) for rows in read_fts5(old))
            LexicalIndex.build(path, batches)
            for leftover in (old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")):
                leftover.unlink(missing_ok=True)
            return
        total = self.count()
        if total:
            log.info("building the lexical index from %d stored chunks (once)", total)
        LexicalIndex.build(path, self._chroma_texts(total))

    def _chroma_texts(self, total: int) -> Iterable[tuple[list[Chunk], list[dict[str, Any]]]]:
        for offset in range(0, total, self._batch):
            got = self._collection.get(include=["documents", "metadatas"], limit=self._batch, offset=offset)
            if any(d is None for d in got["documents"]):
                raise StoreError(f"the lexical index of {self.settings.home} is missing, and the chunk texts "
                                 "are kept only there (Chroma holds vectors and metadata)",
                                 f"restore {self.settings.home / 'lexical'} from a backup, or move "
                                 f"{self.settings.home} aside and ingest the files again")
            yield [Chunk.from_stored(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])], \
                got["metadatas"]

    def _use_ef_search(self) -> None:
        """A knowledge base made with another ef_search gets this one. Chroma applies it when this process loads
        the HNSW index (its first query), so it holds from this open on (measured in bench/scale.py).

        It is the one write of an open, so it is the one that can meet Chroma's SQLite still busy with a write of
        this process's previous client (seen in CI under load: "database is locked"). A busy database is waited
        for a few seconds; after that the knowledge base opens with its old value, which only costs recall, and
        the next open tries again."""
        hnsw = (self._collection.configuration_json or {}).get("hnsw") or {}
        if hnsw.get("ef_search", EF_SEARCH) == EF_SEARCH:
            return
        for wait in (*EF_SEARCH_RETRY_WAITS, None):
            try:
                self._collection.modify(configuration={"hnsw": {"ef_search": EF_SEARCH}})
                return
            except Exception as err:  # chromadb raises its own InternalError, or sqlite3's, for a busy database
                if "locked" not in str(err).lower():
                    raise
                if wait is None:
                    log.warning("%s: kept ef_search %s this time, the database stayed busy (%s); the next open "
                                "sets %s", display(str(self.settings.home)), hnsw.get("ef_search"), err, EF_SEARCH)
                    return
                time.sleep(wait)

    def _check_embedder(self) -> None:
        meta = self._collection.metadata or {}
        if meta.get("embed_model") != self.embedder.name:
            raise EmbedderMismatch(
                f"this knowledge base was built with the embedding model {meta.get('embed_model')!r}, "
                f"not {self.embedder.name!r}: their vectors cannot be mixed",
                f"set KB_EMBED_MODEL={meta.get('embed_model')} (or unset it), or use a new KB_HOME for "
                f"{self.embedder.name} and ingest again")

    # writing -----------------------------------------------------------------------------------------
    def replace_source(self, record: SourceRecord, chunks: Sequence[Chunk],
                       embeddings: Sequence[Sequence[float]] | None = None) -> None:
        """Make `chunks` the whole content of `record.path`, atomically as seen by searches."""
        self.replace_sources([(record, chunks, embeddings)])

    def replace_sources(self, items: Sequence[tuple[SourceRecord, Sequence[Chunk], Sequence[Sequence[float]] | None]]
                        ) -> None:
        """`replace_source` for several sources at once: one Chroma upsert per batch and one lexical commit for
        all of them (a commit costs as much as indexing ~200 chunks), then each source's manifest row (its own
        commit point, so each source is still replaced atomically) and each one's old chunks removed."""
        for record, chunks, _ in items:
            if any(c.path != record.path or c.sha256 != record.sha256 for c in chunks) or \
                    sorted(c.position for c in chunks) != list(range(len(chunks))):
                # The cleanup rule keeps exactly positions 0..chunks-1 of the manifest's hash: anything else would go.
                raise ValueError(f"chunks of {display(record.path)} must carry its path and hash, at positions 0..n-1")
        pairs: list[tuple[Chunk, Sequence[float]]] = []
        for _, chunks, embeddings in items:
            vectors = self.embedder.embed_documents([c.text for c in chunks]) if embeddings is None else embeddings
            pairs += zip(chunks, vectors)
        # A path with no journal entry has nothing half-written or half-deleted: Chroma holds its manifest version
        # only, the rows the lexical index also holds, so its old chunks can be removed by id (a `where` look-up
        # scans Chroma's metadata: 250 ms per source at 1M chunks, docs/benchmarks.md "Scale at 384-d vectors").
        settled = {record.path for record, _, _ in items if self.manifest.cleanups_of(record.path) is None}
        for record, _, _ in items:
            old = self.manifest.get(record.path)
            self.manifest.begin_cleanup(record.path, record.rel,
                                        {record.sha256} | ({old.sha256} if old else set()), _owner())
        metadatas = [c.metadata() for c, _ in pairs]  # once for both indexes (dataclasses.asdict is not cheap)
        try:
            for start in range(0, len(pairs), self._batch):
                part = pairs[start:start + self._batch]
                # No documents: the text is kept once, in the lexical index (Chroma would store it and index
                # every trigram of it, which nothing here queries; that was 70 % of fill time).
                self._collection.upsert(ids=[c.id for c, _ in part], embeddings=[list(e) for _, e in part],
                                        metadatas=[_filterable(m) for m in metadatas[start:start + self._batch]])
            self.lexical.upsert([c for c, _ in pairs], metadatas)
            for record, chunks, _ in items:
                record.chunks = len(chunks)
                self.manifest.put(record)  # the commit point: from here on searches see the new chunks only
        except Exception:
            for record, _, _ in items:
                self._clean_quietly(record.path)  # the half-written version goes; the old one stays as it was
            raise
        for record, _, _ in items:
            self._clean(self.manifest.cleanups_of(record.path), by_id=record.path in settled)

    def chunks_of(self, path: str, with_embeddings: bool = False) -> tuple[list[Chunk], list[list[float]]]:
        """The chunks of `path`'s manifest version in order (all its chunks if it has no manifest row), and their
        vectors if asked."""
        current = self.manifest.get(path)
        rows = self.lexical.rows_of(path, current.sha256 if current else None)
        chunks = [Chunk.from_stored(*row) for row in rows]
        if current:  # not a version being written or cleaned up beside it
            chunks = [c for c in chunks if c.position < current.chunks]
        if not with_embeddings or not chunks:
            return chunks, []
        got = self._collection.get(ids=[c.id for c in chunks], include=["embeddings"])
        by_id = {cid: list(map(float, e)) for cid, e in zip(got["ids"], got["embeddings"])}
        chunks = [c for c in chunks if c.id in by_id]  # both indexes hold a committed chunk; be safe all the same
        return chunks, [by_id[c.id] for c in chunks]

    def delete_source(self, path: str) -> int:
        """Remove a source and all its chunks; returns the number of chunks removed.

        The manifest row goes first (with the journal entry, in one transaction), so a crash after it leaves a
        journalled path that the next open, or deleting it again, finishes."""
        old = self.manifest.get(path)
        if old:
            self.manifest.begin_cleanup(path, old.rel, {old.sha256}, _owner(), remove_source=True)
        return self._clean(self.manifest.cleanups_of(path) or Cleanup(path, "", [], _owner(), 0.0))

    def unfinished_deletes(self, name: str) -> list[Cleanup]:
        """Interrupted deletes of sources `name` names: still journalled, finished when this store opened, or
        chunks without a manifest row left by a version before the journal."""
        query = NameQuery.of(name)
        journal = self.manifest.cleanups()
        busy = {c.path for c in journal if not self._abandoned(c)}  # a live process is writing or deleting it
        candidates = journal + self.recovered + self._orphans(query)
        found = {c.path: c for c in candidates
                 if c.path not in busy and query.matches(c.path, c.rel) and self.manifest.get(c.path) is None}
        return list(found.values())

    def _orphans(self, query: NameQuery) -> list[Cleanup]:
        where = {"$or": [{"source_abs": {"$in": list(query.paths)}}, {"source": query.name}]}
        metas = self._collection.get(where=where, include=["metadatas"])["metadatas"]
        named = {(m.get("source_abs", ""), m.get("source", "")) for m in metas} | set(self.lexical.orphans())
        return [Cleanup(path, rel, [], _owner(), 0.0) for path, rel in sorted(named)]

    def finish_delete(self, cleanup: Cleanup) -> int:
        """Finish an interrupted delete; returns the chunks it removed (this open's recovery included)."""
        cleanup.removed += self._clean(cleanup)
        return cleanup.removed

    def _clean(self, cleanup: Cleanup | None, by_id: bool = False) -> int:
        """Remove every chunk of `cleanup.path` that is not its manifest version, then its journal entry.

        `by_id`: Chroma holds no chunk of the path that the lexical index lacks (no unfinished write or delete of
        it), so the stale ids are read from there instead of looked up in Chroma."""
        if cleanup is None:
            return 0
        current = self.manifest.get(cleanup.path)
        version = (current.sha256, current.chunks) if current else None
        stale_ids = [cid for cid, _, meta in self.lexical.rows_of(cleanup.path)
                     if not version or meta.get("sha256") != version[0] or int(meta.get("position", 0)) >= version[1]
                     ] if by_id else []
        self.lexical.delete_source(cleanup.path, keep_version=version)
        if by_id:
            removed = len(stale_ids)
            for part in _batched(stale_ids, self._batch):
                self._collection.delete(ids=list(part))
        else:
            where: Where = {"source_abs": cleanup.path}
            if version:
                stale = {"$or": [{"sha256": {"$ne": version[0]}}, {"position": {"$gte": version[1]}}]}
                where = {"$and": [where, stale]}
            removed = self._delete_where(where)
        for sha in cleanup.shas:
            if not version or sha != version[0]:
                self._drop_media(sha)
        self.manifest.end_cleanup(cleanup.path)
        return removed

    def _clean_quietly(self, path: str) -> None:
        try:
            self._clean(self.manifest.cleanups_of(path))
        except Exception:  # the journal keeps the path: the next open cleans it
            log.exception("could not remove the unfinished chunks of %s yet", path)

    def _recover(self) -> list[Cleanup]:
        """Finish the cleanups of processes that died (kill -9, power loss) in the middle of one."""
        finished = []
        for cleanup in self.manifest.cleanups():
            if not self._abandoned(cleanup):
                continue
            try:
                removed = cleanup.removed = self._clean(cleanup)
            except Exception:
                log.exception("could not finish the interrupted cleanup of %s; it stays journalled", cleanup.rel)
                continue
            gone = self.manifest.get(cleanup.path) is None
            log.warning("%s %s: an earlier run was interrupted; %d leftover chunks removed",
                        "finished deleting" if gone else "cleaned up", display(cleanup.rel or cleanup.path), removed)
            finished.append(cleanup)
        return finished

    def _abandoned(self, cleanup: Cleanup) -> bool:
        """Whether the process that journalled `cleanup` is gone (it may be this one, or another one alive)."""
        if cleanup.owner == _owner():
            return False  # in flight in this process (another Store of the app, another thread)
        if self._lock:
            return True  # embedded: the lock says no other process has this store open
        host, pid, _token = (cleanup.owner.rsplit(":", 2) + ["", ""])[:3]
        # A server shared by machines: only a dead process of this host is surely not still writing.
        return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))

    def _drop_media(self, sha256: str) -> None:
        """Key frames of a version no source has any more (a copy of the same file keeps them)."""
        if not self.manifest.has_sha(sha256):
            shutil.rmtree(self.settings.keyframe_dir(sha256), ignore_errors=True)

    def _delete_where(self, where: Where) -> int:
        ids = self._collection.get(where=where, include=[])["ids"]
        for part in _batched(ids, self._batch):
            self._collection.delete(ids=list(part))
        return len(ids)

    # reading -----------------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self._collection.count())

    def query(self, embedding: Sequence[float], k: int, where: Where | None = None) -> list[Hit]:
        """Nearest chunks to `embedding`, best first; only chunks of the current version of each source."""
        # No count() here: Chroma counts by scanning (95 ms at 1M chunks, bench/scale.py), and it answers an
        # empty collection or a short one with fewer results, not an error.
        got = self._collection.query(query_embeddings=[list(embedding)], n_results=k * 2 + 10,
                                     where=where or None, include=["metadatas", "distances"])
        current = self.manifest.current_shas([m.get("source_abs", "") for m in got["metadatas"][0]])
        fresh = [(cid, meta, dist) for cid, meta, dist in zip(got["ids"][0], got["metadatas"][0], got["distances"][0])
                 if current.get(meta.get("source_abs")) == meta.get("sha256")][:k]  # not stale, not unfinished
        texts = self.lexical.rows([cid for cid, _, _ in fresh])  # the text is kept there only
        return [Hit(Chunk.from_stored(*texts[cid]), 1.0 - float(dist))
                for cid, meta, dist in fresh if cid in texts]

    def lexical_query(self, text: str, k: int, where: Where | None = None) -> list[Hit]:
        """Best BM25 matches for `text`, best first; same filters and current-version rule as `query`."""
        return [Hit(Chunk.from_stored(cid, doc, meta), score)
                for cid, doc, meta, score in self.lexical.query(text, k, where)]

    def neighbours(self, hit: Hit, radius: int = 1) -> list[Hit]:
        """The chunks within `radius` positions of `hit` in the same version of its source (itself included)."""
        chunk = hit.chunk
        positions = range(max(0, chunk.position - radius), chunk.position + radius + 1)
        rows = self.lexical.neighbours(chunk.path, chunk.sha256, list(positions))
        return [Hit(Chunk.from_stored(*row), hit.score) for row in rows]

    def close(self) -> None:
        self.lexical.close()
        self.manifest.close()
        if self._lock:
            self._lock.release()
            self._lock = None


def _filterable(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata Chroma keeps: what a dense query filters on and what freshness and cleanup look up. The rest
    (engine, model, key frame, language) is in the lexical index's row only: each key Chroma keeps is a row in
    three SQLite b-trees (12 KB of writes per chunk for engine and model, bench/scale.py notes)."""
    return {k: v for k, v in meta.items() if k in CHROMA_KEYS}


def _recorded_embed_model(client: ClientAPI) -> str | None:
    try:
        collection = client.get_collection(COLLECTION, embedding_function=None)
    except Exception:  # chromadb raises NotFoundError / ValueError depending on version and mode
        return None
    return (collection.metadata or {}).get("embed_model")


def open_store(settings: Settings, embedder: Embedder | None = None) -> Store:
    """Open (or create) the knowledge base: lock, client, the embedder it was built with, the manifest."""
    lock = None if settings.chroma_url else OwnerLock(settings.home / "owner.lock")
    try:
        client = _client(settings)
        embedder = embedder or load_embedder(settings, recorded=_recorded_embed_model(client))
        return Store(settings, client, embedder, lock)
    except BaseException:
        if lock:
            lock.release()
        raise
