"""The vector store: Chroma (embedded under the home, or a server), the lexical index, the source manifest, the lock.

Visibility is atomic per source: new chunks are written first (Chroma, then the lexical index), the manifest
row is the commit point, old chunks are deleted last (both indexes), and queries of either index only return
chunks whose content hash matches the manifest. So the two indexes never disagree about what is visible.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

from kb.config import Settings
from kb.embed import Embedder, load_embedder
from kb.errors import EmbedderMismatch, StoreError, StoreLocked
from kb.lexical import LexicalIndex
from kb.manifest import Manifest, SourceRecord
from kb.types import Chunk, Hit

log = logging.getLogger(__name__)
COLLECTION = "seekframe_chunks"
SCHEMA_VERSION = 1
SERVER_FIX = ("run a Chroma server (`chroma run --path {dir} --port 8000`) and set "
              "KB_CHROMA_URL=http://localhost:8000 in every process that uses this knowledge base")


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
                                      + SERVER_FIX.format(dir=path.parent)) from None
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


def _client(settings: Settings):
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

    def __init__(self, settings: Settings, client, embedder: Embedder, lock: OwnerLock | None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.manifest = Manifest(settings.manifest_path)
        self._client = client
        self._lock = lock
        self._collection = client.get_or_create_collection(
            # ef_search 200: recall@10 0.99 instead of 0.85-0.98 at 100, at no measurable cost (bench/scale.py).
            COLLECTION, embedding_function=None, configuration={"hnsw": {"space": "cosine", "ef_search": 200}},
            metadata={"embed_model": embedder.name, "embed_dim": embedder.dimension,
                      "schema_version": SCHEMA_VERSION})
        self._check_embedder()
        self._batch = max(1, min(5000, client.get_max_batch_size()))
        self.lexical = LexicalIndex(settings.home / "lexical.sqlite", settings.manifest_path)
        if self.lexical.is_new:
            self._backfill_lexical()

    def _backfill_lexical(self) -> None:
        """A knowledge base from before the lexical index (or whose lexical.sqlite was deleted): fill it once."""
        total = self.count()
        if not total:
            return
        log.info("building the lexical index from %d stored chunks (once)", total)
        for offset in range(0, total, self._batch):
            got = self._collection.get(include=["documents", "metadatas"], limit=self._batch, offset=offset)
            chunks = [_chunk(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]
            self.lexical.upsert(chunks, got["metadatas"])

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
        if embeddings is None:
            embeddings = self.embedder.embed_documents([c.text for c in chunks])
        for part in _batched(list(zip(chunks, embeddings)), self._batch):
            self._collection.upsert(ids=[c.id for c, _ in part], embeddings=[list(e) for _, e in part],
                                    documents=[c.text for c, _ in part], metadatas=[c.metadata() for c, _ in part])
        self.lexical.upsert(chunks)
        record.chunks = len(chunks)
        old = self.manifest.get(record.path)
        self.manifest.put(record)  # the commit point: from here on searches see the new chunks only
        keep = {c.id for c in chunks}
        self._delete_where({"source_abs": record.path}, keep=keep)
        self.lexical.delete_source(record.path, keep=keep)
        if old and old.sha256 != record.sha256:
            self._drop_media(old.sha256)

    def chunks_of(self, path: str, with_embeddings: bool = False) -> tuple[list[Chunk], list[list[float]]]:
        include = ["documents", "metadatas"] + (["embeddings"] if with_embeddings else [])
        got = self._collection.get(where={"source_abs": path}, include=include)
        chunks = [_chunk(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]
        vectors = [list(map(float, e)) for e in got["embeddings"]] if with_embeddings else []
        order = sorted(range(len(chunks)), key=lambda n: chunks[n].position)
        return [chunks[n] for n in order], [vectors[n] for n in order] if vectors else []

    def delete_source(self, path: str) -> int:
        """Remove a source and all its chunks; returns the number of chunks removed."""
        old = self.manifest.get(path)
        self.manifest.remove(path)
        self.lexical.delete_source(path)
        removed = self._delete_where({"source_abs": path})
        if old:
            self._drop_media(old.sha256)
        return removed

    def _drop_media(self, sha256: str) -> None:
        """Key frames of a version no source has any more (a copy of the same file keeps them)."""
        if not self.manifest.has_sha(sha256):
            shutil.rmtree(self.settings.keyframe_dir(sha256), ignore_errors=True)

    def _delete_where(self, where: dict, keep: set[str] | None = None) -> int:
        ids = [i for i in self._collection.get(where=where, include=[])["ids"] if not keep or i not in keep]
        for part in _batched(ids, self._batch):
            self._collection.delete(ids=list(part))
        return len(ids)

    # reading -----------------------------------------------------------------------------------------
    def count(self) -> int:
        return self._collection.count()

    def query(self, embedding: Sequence[float], k: int, where: dict | None = None) -> list[Hit]:
        """Nearest chunks to `embedding`, best first; only chunks of the current version of each source."""
        # No count() here: Chroma counts by scanning (95 ms at 1M chunks, bench/scale.py), and it answers an
        # empty collection or a short one with fewer results, not an error.
        got = self._collection.query(query_embeddings=[list(embedding)], n_results=k * 2 + 10,
                                     where=where or None, include=["documents", "metadatas", "distances"])
        current = self.manifest.current_shas([m.get("source_abs", "") for m in got["metadatas"][0]])
        hits = []
        for cid, doc, meta, dist in zip(got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0]):
            if current.get(meta.get("source_abs")) != meta.get("sha256"):
                continue  # a stale version of a source, or an unfinished write
            hits.append(_hit(cid, doc, meta, score=1.0 - float(dist)))
        return hits[:k]

    def lexical_query(self, text: str, k: int, where: dict | None = None) -> list[Hit]:
        """Best BM25 matches for `text`, best first; same filters and current-version rule as `query`."""
        return [_hit(cid, doc, meta, score) for cid, doc, meta, score in self.lexical.query(text, k, where)]

    def neighbours(self, hit: Hit, radius: int = 1) -> list[Hit]:
        """The chunks within `radius` positions of `hit` in the same version of its source (itself included)."""
        positions = range(max(0, hit.position - radius), hit.position + radius + 1)
        rows = self.lexical.neighbours(hit.source_abs, hit.sha256, list(positions))
        return [_hit(cid, doc, meta, hit.score) for cid, doc, meta in rows]

    def close(self) -> None:
        self.lexical.close()
        self.manifest.close()
        if self._lock:
            self._lock.release()
            self._lock = None


def _chunk(cid: str, text: str, meta: dict) -> Chunk:
    fields = {k: meta.get(k) for k in Chunk.__dataclass_fields__ if k not in ("id", "text") and k in meta}
    return Chunk(id=cid, text=text, **fields)


def _hit(cid: str, text: str, meta: dict, score: float) -> Hit:
    return Hit(id=cid, text=text, score=score, source=meta.get("source", ""), page=meta.get("page"),
               t_start=meta.get("t_start"), t_end=meta.get("t_end"), modality=meta.get("modality", ""),
               keyframe=meta.get("keyframe"), source_abs=meta.get("source_abs", ""),
               sha256=meta.get("sha256", ""), position=int(meta.get("position", 0)))


def _recorded_embed_model(client) -> str | None:
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
