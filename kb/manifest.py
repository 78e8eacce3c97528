"""The source manifest: one row per ingested file, keyed by absolute path, with its content hash.

SQLite under the knowledge-base home (safe across processes), so re-ingest can tell unchanged, changed,
renamed and vanished files apart without asking the vector store.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY,      -- absolute path
    rel TEXT NOT NULL,          -- path relative to the ingest root, for display
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,         -- pdf, image, video, text
    status TEXT NOT NULL,       -- ok, partial
    chunks INTEGER NOT NULL,
    pages INTEGER,
    duration REAL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    ingested_at REAL NOT NULL,
    errors TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS sources_sha ON sources(sha256);
"""


@dataclass
class SourceRecord:
    path: str
    rel: str
    sha256: str
    size: int
    kind: str
    status: str
    chunks: int
    engine: str
    model: str
    pages: int | None = None
    duration: float | None = None
    ingested_at: float = field(default_factory=time.time)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class Manifest:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def _record(self, row: sqlite3.Row) -> SourceRecord:
        values = dict(row)
        values["errors"] = json.loads(values["errors"])
        return SourceRecord(**values)

    def get(self, path: str) -> SourceRecord | None:
        row = self._db.execute("SELECT * FROM sources WHERE path = ?", (path,)).fetchone()
        return self._record(row) if row else None

    def by_sha(self, sha256: str) -> list[SourceRecord]:
        rows = self._db.execute("SELECT * FROM sources WHERE sha256 = ? AND status = 'ok'", (sha256,))
        return [self._record(r) for r in rows]

    def has_sha(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM sources WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone() is not None

    def all(self) -> list[SourceRecord]:
        return [self._record(r) for r in self._db.execute("SELECT * FROM sources ORDER BY rel")]

    def find(self, name: str) -> list[SourceRecord]:
        """Records whose absolute path, relative path or file name is `name`."""
        rows = self._db.execute("SELECT * FROM sources WHERE path = ? OR rel = ? OR rel LIKE ? ORDER BY rel",
                                (str(Path(name).resolve()), name, f"%/{name}"))
        return [self._record(r) for r in rows]

    def put(self, record: SourceRecord) -> None:
        values = record.to_json()
        values["errors"] = json.dumps(values["errors"])
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._db:
            self._db.execute(f"INSERT OR REPLACE INTO sources ({columns}) VALUES ({marks})", tuple(values.values()))

    def remove(self, path: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM sources WHERE path = ?", (path,))

    def current_shas(self, paths: list[str]) -> dict[str, str]:
        """The current content hash of each of `paths` that is in the manifest."""
        rows = self._db.execute("SELECT path, sha256 FROM sources WHERE path IN (SELECT value FROM json_each(?))",
                                (json.dumps(sorted(set(paths))),))
        return {r["path"]: r["sha256"] for r in rows}

    def close(self) -> None:
        self._db.close()
