"""Ingest jobs that outlive the process that asked for them: a job table in KB_HOME/jobs.sqlite.

Any app replica submits, lists and cancels jobs here; workers (`python -m ingest --worker`, or a thread of a
single-user app that owns the embedded store) claim them. Why a SQLite table and not a queue library: the app
needs per-file progress, cancel and a list of past jobs, which a task queue (huey, rq) does not keep, and
huey's SQLite storage removes a task when a consumer takes it, so a worker killed mid-job loses it. Here:

- a claim is one `BEGIN IMMEDIATE` transaction: exactly one worker gets a job;
- a claim is a lease that the worker renews while it works; a job whose lease ran out (its worker was killed)
  is claimable again and resumes from the pipeline's per-file checkpoints (ingest/checkpoint.py);
- a job is not claimed while another running job holds one of its files, so no file is ingested by two
  workers at once (and the pipeline itself skips a file whose content is already stored).
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ingest.pipeline import walk
from kb.config import Settings
from kb.errors import InputError, NotFound
from kb.manifest import Manifest
from kb.types import FileState, JobState

LEASE_SECONDS = 60.0  # a worker renews its claim every third of this; a dead worker's job waits this long

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    paths TEXT NOT NULL,             -- JSON list of absolute paths the run walks
    roots TEXT,                      -- JSON list of folders every file must be under; NULL: no check (re-index)
    force INTEGER NOT NULL DEFAULT 0,
    ocr_first INTEGER NOT NULL DEFAULT 0,  -- the submitter's choice: text only, no captions
    owner TEXT NOT NULL DEFAULT '',  -- who submitted it (signed-in user), for display
    state TEXT NOT NULL,             -- queued, running, done, failed, cancelled
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT NOT NULL DEFAULT '',
    pages_read INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    engine TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_files (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    path TEXT NOT NULL,              -- absolute
    rel TEXT NOT NULL,               -- as the pipeline names it
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '',
    chunks INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    cause TEXT NOT NULL DEFAULT '',  -- the reason's error code and values as JSON (kb/i18n.py says it)
    PRIMARY KEY (job_id, path)
);
CREATE INDEX IF NOT EXISTS job_files_path ON job_files(path);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    beat REAL NOT NULL,
    job_id INTEGER
);
CREATE TABLE IF NOT EXISTS inbox_seen (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL
);
"""


@dataclass
class FileStatus:
    path: str  # absolute
    rel: str  # as the pipeline names it (relative to the folder it was found in)
    state: FileState = FileState.QUEUED
    reason: str = ""
    chunks: int = 0
    result: str = ""  # the pipeline's word (an Outcome): added, updated, skipped, partial, failed, ...
    cause: str = ""  # the reason as {"code", "params"} JSON when an error with a code gave it, for the app to say

    @property
    def final(self) -> bool:
        return self.state.final


@dataclass
class Job:
    """A snapshot of one job as the table holds it (read it again for fresh progress)."""

    id: int
    label: str
    files: list[FileStatus]
    paths: list[Path] = field(default_factory=list)
    roots: tuple[Path, ...] | None = None
    force: bool = False
    ocr_first: bool = False  # the submitter's choice: text only, no captions (faster)
    owner: str = ""
    started: float | None = None
    finished: float | None = None
    state: JobState = JobState.QUEUED
    error: str = ""
    pages_read: int = 0
    chunks: int = 0
    engine: str = ""
    cancel_requested: bool = False
    worker: str = ""
    attempts: int = 0

    @property
    def active(self) -> bool:
        return self.state in (JobState.QUEUED, JobState.RUNNING)

    @property
    def finished_files(self) -> int:
        return sum(f.final for f in self.files)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.state] = out.get(f.state, 0) + 1
        return out


def pipeline_rel(path: Path, root: Path) -> str:
    """The name the pipeline gives a file found under `root` (kept in step with Ingestor._plan)."""
    return path.relative_to(root).as_posix() if path != root else path.name


# server paths ------------------------------------------------------------------------------------------------
FOLDERS_FIX = ("to let the app read it, add its folder to KB_ALLOWED_FOLDERS (folders separated by ':'; or "
               "allowed_folders = [...] in seekframe.toml) and restart the app; or ingest it from a shell with "
               "`python -m ingest PATH` while the app is stopped")


def uploads_folder(home: Path) -> Path:
    """Where the app saves uploads (one folder per content hash, see pages.helpers.save_upload)."""
    return home.resolve() / "uploads"


def _under(path: Path, roots: Sequence[Path]) -> tuple[Path, tuple[str, ...]] | None:
    """The first root that holds `path` and the parts below it; None when no root holds it."""
    for root in roots:
        if path == root or root in path.parents:
            return root, path.relative_to(root).parts
    return None


