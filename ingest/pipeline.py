"""plan (walk, hash, diff against the manifest) -> read -> enrich (engine batches across files) -> chunk -> store.

A file's problems become its result (failed, or partial when some pages failed); they never stop the run.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ingest.checkpoint import Checkpoint, unit_key
from ingest.chunk import chunk_id, make_chunks
from ingest.read import ReadResult, read_file, supported_extensions
from kb import prompts
from kb.config import Settings
from kb.engines import Engine, batch_size_for, load_engine
from kb.engines.guard import trim_repetition
from kb.errors import EngineUnavailable, SeekframeError
from kb.manifest import SourceRecord
from kb.store import Store
from kb.types import Progress, ProgressFn, Request, Source, Unit, no_progress

log = logging.getLogger(__name__)
PROMPTS = {("ocr", "pdf_ocr"): prompts.OCR_PAGE, ("ocr", "image_ocr"): prompts.OCR_IMAGE,
           ("caption", "image_caption"): prompts.CAPTION, ("caption", "pdf_figure"): prompts.CAPTION,
           ("video", "video_segment"): prompts.VIDEO_WINDOW}


@dataclass
class FileResult:
    path: str
    status: str  # added, updated, copied, renamed, skipped, partial, failed, pruned
    chunks: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = ""
    pages_read: int = 0

    def counts(self) -> Counter:
        return Counter(r.status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status in ("failed", "partial")]

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _Job:
    """A file being read: its units wait for the engine, then it is chunked and stored."""

    source: Source
    record: SourceRecord
    read: ReadResult
    status: str
    waiting: int = 0
    checkpoint: Checkpoint | None = None
    keys: dict[int, str] = field(default_factory=dict)  # id(unit) -> checkpoint key


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def walk(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, ingest root) pairs: a folder is walked for supported files, hidden ones skipped; a file is its own."""
    found: dict[Path, Path] = {}
    extensions = supported_extensions()
    for given in paths:
        given = given.resolve()
        if given.is_file():
            found.setdefault(given, given.parent)
            continue
        for path in sorted(given.rglob("*")):
            rel_parts = path.relative_to(given).parts
            if path.is_file() and path.suffix.lower() in extensions and not any(p.startswith(".") for p in rel_parts):
                found.setdefault(path, given)
    return list(found.items())


