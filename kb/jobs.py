"""Background ingestion for the app: a queue of jobs, one worker thread, per-file status, cancel.

The app process owns the embedded store, so ingestion runs inside it on the same `Store` object the pages
read (no second process, no lock conflict). Each job is one `Ingestor.run` over its paths, so engine batches
still span files; the per-file status is derived from the pipeline's progress events and from which tasks
the engine is asked to run. Nothing here imports Streamlit: the app keeps one `JobQueue` in a
`st.cache_resource`, so jobs survive page changes and reruns.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ingest.pipeline import STORED, FileResult, Ingestor, IngestReport, walk  # STORED: statuses now in the KB
from kb.config import Settings
from kb.engines import Engine
from kb.errors import InputError, NotFound
from kb.store import Store
from kb.types import Progress, Request

log = logging.getLogger(__name__)

QUEUED, READING, OCR, CAPTIONING, VIDEO, EMBEDDING = "queued", "reading", "OCR", "captioning", "video", "embedding"
DONE, FAILED, CANCELLED, SKIPPED = "done", "failed", "cancelled", "skipped"
FINAL = (DONE, FAILED, CANCELLED, SKIPPED)
TASK_STATE = {"ocr": OCR, "caption": CAPTIONING, "video": VIDEO}


FOLDERS_FIX = ("to let the app read it, add its folder to KB_ALLOWED_FOLDERS (folders separated by ':'; or "
               "allowed_folders = [...] in seekframe.toml) and restart the app; or ingest it from a shell with "
               "`python -m ingest PATH` while the app is stopped")


class JobCancelled(BaseException):
    """Raised from inside the pipeline to stop a cancelled job.

    A BaseException on purpose: the pipeline catches `Exception` around reads and engine calls to isolate
    bad files, and a cancel must not be mistaken for (and swallowed as) one file's failure.
    """


@dataclass
class FileStatus:
    path: str  # absolute
    rel: str  # as the pipeline names it (relative to the folder it was found in)
    state: str = QUEUED
    reason: str = ""
    chunks: int = 0
    result: str = ""  # the pipeline's word: added, updated, skipped, partial, failed, ...

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass
class Job:
    id: int
    label: str
    files: list[FileStatus]
    paths: list[Path] = field(default_factory=list)  # what Ingestor.run walks when the job starts
    # Every file the run meets must be under one of these (checked again per file: a link that leads out
    # is refused); None for a re-index, whose path comes from the manifest rather than from a visitor.
    roots: tuple[Path, ...] | None = None
    force: bool = False  # re-index: ingest again even when the file is unchanged
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    state: str = QUEUED  # queued, running, done, failed, cancelled
    error: str = ""
    pages_read: int = 0  # pages and images the engine read
    chunks: int = 0
    engine: str = ""
    cancel_requested: bool = False

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, "running")

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
def uploads_folder(settings: Settings) -> Path:
    """Where the app saves uploads (one folder per content hash, see pages.helpers.save_upload)."""
    return settings.home.resolve() / "uploads"


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
                         FOLDERS_FIX)
    typed = Path(os.path.normpath(Path(path).expanduser()))
    if not typed.is_absolute():
        raise InputError(str(path), "not an absolute path", "give the full path, starting with /")
    lexical_roots = [Path(os.path.normpath(r)) for r in roots]
    real_roots = [r.resolve() for r in lexical_roots]
    resolved = typed.resolve()
    allowed = ", ".join(str(r) for r in lexical_roots)
    for found in (_under(typed, lexical_roots), _under(resolved, real_roots)):
        hidden = next((part for part in found[1] if part.startswith(".")), None) if found else None
        if hidden:
            raise InputError(str(path), f"'{hidden}' is hidden: hidden files and folders are not read from the app",
                             "rename it, or ingest it from a shell with `python -m ingest PATH`")
    if _under(resolved, real_roots) is None:
        where = f"it leads to {resolved}, " if _under(typed, lexical_roots) else ""
        raise InputError(str(path), f"{where}outside the folders the app may read ({allowed})", FOLDERS_FIX)
    if not resolved.exists():
        raise InputError(str(path), "no such file or folder on the server",
                         "give an absolute path that the app process can read")
    return resolved


def plan_files(paths: Sequence[Path]) -> list[FileStatus]:
    """The supported files under `paths` (checked by the caller), queued."""
    return [FileStatus(path=str(p), rel=pipeline_rel(p, root)) for p, root in walk([Path(p) for p in paths])]


class _Tracker:
    """Turns pipeline progress events into per-file states and stops the run when the job is cancelled."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.by_rel = {f.rel: f for f in job.files}

    def check(self) -> None:
        if self.job.cancel_requested:
            raise JobCancelled()

    def progress(self, event: Progress) -> None:
        self.check()
        item = self.by_rel.get(event.detail)
        if event.stage == "read" and item:
            item.state = READING
        elif event.stage == "store" and item:
            item.state = EMBEDDING  # the store event comes just before the chunks are embedded and written
        elif event.stage == "model":
            self.job.pages_read = event.done

    def engine_batch(self, requests: Sequence[Request]) -> None:
        """Before an engine batch: files that are read but not stored yet wait on this batch.

        A batch can hold units of several files and does not say whose they are, so every file between
        `reading` and `embedding` gets the batch's task (OCR wins over captioning: it is the longer one).
        """
        self.check()
        tasks = {r.task for r in requests}
        state = next((TASK_STATE[t] for t in ("ocr", "video", "caption") if t in tasks), OCR)
        for item in self.job.files:
            if item.state in (READING, OCR, CAPTIONING, VIDEO):
                item.state = state


