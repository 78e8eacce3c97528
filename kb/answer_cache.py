"""Answers to repeated questions, served at once: the same question, filters, generation settings, engine and
knowledge-base content give the stored answer and its citations.

The content is part of the key: a fingerprint of the sources in the question's scope (every source, or those its
filters allow), taken from the manifest (path, content hash, status, time of ingest). An ingest, a delete or a
re-index of a source in scope changes it, so no answer made before is served again; answers whose scope it does not
touch (a question filtered to other sources) still are. Keeping an unfiltered answer while only uncited sources
change would be wrong: a new file can hold a better answer than the cited ones. Entries of old content can no
longer be reached and age out: beyond `answer_cache_size` the least recently used go. SQLite in KB_HOME, so the hit
rate the System page shows counts every process that answers from this knowledge base.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kb.config import Settings
from kb.manifest import SourceRecord
from kb.types import Hit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, question TEXT NOT NULL, answer TEXT NOT NULL, hits TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL, used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_used ON answers(used);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Settings that change what search returns or how the answer is written: part of every key.
RETRIEVAL_SETTINGS = ("embed_model", "search_mode", "rrf_k", "dense_weight", "lexical_weight", "rerank",
                      "rerank_model", "rerank_candidates", "context_chars")


@dataclass
class Cached:
    text: str
    hits: list[Hit]
    created: float
    extra: dict[str, Any]


@dataclass
class CacheStats:
    hits: int
    misses: int
    entries: int

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


def content_version(records: Sequence[SourceRecord]) -> str:
    """Fingerprint of the sources in scope: changes with any ingest, delete or re-index among them."""
    digest = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.path):
        digest.update(f"{r.path}\0{r.sha256}\0{r.status}\0{r.ingested_at!r}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def answer_key(question: str, scope_version: str, settings: Settings, engine: str, model: str, k: int,
               filters: DataclassInstance | None = None, generation: DataclassInstance | None = None,
               history: Sequence[tuple[str, str]] = ()) -> str:
    """The key of an answer: everything that decides it (question spacing aside). The conversation so far is part
    of it: a follow-up is searched and answered with it, so the same words there are another question."""
    parts = {"q": " ".join(question.split()), "v": scope_version, "engine": engine, "model": model, "k": k,
             "filters": asdict(filters) if filters is not None else None,
             "generation": asdict(generation) if generation is not None else None, "history": list(history),
             "settings": {name: getattr(settings, name) for name in RETRIEVAL_SETTINGS}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: Path, max_entries: int = 256) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def of(cls, settings: Settings) -> AnswerCache:
        return cls(settings.home / "answer_cache.sqlite", settings.answer_cache_size)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def get(self, key: str) -> Cached | None:
        """The stored answer for `key` (counted as a hit), or None (counted as a miss)."""
        if not self.enabled:
            return None
        with self._lock:
            row = self._db.execute("SELECT answer, hits, created, extra FROM answers WHERE key = ?", (key,)).fetchone()
            self._count("hits" if row else "misses")
            if row is None:
                return None
            self._db.execute("UPDATE answers SET used = ? WHERE key = ?", (time.time(), key))
        hits = [Hit.from_record(h) for h in json.loads(row[1])]
        return Cached(row[0], hits, row[2], json.loads(row[3]))

    def put(self, key: str, question: str, text: str, hits: Sequence[Hit], extra: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (key, question, text, json.dumps([h.to_record() for h in hits], ensure_ascii=False),
                              json.dumps(extra or {}), now, now))
            # Bounded: the least recently used beyond the limit go (answers of old content among them).
            self._db.execute("DELETE FROM answers WHERE key IN (SELECT key FROM answers ORDER BY used DESC "
                             "LIMIT -1 OFFSET ?)", (self.max_entries,))

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM answers")

    def stats(self) -> CacheStats:
        with self._lock:
            counts = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            entries = self._db.execute("SELECT count(*) FROM answers").fetchone()[0]
        return CacheStats(counts.get("hits", 0), counts.get("misses", 0), entries)

    def _count(self, name: str) -> None:
        self._db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                         (name,))

    def close(self) -> None:
        self._db.close()