def check_server_path(path: Path | str, roots: Sequence[Path]) -> Path:
    """`path`, resolved, if the app may read it: under one of `roots`, nothing hidden below the root, and no
    link leading out of the roots. Raises InputError naming the path and the setting to change.

    Checked twice: as typed (so `..` and hidden names are judged as the user wrote them) and resolved (a
    symlink is judged by where it leads).
    """
    if not roots:
        raise InputError(str(path), "the app may not read folders on the server (no allowed folders are set)",
                         FOLDERS_FIX, code="folder.none_allowed")
    typed = Path(os.path.normpath(Path(path).expanduser()))
    if not typed.is_absolute():
        raise InputError(str(path), "not an absolute path", "give the full path, starting with /",
                         code="folder.not_absolute")
    lexical_roots = [Path(os.path.normpath(r)) for r in roots]
    real_roots = [r.resolve() for r in lexical_roots]
    resolved = typed.resolve()
    allowed = ", ".join(str(r) for r in lexical_roots)
    for found in (_under(typed, lexical_roots), _under(resolved, real_roots)):
        hidden = next((part for part in found[1] if part.startswith(".")), None) if found else None
        if hidden:
            raise InputError(str(path), f"'{hidden}' is hidden: hidden files and folders are not read from the app",
                             "rename it, or ingest it from a shell with `python -m ingest PATH`",
                             code="folder.hidden", params={"hidden": hidden})
    if _under(resolved, real_roots) is None:
        leads = _under(typed, lexical_roots) is not None  # a link inside the folders that leads out of them
        where = f"it leads to {resolved}, " if leads else ""
        raise InputError(str(path), f"{where}outside the folders the app may read ({allowed})", FOLDERS_FIX,
                         code="folder.leads_outside" if leads else "folder.outside",
                         params={"allowed": allowed, "target": resolved})
    if not resolved.exists():
        raise InputError(str(path), "no such file or folder on the server",
                         "give an absolute path that the app process can read", code="folder.missing")
    return resolved