class _ReportingEngine:
    """The real engine, with a look at each batch before it runs (for status and cancel)."""

    def __init__(self, engine: Engine, before_batch: Callable[[Sequence[Request]], None]) -> None:
        self._engine = engine
        self._before = before_batch
        self.name, self.model, self.device = engine.name, engine.model, engine.device
        self.can_caption, self.generative = engine.can_caption, engine.generative

    def generate(self, requests: Sequence[Request]) -> list[str]:
        self._before(requests)
        return self._engine.generate(requests)

    def stream(self, request: Request) -> Iterator[str]:
        return self._engine.stream(request)


class _TrackedIngestor(Ingestor):
    """An Ingestor that takes its engine from the app's loader, and only when a file needs one.

    Files with a text layer never load a model, exactly as with the command-line ingest (their chunks
    record engine 'none').
    """

    def __init__(self, store: Store, engine_factory: Callable[[], Engine], tracker: _Tracker,
                 roots: tuple[Path, ...] | None) -> None:
        super().__init__(store.settings, store, progress=tracker.progress)
        self._factory = engine_factory
        self._tracker = tracker
        self._roots = roots

    def _plan(self, path: Path, root: Path, report: IngestReport, *args, **kwargs):
        """Each file again, as the run meets it: a file swapped for a link since the submit is refused too."""
        if self._roots is not None:
            try:
                check_server_path(path, self._roots)
            except InputError as err:
                report.results.append(FileResult(pipeline_rel(path, root), "failed", errors=[str(err)]))
                return None
        return super()._plan(path, root, report, *args, **kwargs)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = _ReportingEngine(self._factory(), self._tracker.engine_batch)
        return self._engine


