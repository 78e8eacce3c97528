"""The source manifest: one row per ingested file, keyed by absolute path, with its content hash.

SQLite under the knowledge-base home (safe across processes), so re-ingest can tell unchanged, changed,
renamed and vanished files apart without asking the vector store.

It also holds the cleanup journal: a path is entered there before its chunks change in Chroma or the lexical
index (a replace, a delete) and leaves it once every chunk that is not its manifest version is gone. A process
killed in between leaves the row, and the next store open finishes the job (kb.store), so no chunk is ever left
that no command can reach.

Sources are named by users in one way everywhere (`NameQuery`): exactly, never as a pattern.
"""
from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import NotFound
from kb.paths import display, from_stored, to_stored
from kb.types import SourceStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY,      -- absolute path
    rel TEXT NOT NULL,          -- path relative to the ingest root, for display
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,         -- pdf, image, video, text
    status TEXT NOT NULL,       -- ok, partial, empty (kb.types.SourceStatus)
    chunks INTEGER NOT NULL,
    pages INTEGER,
    duration REAL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    ingested_at REAL NOT NULL,
    errors TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS sources_sha ON sources(sha256);
CREATE TABLE IF NOT EXISTS cleanups (
    path TEXT PRIMARY KEY,      -- a source whose chunks other than its manifest version (if any) must go
    rel TEXT NOT NULL,
    shas TEXT NOT NULL,         -- JSON list: versions involved, whose key frames may have to go too
    owner TEXT NOT NULL,        -- host:pid:token of the process doing it
    since REAL NOT NULL
);
"""


@dataclass
class SourceRecord:
    path: str
    rel: str
    sha256: str
    size: int
    kind: str
    status: SourceStatus
    chunks: int
    engine: str
    model: str
    pages: int | None = None
    duration: float | None = None
    ingested_at: float = field(default_factory=time.time)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Cleanup:
    """A journal entry: `path` has chunks in the indexes that are not (or no longer) its manifest version."""

    path: str
    rel: str
    shas: list[str]
    owner: str
    since: float
    removed: int = 0  # chunks removed so far by this process (not stored)


@dataclass(frozen=True)
class NameQuery:
    """How a user names a source: its absolute path, its path relative to its ingest root, or its bare file
    name. Compared exactly, in the stored form of file names: no wildcards, no case folding."""

    name: str
    paths: tuple[str, ...]
    base: str | None

    @classmethod
    def of(cls, name: str) -> NameQuery:
        stored = to_stored(name)  # argv gives undecodable bytes as surrogates; the manifest has its stored form
        internal = Path(from_stored(stored))
        paths = {str(internal.absolute()), os.path.normpath(internal.absolute()), str(internal.resolve())}
        if internal.is_absolute():
            paths.add(str(internal))
        base = stored if stored and "/" not in stored and stored not in (".", "..") else None
        rel = stored.removeprefix("./")  # "./sub/a.pdf" as a shell completes it; nothing else is folded
        return cls(rel, tuple(sorted(to_stored(p) for p in paths)), base)

    def sql(self) -> tuple[str, list[object]]:
        marks = ", ".join("?" for _ in self.paths)
        condition = f"path IN ({marks}) OR rel = ?"
        args: list[object] = [*self.paths, self.name]
        if self.base:
            condition += " OR substr(path, -?) = ?"  # the last path segment, compared with `=` (case-sensitive)
            args += [len(self.base) + 1, "/" + self.base]
        return f"({condition})", args

    def matches(self, path: str, rel: str) -> bool:
        """The same rule as `sql`, for rows already in hand."""
        return path in self.paths or rel == self.name or bool(self.base and path.endswith("/" + self.base))


def describe(records: list[SourceRecord]) -> str:
    """Candidates for a person to choose from: each with the absolute path that names it uniquely."""
    return "\n".join(f"  {display(r.rel)}  ({display(r.path)})" for r in records)


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
        values["status"] = SourceStatus(values["status"])
        return SourceRecord(**values)

    def get(self, path: str) -> SourceRecord | None:
        row = self._db.execute("SELECT * FROM sources WHERE path = ?", (path,)).fetchone()
        return self._record(row) if row else None

    def by_sha(self, sha256: str) -> list[SourceRecord]:
        rows = self._db.execute("SELECT * FROM sources WHERE sha256 = ? AND status = ?", (sha256, SourceStatus.OK))
        return [self._record(r) for r in rows]

    def has_sha(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM sources WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone() is not None

    def all(self) -> list[SourceRecord]:
        return [self._record(r) for r in self._db.execute("SELECT * FROM sources ORDER BY rel")]

    def find(self, name: str) -> list[SourceRecord]:
        """Every source `name` names exactly (see NameQuery): more than one means the name is ambiguous.

        A path names its own file first: when `name` is some source's absolute path, or some source's relative
        path, sources that only share its file name (or rel) with it are not candidates.
        """
        query = NameQuery.of(name)
        condition, args = query.sql()
        rows = self._db.execute(f"SELECT * FROM sources WHERE {condition} ORDER BY rel, path", args)
        records = [self._record(r) for r in rows]
        by_path = [r for r in records if r.path in query.paths]
        by_rel = [r for r in records if r.rel == query.name]
        return by_path or by_rel or records

    def find_one(self, name: str) -> SourceRecord:
        """The one source `name` names; none or several is an error that lists what there is."""
        records = self.find(name)
        if not records:
            raise NotFound(f"no source is named {display(name)!r} (names are matched exactly, case included)",
                           "give its absolute path, its path relative to the folder it was ingested from, or its "
                           "file name; list them with `python -m kb sources`")
        if len(records) > 1:
            raise NotFound(f"{display(name)!r} names {len(records)} sources:\n{describe(records)}",
                           "give the absolute path (or the relative path) of the one you mean")
        return records[0]

    def glob(self, pattern: str) -> list[SourceRecord]:
        """Sources whose relative path (absolute path, if `pattern` starts with /) matches a shell pattern."""
        pattern = to_stored(pattern)
        return [r for r in self.all()
                if fnmatch.fnmatchcase(r.path if pattern.startswith("/") else r.rel, pattern)]

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

    # the cleanup journal ----------------------------------------------------------------------------------
    def begin_cleanup(self, path: str, rel: str, shas: set[str], owner: str, remove_source: bool = False) -> None:
        """Journal `path` before its chunks change; with `remove_source` its row goes in the same transaction,
        so the source vanishes from searches and listings at once while its chunks are still being removed."""
        with self._db:
            row = self._db.execute("SELECT shas FROM cleanups WHERE path = ?", (path,)).fetchone()
            shas = set(shas) | set(json.loads(row["shas"]) if row else [])
            self._db.execute("INSERT OR REPLACE INTO cleanups VALUES (?, ?, ?, ?, ?)",
                             (path, rel, json.dumps(sorted(shas)), owner, time.time()))
            if remove_source:
                self._db.execute("DELETE FROM sources WHERE path = ?", (path,))

    def end_cleanup(self, path: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM cleanups WHERE path = ?", (path,))

    def cleanups_of(self, path: str) -> Cleanup | None:
        return next((c for c in self.cleanups() if c.path == path), None)

    def cleanups(self) -> list[Cleanup]:
        rows = self._db.execute("SELECT * FROM cleanups ORDER BY since")
        return [Cleanup(**{**dict(r), "shas": json.loads(r["shas"])}) for r in rows]

    def current_shas(self, paths: list[str]) -> dict[str, str]:
        """The current content hash of each of `paths` that is in the manifest."""
        rows = self._db.execute("SELECT path, sha256 FROM sources WHERE path IN (SELECT value FROM json_each(?))",
                                (json.dumps(sorted(set(paths))),))
        return {r["path"]: r["sha256"] for r in rows}

    def close(self) -> None:
        self._db.close()
