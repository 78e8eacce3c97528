"""The ingest worker: takes jobs from the job table (ingest/jobs.py), runs the pipeline, reports per-file states.

`python -m ingest --worker` runs one in its own process (a team: any number, next to a Chroma server); a
single-user app that owns the embedded store runs one on a thread (`start_thread`). Each job is one
`Ingestor.run` over its paths, so engine batches still span files; per-file states come from the pipeline's
progress events and from which tasks the engine is asked to run.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ingest.jobs import (
    FileStatus,
    Job,
    JobBoard,
    check_server_path,
    default_worker_name,
    pipeline_rel,
)
from ingest.pipeline import STORED, FileResult, Ingestor, IngestReport, _FileInFlight  # STORED: outcomes in the KB
from kb.engines import Engine, picture_pixels
from kb.errors import InputError
from kb.store import Store
from kb.types import FileState, JobState, Outcome, Progress, Request, Stage

log = logging.getLogger(__name__)
TASK_STATE = {"ocr": FileState.OCR, "caption": FileState.CAPTIONING, "video": FileState.VIDEO}
# A worker keeps the reader processes of long PDFs and videos from one job to the next (starting them is seconds
# of every job: docs/benchmarks.md, run T) and lets them go after this long without a job: each holds ~90 MB
# (proportional share; ~200 MB resident, most of it shared libraries) once it has read a video.
READERS_KEPT_IDLE_S = 300.0


class JobStopped(BaseException):
    """Raised from inside the pipeline to stop a job: cancelled, the worker is stopping, or its lease was lost.

    A BaseException on purpose: the pipeline catches `Exception` around reads and engine calls to isolate
    bad files, and a stop must not be mistaken for (and swallowed as) one file's failure.
    """

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why  # cancelled, stopping, lost


class _Tracker:
    """Turns pipeline progress events into per-file states in the job table, and stops the run when asked."""

    def __init__(self, board: JobBoard, job: Job, stopping: threading.Event, lost: threading.Event) -> None:
        self.board, self.job = board, job
        self.by_rel = {f.rel: f for f in job.files}
        self._stopping, self._lost = stopping, lost
        self._checked = 0.0

    def check(self, always: bool = False) -> None:
        """Stop here if the job was cancelled: asked before every engine batch, and at most every half second
        on progress events (one small read, not one per event)."""
        if self._lost.is_set():
            raise JobStopped("lost")
        if self._stopping.is_set():
            raise JobStopped("stopping")
        now = time.monotonic()
        if always or now - self._checked > 0.5:
            self._checked = now
            if self.board.cancel_requested(self.job.id):
                raise JobStopped("cancelled")

    def _set(self, items: Sequence[FileStatus], state: FileState) -> None:
        changed = {f.path: state for f in items if f.state != state}
        for item in items:
            item.state = state
        self.board.set_files(self.job.id, changed)

    def progress(self, event: Progress) -> None:
        self.check()
        item = self.by_rel.get(event.detail)
        if event.stage == Stage.READ and item:
            self._set([item], FileState.READING)
        elif event.stage == Stage.SPEECH and item:
            self._set([item], FileState.TRANSCRIBING)
        elif event.stage == Stage.STORE and item:
            self._set([item], FileState.EMBEDDING)  # the store event comes just before the chunks are embedded
        elif event.stage == Stage.MODEL:
            self.job.pages_read = event.done
            self.board.set_progress(self.job.id, event.done)

    def engine_batch(self, requests: Sequence[Request]) -> None:
        """Before an engine batch: files that are read but not stored yet wait on this batch.

        A batch can hold units of several files and does not say whose they are, so every file between
        `reading` and `embedding` gets the batch's task (OCR wins over captioning: it is the longer one).
        """
        self.check(always=True)
        tasks = {r.task for r in requests}
        state = next((TASK_STATE[t] for t in ("ocr", "video", "caption") if t in tasks), FileState.OCR)
        waiting = (FileState.READING, FileState.TRANSCRIBING, FileState.OCR, FileState.CAPTIONING, FileState.VIDEO)
        self._set([f for f in self.job.files if f.state in waiting], state)


class _ReportingEngine:
    """The real engine, with a look at each batch before it runs (for status and cancel)."""

    def __init__(self, engine: Engine, before_batch: Callable[[Sequence[Request]], None]) -> None:
        self._engine = engine
        self._before = before_batch
        self.name, self.model, self.device = engine.name, engine.model, engine.device
        self.can_caption, self.generative = engine.can_caption, engine.generative
        self.slots, self.server_batched = engine.slots, engine.server_batched
        self.picture_pixels = picture_pixels(engine)
        submit = getattr(engine, "submit", None)
        if callable(submit):  # batches handed over while one decodes (kb.engines.submitter): seen as they go
            def submit_seen(requests: Sequence[Request]) -> Future[list[str]]:
                self._before(requests)
                return submit(requests)  # type: ignore[no-any-return]

            self.submit = submit_seen
            # Held while the engine records a decode step: the ingest's embedder waits on it beside batches in flight.
            self.recording = getattr(engine, "recording", None)

    def generate(self, requests: Sequence[Request]) -> list[str]:
        self._before(requests)
        return self._engine.generate(requests)

    def stream(self, request: Request) -> Iterator[str]:
        return self._engine.stream(request)


class _TrackedIngestor(Ingestor):
    """An Ingestor that takes its engine from a loader, and only when a file needs one.

    Files with a text layer never load a model, exactly as with the command-line ingest (their chunks
    record engine 'none').
    """

    def __init__(self, store: Store, engine_factory: Callable[[], Engine], tracker: _Tracker,
                 roots: tuple[Path, ...] | None) -> None:
        super().__init__(store.settings, store, progress=tracker.progress)
        self._factory = engine_factory
        self._tracker = tracker
        self._roots = roots

    def _plan(self, path: Path, root: Path, report: IngestReport, force: bool = False) -> _FileInFlight | None:
        """Each file again, as the run meets it: a file swapped for a link since the submit is refused too."""
        if self._roots is not None:
            try:
                check_server_path(path, self._roots)
            except InputError as err:
                report.results.append(FileResult(pipeline_rel(path, root), Outcome.FAILED, errors=[str(err)]))
                return None
        return super()._plan(path, root, report, force)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = _ReportingEngine(self._factory(), self._tracker.engine_batch)
        return self._engine


class Worker:
    """Claims jobs one at a time and runs them; renews its claim and heartbeat while it works."""

    def __init__(self, store: Store, engine_factory: Callable[[], Engine], board: JobBoard, name: str = "",
                 inbox: Path | None = None, poll: float = 1.0) -> None:
        self.store, self.board = store, board
        self._engine_factory = engine_factory
        self.name = name or default_worker_name()
        self.inbox = inbox
        self.poll = poll
        self.stopping = threading.Event()
        self._job_id: int | None = None
        self._lost = threading.Event()

    def run(self) -> None:
        """Work until `stop()`: look at the inbox, claim, run; beat the heart between jobs."""
        beat = threading.Thread(target=self._heartbeat, name=f"{self.name}-beat", daemon=True)
        beat.start()
        log.info("worker %s started (jobs in %s%s)", self.name, self.board.path,
                 f", inbox {self.inbox}" if self.inbox else "")
        from ingest.pdf import reader_processes  # late: PyMuPDF is a heavy import

        with reader_processes() as readers:  # kept from job to job while jobs come (READERS_KEPT_IDLE_S)
            idle_since = time.monotonic()
            while not self.stopping.is_set():
                try:
                    worked = self.run_one()
                except Exception:  # the job table was busy or unreadable: try again, never die silently
                    log.exception("worker %s could not take a job", self.name)
                    worked = False
                if worked:
                    idle_since = time.monotonic()
                    continue
                if time.monotonic() - idle_since > READERS_KEPT_IDLE_S:
                    readers.close()
                self.stopping.wait(self.poll)
        log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        self.stopping.set()

    def run_one(self) -> bool:
        """Claim and run one job; False when there was nothing to do."""
        if self.inbox is not None and self.inbox.is_dir():
            try:
                self.board.submit_inbox(self.inbox)
            except Exception:  # an unreadable inbox must not stop the jobs that came through the app
                log.exception("looking at the inbox %s failed", self.inbox)
        job = self.board.claim(self.name)
        if job is None:
            return False
        self._job_id = job.id
        self._lost.clear()
        try:
            self._run(job)
        except Exception as err:  # a bug must fail this job, not kill the worker that later jobs need
            log.exception("ingest job %s failed", job.id)
            for item in job.files:
                if not item.final:
                    item.state, item.reason = FileState.FAILED, f"the ingest stopped: {err!r}"
            self.board.finish(job, JobState.FAILED, f"the ingest stopped: {err!r}")
        finally:
            self._job_id = None
        return True

    def _heartbeat(self) -> None:
        every = max(0.2, self.board.lease / 3)
        while not self.stopping.is_set():
            job_id = self._job_id
            try:
                self.board.beat(self.name, job_id)
                if job_id is not None and not self.board.renew(job_id, self.name):
                    self._lost.set()  # another worker took it over (this one stalled past its lease)
            except Exception:
                log.exception("heartbeat of %s failed", self.name)
            self.stopping.wait(every)

    def _run(self, job: Job) -> None:
        if job.attempts > 1:
            log.info("resuming job %s (attempt %d) from its checkpoints", job.id, job.attempts)
        tracker = _Tracker(self.board, job, self.stopping, self._lost)
        ingestor = _TrackedIngestor(self.store, self._engine_factory, tracker, job.roots)
        if job.ocr_first:
            ingestor.settings = self.store.settings.replace(ocr_first=True)
        try:
            tracker.check()
            # The old version stays searchable until the new one replaces it (or stays, if the read fails).
            report = ingestor.run(job.paths, force=job.force)
        except JobStopped as stop:
            if stop.why == "cancelled":
                self._mark_cancelled(job)
            elif stop.why == "stopping":
                self.board.release(job.id, self.name)
            return  # lost: the worker that took it over reports it
        job.pages_read, job.chunks, job.engine = report.pages_read, report.chunks, report.engine
        results = {r.rel: r for r in report.results}
        for item in job.files:
            _apply(item, results.get(item.rel))
        state = JobState.FAILED if all(f.state == FileState.FAILED for f in job.files) else JobState.DONE
        # What the walk left out (hidden, links not followed, other types) gets a row too: the user sees why.
        planned = {item.rel for item in job.files}
        for result in report.results:
            if result.rel not in planned:
                rel = result.shown
                item = FileStatus(path=f"(not read) {rel}", rel=rel, state=FileState.SKIPPED)
                _apply(item, result)
                item.state = FileState.FAILED if result.status == Outcome.FAILED else FileState.SKIPPED
                job.files.append(item)
        self.board.finish(job, state)

    def _mark_cancelled(self, job: Job) -> None:
        for item in job.files:
            if item.final:
                continue
            record = self.store.manifest.get(item.path)
            stored = (item.state == FileState.EMBEDDING and record is not None
                      and record.ingested_at >= (job.started or 0))
            item.state, item.reason = ((FileState.DONE, "stored before the cancel") if stored
                                      else (FileState.CANCELLED, "cancelled"))
        self.board.finish(job, JobState.CANCELLED, "cancelled")


def _apply(item: FileStatus, result: FileResult | None) -> None:
    if result is None:
        item.state, item.reason = FileState.FAILED, "the ingest did not report on this file"
        return
    item.result, item.chunks = result.status, result.chunks
    item.state = FileState.DONE if result.status in STORED else FileState.FAILED
    item.reason = "; ".join(result.errors or result.notes)  # a link not followed has a note
    if result.cause is not None and result.cause.code:  # said in the reader's language by the app
        item.cause = json.dumps({"code": result.cause.code, "params": result.cause.params}, default=str)
    elif any(getattr(line, "code", "") for line in result.errors or result.notes):  # a reader's Said lines
        item.cause = json.dumps({"said": [{"code": getattr(line, "code", ""), "params": getattr(line, "params", {}),
                                           "text": str(line)} for line in result.errors or result.notes]},
                                default=str)
    if result.status == Outcome.SKIPPED:
        item.reason = "unchanged since the last ingest"


def start_thread(worker: Worker) -> threading.Thread:
    """Run `worker` on a daemon thread (the single-user app: it owns the embedded store, so it ingests too)."""
    thread = threading.Thread(target=worker.run, name="seekframe-ingest", daemon=True)
    thread.start()
    return thread