class JobQueue:
    """Jobs run one at a time, in order, on one daemon thread that starts with the first job."""

    def __init__(self, store: Store, engine_factory: Callable[[], Engine], keep: int = 50) -> None:
        self.store = store
        self._engine_factory = engine_factory
        self._keep = keep
        self._jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # submitting --------------------------------------------------------------------------------------
    @property
    def roots(self) -> tuple[Path, ...]:
        """What the app may read: the allowed server folders (KB_ALLOWED_FOLDERS) and its own uploads."""
        return (*self.store.settings.allowed_folders, uploads_folder(self.store.settings))

    def submit(self, paths: Sequence[Path | str], label: str = "") -> Job:
        """Queue the supported files under `paths`, each under one of `roots` (an upload or an allowed folder).

        This is the boundary for paths a visitor typed: raises InputError naming the path and the setting.
        """
        roots, settings = self.roots, self.store.settings
        if not settings.allowed_folders:  # uploads only: say that server folders are off, not just "outside"
            for path in paths:
                if _under(Path(os.path.normpath(path)), [uploads_folder(settings)]) is None:
                    raise InputError(str(path), "reading folders on the server is off in this app "
                                     "(KB_ALLOWED_FOLDERS is not set)", FOLDERS_FIX)
        return self._enqueue([check_server_path(p, roots) for p in paths], label, force=False, roots=roots)

    def reindex(self, path: str) -> Job:
        """Ingest one source again, even if unchanged (a new engine or model, a fixed reader)."""
        if self.store.manifest.get(path) is None:
            raise NotFound(f"{path} is not a source in the knowledge base", "pick a source from the library")
        if not Path(path).is_file():
            raise NotFound(f"{path} is no longer on disk, so it cannot be re-indexed",
                           "put the file back at that path, or delete the source from the library")
        return self._enqueue([Path(path)], f"re-index {Path(path).name}", force=True, roots=None)

    def _enqueue(self, paths: list[Path], label: str, force: bool, roots: tuple[Path, ...] | None) -> Job:
        files = plan_files(paths)
        job = Job(id=next(self._ids), label=label or ", ".join(p.name for p in paths), files=files, paths=paths,
                  force=force, roots=roots)
        if not files:
            job.state, job.error, job.finished = DONE, "no supported files found", time.time()
        with self._lock:
            self._jobs.append(job)
            del self._jobs[:-self._keep]
        if files:
            self._queue.put(job)
            self._start()
        return job

    def cancel(self, job_id: int) -> None:
        """Stop a job: a queued one never starts, a running one stops before its next file or page batch."""
        for job in self.jobs():
            if job.id == job_id and job.active:
                job.cancel_requested = True

    def jobs(self) -> list[Job]:
        """All kept jobs, newest first."""
        with self._lock:
            return list(reversed(self._jobs))

    @property
    def busy(self) -> bool:
        return any(job.active for job in self.jobs())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has finished; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def throughput(self, last: int = 5) -> list[dict]:
        """Speed of the last finished jobs, for the System page."""
        rows = []
        for job in [j for j in self.jobs() if j.finished and j.started][:last]:
            seconds = max(job.seconds, 1e-6)
            rows.append({"job": job.label, "state": job.state, "files": len(job.files), "pages read": job.pages_read,
                         "chunks": job.chunks, "seconds": round(job.seconds, 2),
                         "files/min": round(60 * len(job.files) / seconds, 1),
                         "pages/s": round(job.pages_read / seconds, 2), "engine": job.engine})
        return rows

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel what is left and stop the worker (the app's cache releases the queue with this)."""
        for job in self.jobs():
            job.cancel_requested = True
        self._queue.put(None)
        if self._thread and self._thread.is_alive():
            self._thread.join(timeout)

    # the worker --------------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="seekframe-ingest", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as err:  # a bug must fail this job, not kill the worker that later jobs need
                log.exception("ingest job %s failed", job.id)
                job.state, job.error = FAILED, f"the ingest stopped: {err!r}"
                for item in job.files:
                    if not item.final:
                        item.state, item.reason = FAILED, job.error
            finally:
                job.finished = job.finished or time.time()

    def _run(self, job: Job) -> None:
        if job.cancel_requested:
            self._mark_cancelled(job)
            return
        job.state, job.started = "running", time.time()
        tracker = _Tracker(job)
        ingestor = _TrackedIngestor(self.store, self._engine_factory, tracker, job.roots)
        try:
            # The old version stays searchable until the new one replaces it (or stays, if the read fails).
            report = ingestor.run(job.paths, force=job.force)
        except JobCancelled:
            self._mark_cancelled(job)
            return
        job.pages_read, job.chunks, job.engine = report.pages_read, report.chunks, report.engine
        results = {r.path: r for r in report.results}
        for item in job.files:
            self._apply(item, results.get(item.rel))
        job.state = FAILED if all(f.state == FAILED for f in job.files) else DONE
        # What the walk left out (hidden, links not followed, other types) gets a row too: the user sees why.
        planned = {item.rel for item in job.files}
        for result in report.results:
            if result.path not in planned:
                item = FileStatus(path="", rel=getattr(result, "shown", result.path), state=SKIPPED)
                self._apply(item, result)
                item.state = FAILED if result.status == "failed" else SKIPPED
                job.files.append(item)
        job.finished = time.time()

    @staticmethod
    def _apply(item: FileStatus, result: FileResult | None) -> None:
        if result is None:
            item.state, item.reason = FAILED, "the ingest did not report on this file"
            return
        item.result, item.chunks = result.status, result.chunks
        item.state = DONE if result.status in STORED else FAILED
        item.reason = "; ".join(result.errors or getattr(result, "notes", []))  # a link not followed has a note
        if result.status == "skipped":
            item.reason = "unchanged since the last ingest"

    def _mark_cancelled(self, job: Job) -> None:
        for item in job.files:
            if item.final:
                continue
            record = self.store.manifest.get(item.path)
            stored = item.state == EMBEDDING and record is not None and record.ingested_at >= (job.started or 0)
            item.state, item.reason = (DONE, "stored before the cancel") if stored else (CANCELLED, "cancelled")
        job.state, job.finished = CANCELLED, time.time()