def plan_files(paths: Sequence[Path]) -> list[FileStatus]:
    """The supported files under `paths` (checked by the caller), queued."""
    return [FileStatus(path=str(p), rel=pipeline_rel(p, root)) for p, root in walk([Path(p) for p in paths])]


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobBoard:
    """The job table: submit, list, cancel (any process); claim, renew, report, finish (workers)."""

    def __init__(self, home: Path, lease: float = LEASE_SECONDS, allowed_folders: Sequence[Path] = ()) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.path = home / "jobs.sqlite"
        self.lease = lease
        self.allowed_folders = tuple(allowed_folders)
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        # One connection, several threads (a worker and its heartbeat, the pages of a session): one at a time,
        # or one thread's BEGIN would land inside another's transaction.
        self._lock = threading.RLock()
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(job_files)")}
        if "cause" not in columns:  # a job table written before errors carried codes
            self._db.execute("ALTER TABLE job_files ADD COLUMN cause TEXT NOT NULL DEFAULT ''")

    @classmethod
    def open(cls, settings: Settings) -> JobBoard:
        return cls(settings.home, lease=settings.job_lease, allowed_folders=settings.allowed_folders)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before reading (BEGIN IMMEDIATE): no two writers interleave."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # submitting and reading (app replicas) -----------------------------------------------------------------
    @property
    def roots(self) -> tuple[Path, ...]:
        """What the app may read: the allowed server folders (KB_ALLOWED_FOLDERS) and its own uploads."""
        return (*self.allowed_folders, uploads_folder(self.home))

    def submit(self, paths: Sequence[Path | str], label: str = "", owner: str = "", ocr_first: bool = False) -> Job:
        """Queue the supported files under `paths`, each under one of `roots` (an upload or an allowed folder).

        This is the boundary for paths a visitor typed: raises InputError naming the path and the setting.
        """
        roots = self.roots
        if not self.allowed_folders:  # uploads only: say that server folders are off, not just "outside"
            for path in paths:
                if _under(Path(os.path.normpath(path)), [uploads_folder(self.home)]) is None:
                    raise InputError(str(path), "reading folders on the server is off in this app "
                                     "(KB_ALLOWED_FOLDERS is not set)", FOLDERS_FIX, code="folder.off")
        return self._enqueue([check_server_path(p, roots) for p in paths], label, force=False, roots=roots,
                             owner=owner, ocr_first=ocr_first)

    def _enqueue(self, resolved: list[Path], label: str, force: bool, roots: Sequence[Path] | None,
                 owner: str, ocr_first: bool = False) -> Job:
        files = plan_files(resolved)
        label = label or ", ".join(p.name for p in resolved)
        now = time.time()
        state, error = (JobState.QUEUED, "") if files else (JobState.DONE, "no supported files found")
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO jobs (label, paths, roots, force, ocr_first, owner, state, created, finished, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (label, json.dumps([str(p) for p in resolved]),
                 None if roots is None else json.dumps([str(r) for r in roots]), int(force), int(ocr_first), owner,
                 state, now,
                 None if files else now, error))
            job_id = cursor.lastrowid
            assert job_id is not None  # an INSERT into a rowid table always sets it
            db.executemany("INSERT OR IGNORE INTO job_files (job_id, position, path, rel) VALUES (?, ?, ?, ?)",
                           [(job_id, n, f.path, f.rel) for n, f in enumerate(files)])
        return self.job(job_id)

    def reindex(self, path: str, manifest: Manifest, owner: str = "") -> Job:
        """Ingest one source again, even if unchanged (a new engine or model, a fixed reader)."""
        if manifest.get(path) is None:
            raise NotFound(f"{path} is not a source in the knowledge base", "pick a source from the library",
                           code="source.unknown", params={"path": path})
        if not Path(path).is_file():
            raise NotFound(f"{path} is no longer on disk, so it cannot be re-indexed",
                           "put the file back at that path, or delete the source from the library",
                           code="source.gone", params={"path": path})
        return self._enqueue([Path(path)], f"re-index {Path(path).name}", force=True, roots=None, owner=owner)

    def cancel(self, job_id: int) -> None:
        """A queued job never starts; a running one stops before its next file or page batch."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = ?, finished = ?, error = 'cancelled before it started' "
                       "WHERE id = ? AND state = ?", (JobState.CANCELLED, time.time(), job_id, JobState.QUEUED))
            db.execute("UPDATE job_files SET state = ?, reason = 'cancelled' WHERE job_id = ? AND state = ? "
                       "AND (SELECT state FROM jobs WHERE id = ?) = ?",
                       (FileState.CANCELLED, job_id, FileState.QUEUED, job_id, JobState.CANCELLED))
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?", (job_id, JobState.RUNNING))

    def job(self, job_id: int) -> Job:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"there is no ingest job {job_id}", "pick a job from the list", code="job.unknown",
                           params={"job": job_id})
        return self._job(row)

    def jobs(self, limit: int = 50) -> list[Job]:
        """The latest jobs, newest first."""
        return [self._job(r) for r in self._read("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def _job(self, row: sqlite3.Row) -> Job:
        files = [FileStatus(path=f["path"], rel=f["rel"], state=FileState(f["state"]), reason=f["reason"],
                            chunks=f["chunks"], result=f["result"], cause=f["cause"])
                 for f in self._read("SELECT * FROM job_files WHERE job_id = ? ORDER BY position", (row["id"],))]
        roots = None if row["roots"] is None else tuple(Path(r) for r in json.loads(row["roots"]))
        return Job(id=row["id"], label=row["label"], files=files, paths=[Path(p) for p in json.loads(row["paths"])],
                   roots=roots, force=bool(row["force"]), ocr_first=bool(row["ocr_first"]), owner=row["owner"],
                   started=row["started"], finished=row["finished"], state=JobState(row["state"]),
                   error=row["error"], pages_read=row["pages_read"], chunks=row["chunks"], engine=row["engine"],
                   cancel_requested=bool(row["cancel_requested"]), worker=row["worker"], attempts=row["attempts"])

    @property
    def busy(self) -> bool:
        return bool(self._read("SELECT 1 FROM jobs WHERE state IN (?, ?) LIMIT 1", (JobState.QUEUED, JobState.RUNNING)))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def throughput(self, last: int = 5) -> list[dict[str, Any]]:
        """Speed of the last finished jobs, for the System page."""
        rows = []
        for job in [j for j in self.jobs() if j.finished and j.started][:last]:
            seconds = max(job.seconds, 1e-6)
            rows.append({"job": job.label, "state": job.state, "files": len(job.files), "pages read": job.pages_read,
                         "chunks": job.chunks, "seconds": round(job.seconds, 2),
                         "files/min": round(60 * len(job.files) / seconds, 1),
                         "pages/s": round(job.pages_read / seconds, 2), "engine": job.engine})
        return rows

    def live_workers(self, within: float | None = None) -> list[str]:
        """Workers that wrote a heartbeat lately (default: within one lease)."""
        since = time.time() - (within if within is not None else self.lease)
        return [r["name"] for r in self._read("SELECT name FROM workers WHERE beat >= ? ORDER BY name", (since,))]

    # working (workers) ------------------------------------------------------------------------------------
    def beat(self, worker: str, job_id: int | None = None) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO workers (name, host, pid, beat, job_id) VALUES (?, ?, ?, ?, ?)",
                       (worker, socket.gethostname(), os.getpid(), time.time(), job_id))

    def claim(self, worker: str) -> Job | None:
        """The oldest job that is queued, or running under a lease that ran out, and shares no file with a job
        another worker holds; it is this worker's until its lease runs out. None when there is nothing to do."""
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT j.id FROM jobs j WHERE (j.state = ? OR (j.state = ? AND j.lease_until < ?)) "
                "AND NOT EXISTS (SELECT 1 FROM job_files mine JOIN job_files other ON other.path = mine.path "
                "  JOIN jobs r ON r.id = other.job_id WHERE mine.job_id = j.id AND r.id != j.id "
                "  AND r.state = ? AND r.lease_until >= ?) "
                "ORDER BY j.id LIMIT 1", (JobState.QUEUED, JobState.RUNNING, now, JobState.RUNNING, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, worker = ?, lease_until = ?, started = COALESCE(started, ?), "
                       "attempts = attempts + 1 WHERE id = ?",
                       (JobState.RUNNING, worker, now + self.lease, now, row["id"]))
        return self.job(row["id"])

    def renew(self, job_id: int, worker: str) -> bool:
        """Extend this worker's lease; False when the job is no longer this worker's (taken over, or gone)."""
        with self._write() as db:
            changed = db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND state = ?",
                                 (time.time() + self.lease, job_id, worker, JobState.RUNNING)).rowcount
        return changed == 1

    def cancel_requested(self, job_id: int) -> bool:
        rows = self._read("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def set_files(self, job_id: int, states: dict[str, FileState]) -> None:
        """New states for files of a job (by absolute path), as the pipeline reaches them."""
        if states:
            with self._write() as db:
                db.executemany("UPDATE job_files SET state = ? WHERE job_id = ? AND path = ?",
                               [(state, job_id, path) for path, state in states.items()])

    def set_progress(self, job_id: int, pages_read: int) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET pages_read = ? WHERE id = ?", (pages_read, job_id))

    def finish(self, job: Job, state: JobState, error: str = "") -> None:
        """Record a job's outcome and its files' results (from `job`, as the worker filled them in)."""
        with self._write() as db:
            # INSERT OR REPLACE: the run may add rows (files the walk left out, with the reason).
            db.executemany("INSERT OR REPLACE INTO job_files (job_id, position, path, rel, state, reason, chunks, "
                           "result, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(job.id, n, f.path, f.rel, f.state, f.reason, f.chunks, f.result, f.cause)
                            for n, f in enumerate(job.files)])
            db.execute("UPDATE jobs SET state = ?, error = ?, finished = ?, pages_read = ?, chunks = ?, engine = ?, "
                       "lease_until = 0 WHERE id = ?",
                       (state, error, time.time(), job.pages_read, job.chunks, job.engine, job.id))

    def release(self, job_id: int, worker: str) -> None:
        """Hand a job back unfinished (the worker is stopping): the next claim resumes it from its checkpoints."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = ?, worker = '', lease_until = 0 WHERE id = ? AND worker = ? "
                       "AND state = ?", (JobState.QUEUED, job_id, worker, JobState.RUNNING))
            final = [s for s in FileState if s.final]
            marks = ", ".join("?" for _ in final)
            db.execute(f"UPDATE job_files SET state = ? WHERE job_id = ? AND state NOT IN ({marks})",
                       (FileState.QUEUED, job_id, *final))

    # the watched inbox -------------------------------------------------------------------------------------
    def submit_inbox(self, inbox: Path, settle: float = 2.0) -> Job | None:
        """Queue the files in `inbox` that are new or changed since they were last queued and have not been
        written to for `settle` seconds (a copy in progress waits for the next look)."""
        now = time.time()
        found = []
        for path, _root in walk([inbox]):
            try:
                info = path.stat()
            except OSError:
                continue
            if now - info.st_mtime >= settle:
                found.append((str(path), info.st_size, info.st_mtime))
        with self._write() as db:
            seen = {r["path"]: (r["size"], r["mtime"]) for r in db.execute("SELECT * FROM inbox_seen")}
            changed = [f for f in found if seen.get(f[0]) != (f[1], f[2])]
            db.executemany("INSERT OR REPLACE INTO inbox_seen (path, size, mtime) VALUES (?, ?, ?)", changed)
        if not changed:
            return None
        return self._enqueue([Path(p) for p, _, _ in changed], f"inbox: {len(changed)} file"
                             + ("s" if len(changed) != 1 else ""), force=False, roots=[inbox.resolve()],
                             owner="inbox")

    def close(self) -> None:
        self._db.close()
