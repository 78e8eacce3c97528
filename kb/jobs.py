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
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ingest.pipeline import FileResult, Ingestor, walk
from kb.engines import Engine
from kb.errors import InputError, NotFound
from kb.store import Store
from kb.types import Progress, Request

log = logging.getLogger(__name__)

QUEUED, READING, OCR, CAPTIONING, VIDEO, EMBEDDING = "queued", "reading", "OCR", "captioning", "video", "embedding"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)
TASK_STATE = {"ocr": OCR, "caption": CAPTIONING, "video": VIDEO}
# Statuses of a pipeline FileResult that mean the file is in the knowledge base now.
STORED = ("added", "updated", "copied", "renamed", "skipped", "partial")


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


def plan_files(paths: Sequence[Path]) -> list[FileStatus]:
    """The supported files under `paths`, queued; raises InputError for a path that does not exist."""
    for path in paths:
        if not Path(path).exists():
            raise InputError(str(path), "no such file or folder on the server",
                             "give an absolute path that the app process can read")
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

    def __init__(self, store: Store, engine_factory: Callable[[], Engine], tracker: _Tracker) -> None:
        super().__init__(store.settings, store, progress=tracker.progress)
        self._factory = engine_factory
        self._tracker = tracker

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
    def submit(self, paths: Sequence[Path | str], label: str = "", force: bool = False) -> Job:
        """Queue the supported files under `paths`. Raises InputError for a path that does not exist."""
        paths = [Path(p).resolve() for p in paths]
        files = plan_files(paths)
        job = Job(id=next(self._ids), label=label or ", ".join(p.name for p in paths), files=files, paths=paths,
                  force=force)
        if not files:
            job.state, job.error, job.finished = DONE, "no supported files found", time.time()
        with self._lock:
            self._jobs.append(job)
            del self._jobs[:-self._keep]
        if files:
            self._queue.put(job)
            self._start()
        return job

    def reindex(self, path: str) -> Job:
        """Ingest one source again, even if unchanged (a new engine or model, a fixed reader)."""
        if not Path(path).is_file():
            raise NotFound(f"{path} is no longer on disk, so it cannot be re-indexed",
                           "put the file back at that path, or delete the source from the library")
        return self.submit([path], label=f"re-index {Path(path).name}", force=True)

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
        ingestor = _TrackedIngestor(self.store, self._engine_factory, tracker)
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
        job.finished = time.time()

    @staticmethod
    def _apply(item: FileStatus, result: FileResult | None) -> None:
        if result is None:
            item.state, item.reason = FAILED, "the ingest did not report on this file"
            return
        item.result, item.chunks = result.status, result.chunks
        item.state = DONE if result.status in STORED else FAILED
        item.reason = "; ".join(result.errors)
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