class Ingestor:
    def __init__(self, settings: Settings, store: Store, engine: Engine | None = None,
                 progress: ProgressFn = no_progress) -> None:
        self.settings = settings
        self.store = store
        self._engine = engine
        self.progress = progress
        self._engine_down: str = ""
        self._video_seconds = [0.0, 0.0]  # read by the engine so far, known in all

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.settings)
        return self._engine

    @property
    def batch_size(self) -> int:
        return batch_size_for(self.settings, self.engine)

    # the run ---------------------------------------------------------------------------------------------
    def run(self, paths: Sequence[Path], prune: bool = False, force: bool = False) -> IngestReport:
        """Ingest `paths`; `force` reads unchanged files again (a new engine or model, a fixed reader)."""
        started = time.monotonic()
        report = IngestReport()
        files = walk(paths)
        jobs: list[_Job] = []
        for n, (path, root) in enumerate(files, 1):
            self.progress(Progress("plan", n, len(files), "files", path.name))
            job = self._plan(path, root, report, force)
            if job:
                jobs.append(job)
        self._process(jobs, report)
        if prune:
            self._prune(paths, report)
        report.seconds = time.monotonic() - started
        report.engine = f"{self._engine.name} ({self._engine.model})" if self._engine else "none needed"
        return report

    def _plan(self, path: Path, root: Path, report: IngestReport, force: bool = False) -> _Job | None:
        rel = path.relative_to(root).as_posix() if path != root else path.name
        try:
            sha = sha256_of(path)
        except OSError as err:
            report.results.append(FileResult(rel, "failed", errors=[f"cannot read the file: {err}"]))
            return None
        source = Source(rel=rel, abs=str(path), sha256=sha)
        known = self.store.manifest.get(source.abs)
        if known and known.sha256 == sha and known.status == "ok" and not force:
            report.results.append(FileResult(rel, "skipped", known.chunks))
            return None
        twin = next((r for r in self.store.manifest.by_sha(sha) if r.path != source.abs), None)
        if twin and not force:
            report.results.append(self._copy(twin, source, path))
            return None
        record = SourceRecord(path=source.abs, rel=rel, sha256=sha, size=path.stat().st_size, kind="", status="ok",
                              chunks=0, engine="", model="")
        return _Job(source, record, ReadResult(kind=""), status="updated" if known else "added")

    def _copy(self, twin: SourceRecord, source: Source, path: Path) -> FileResult:
        """Same content under a new path: reuse the twin's text and vectors; a rename removes the old path."""
        chunks, vectors = self.store.chunks_of(twin.path, with_embeddings=True)
        for n, c in enumerate(chunks):
            c.id, c.source, c.source_abs, c.position = chunk_id(source.abs, source.sha256, n), source.rel, source.abs, n
        record = SourceRecord(**{**twin.to_json(), "path": source.abs, "rel": source.rel, "size": path.stat().st_size,
                                 "ingested_at": time.time()})
        self.store.replace_source(record, chunks, vectors)
        renamed = not Path(twin.path).exists()
        if renamed:
            self.store.delete_source(twin.path)
        return FileResult(source.rel, "renamed" if renamed else "copied", len(chunks))

    def _process(self, jobs: list[_Job], report: IngestReport) -> None:
        pending: list[tuple[_Job, Unit]] = []
        open_jobs: list[_Job] = []
        for n, job in enumerate(jobs, 1):
            self.progress(Progress("read", n, len(jobs), "files", job.source.rel))
            try:
                job.read = read_file(Path(job.source.abs), job.source, self.settings)
            except SeekframeError as err:
                report.results.append(FileResult(job.source.rel, "failed", errors=[str(err)]))
                continue
            except Exception as err:  # a reader bug or library crash on one odd file must not stop the run
                log.exception("reading %s failed", job.source.rel)
                report.results.append(FileResult(job.source.rel, "failed", errors=[f"cannot read: {err!r}"]))
                continue
            visual = self._resume(job, self._visual_units(job))
            job.waiting = len(visual)
            pending += [(job, u) for u in visual]
            open_jobs.append(job)
            while pending and len(pending) >= self.batch_size:
                self._enrich(pending[:self.batch_size], report)
                pending = pending[self.batch_size:]
                open_jobs = self._finish_ready(open_jobs, report)
            open_jobs = self._finish_ready(open_jobs, report)  # a file with nothing for the engine is stored now
        for start in range(0, len(pending), self.batch_size):
            self._enrich(pending[start:start + self.batch_size], report)
        self._finish_ready(open_jobs, report)

    def _visual_units(self, job: _Job) -> list[Unit]:
        units = [u for u in job.read.units if u.needs_model]
        if units and not self._engine_down and not self.engine.can_caption:
            # The ocr engine reads text only: captions are not an error, just not available.
            job.read.units = [u for u in job.read.units if u.task != "caption"]
            units = [u for u in units if u.task != "caption"]
        return units

    def _resume(self, job: _Job, visual: list[Unit]) -> list[Unit]:
        """Fill in units an interrupted run already read; return those still to read."""
        if not visual or self._engine_down:
            return visual
        job.checkpoint = Checkpoint(self.settings.home, job.source.sha256, self.engine.name, self.engine.model)
        index = {id(u): n for n, u in enumerate(job.read.units)}
        job.keys = {id(u): unit_key(index[id(u)], u) for u in visual}
        done = job.checkpoint.load()
        for unit in visual:
            unit.text = done.get(job.keys[id(unit)])
            self._count_video(unit, finished=unit.text is not None)
        return [u for u in visual if u.text is None]

    def _count_video(self, unit: Unit, finished: bool) -> None:
        """Minutes of video known and already read, for progress with an ETA on long recordings."""
        if unit.t_start is not None:
            length = (unit.t_end or unit.t_start) - unit.t_start
            self._video_seconds[1] += length
            self._video_seconds[0] += length if finished else 0.0

    # enrich: one engine call for a batch of units from any number of files ------------------------------
    def _enrich(self, batch: list[tuple[_Job, Unit]], report: IngestReport) -> None:
        ready: list[tuple[_Job, Unit, Request]] = []
        for job, unit in batch:
            try:
                ready.append((job, unit, self._request(unit)))
            except Exception as err:
                self._fail_unit(job, unit, f"cannot render: {err}")
        texts = self._generate([r for _, _, r in ready], [(j, u) for j, u, _ in ready])
        for (job, unit, _), text in zip(ready, texts):
            if text is not None:
                unit.text = trim_repetition(text.strip())
                job.waiting -= 1
                job.checkpoint.add(job.keys[id(unit)], unit.text)
            if unit.t_start is not None:
                self._video_seconds[0] += (unit.t_end or unit.t_start) - unit.t_start
        report.pages_read += len(ready)
        self.progress(Progress("model", report.pages_read, 0, "pages", self.engine.name))
        if self._video_seconds[1]:
            done, total = self._video_seconds
            self.progress(Progress("video", int(done), int(total), "s", "video read by the engine"))

    def _request(self, unit: Unit) -> Request:
        if unit.task == "video":  # frames decoded only now: a batch holds just its own windows
            return Request(task="video", prompt=PROMPTS[("video", unit.modality)], video=unit.video(),
                           max_new_tokens=self.settings.max_video_tokens)
        limit = self.settings.max_caption_tokens if unit.task == "caption" else self.settings.max_page_tokens
        return Request(task=unit.task or "ocr", prompt=PROMPTS[(unit.task, unit.modality)],
                       images=[unit.load_image()], max_new_tokens=limit)

    def _generate(self, requests: list[Request], owners: list[tuple[_Job, Unit]]) -> list[str | None]:
        """Texts for the batch; on failure each request is retried alone so one bad page fails alone."""
        if self._engine_down:
            for job, unit in owners:
                self._fail_unit(job, unit, self._engine_down)
            return [None] * len(requests)
        try:
            return list(self.engine.generate(requests))
        except EngineUnavailable as err:
            self._engine_down = str(err)
        except Exception as err:
            if len(requests) > 1:
                return [self._generate([r], [o])[0] for r, o in zip(requests, owners)]
            self._fail_unit(*owners[0], f"the engine failed: {err}")
            return [None]
        return self._generate(requests, owners)

    def _fail_unit(self, job: _Job, unit: Unit, reason: str) -> None:
        where = f"page {unit.page}: " if unit.page else ""
        job.read.errors.append(f"{where}{unit.task}: {reason}")
        unit.text = ""
        job.waiting -= 1

    # store ----------------------------------------------------------------------------------------------
    def _finish_ready(self, jobs: list[_Job], report: IngestReport) -> list[_Job]:
        still_open = []
        for job in jobs:
            if job.waiting > 0:
                still_open.append(job)
            else:
                report.results.append(self._store(job))
        return still_open

    def _store(self, job: _Job) -> FileResult:
        engine = self._engine.name if self._engine else "none"
        model = self._engine.model if self._engine else ""
        chunks = make_chunks(job.read.units, engine, model, self.settings.chunk_chars)
        errors = job.read.errors
        if errors and not chunks:
            return FileResult(job.source.rel, "failed", errors=errors)
        record = job.record
        record.kind, record.pages, record.duration = job.read.kind, job.read.pages, job.read.duration
        record.engine, record.model, record.errors = engine, model, errors
        record.status = "partial" if errors else "ok"
        record.ingested_at = time.time()
        self.progress(Progress("store", len(chunks), len(chunks), "chunks", job.source.rel))
        try:
            self.store.replace_source(record, chunks)
        except Exception as err:
            log.exception("storing %s failed", job.source.rel)
            return FileResult(job.source.rel, "failed", errors=errors + [f"cannot store: {err}"])
        if job.checkpoint:
            job.checkpoint.clear()
        return FileResult(job.source.rel, "partial" if errors else job.status, len(chunks), errors)

    def _prune(self, paths: Iterable[Path], report: IngestReport) -> None:
        roots = [p.resolve() for p in paths if p.is_dir()]
        for record in self.store.manifest.all():
            path = Path(record.path)
            if not path.exists() and any(path.is_relative_to(r) for r in roots):
                self.store.delete_source(record.path)
                report.results.append(FileResult(record.rel, "pruned", record.chunks))
