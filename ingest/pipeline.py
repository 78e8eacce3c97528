"""plan (walk, hash, diff against the manifest) -> read -> enrich (engine batches across files) -> chunk -> store.

Page images and video windows' frames are loaded ahead of the engine by worker processes (`_LoadAhead`), in the
order the engine asks for them and at most one engine batch ahead, so an engine call does not wait for a render
done on the main thread; the file order into the store and each file's errors stay what they were.

A file's problems become its result (failed, or partial when some pages failed); they never stop the run. So do
the things a folder walk meets and does not read: files of other types, hidden files, links that loop, dangle or
leave the ingest root. Names are kept as the filesystem has them (bytes, surrogate-escaped) and stored in the
round-tripping form of kb/paths.py.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Sequence

from PIL import Image

from ingest.audio import blocks, lay_on_windows, speech_units
from ingest.checkpoint import Checkpoint, unit_key
from ingest.chunk import chunk_id, make_chunks
from ingest.read import kinds_by_extension, read_file, supported_extensions
from ingest.read_result import ReadResult
from kb import prompts
from kb.config import Settings
from kb.engines import Engine, batch_size_for, load_engine, picture_pixels, piece_size, submitter, why_chosen
from kb.engines.asr import SAMPLE_RATE, SpeechEngine, Transcript, main_language
from kb.engines.guard import trim_repetition
from kb.errors import EngineError, EngineUnavailable, SeekframeError
from kb.i18n import said
from kb.manifest import SourceRecord
from kb.paths import display, fs_path, storable, to_stored
from kb.store import Store
from kb.types import (
    Chunk,
    FileKind,
    Modality,
    Outcome,
    Progress,
    ProgressFn,
    Request,
    Source,
    SourceStatus,
    Stage,
    Unit,
    VideoClip,
    no_progress,
)

log = logging.getLogger(__name__)
# Files read are written together, in one embedding call and one lexical-index commit (a commit costs 20-120 ms,
# as much as indexing ~200 chunks): up to this many chunks or files per write, and before each engine batch.
STORE_BATCH_CHUNKS = 1024
STORE_BATCH_FILES = 64
# Processes that load page images and video frames ahead of the engine. None: the host's cores less two (the main
# thread and the engine's processor thread keep theirs), none below 4 cores, where a process pool costs more than
# it frees; 0: each picture is loaded on the main thread when its engine batch is made.
LOAD_WORKERS: int | None = None
# Windows of a video still being sampled are handed to the engine in pieces of this many (0: all the engine's rows).
# Pieces of 16 started an H200's engine 3.5 s sooner but ended the hour of video 1.0 s sooner only (68.8 against
# 69.8 s: the engine is the limit), with no failure in three runs (run M saw one piece fail, cause unknown;
# docs/benchmarks.md, runs M and N); in run O 65.9 against 65.8 s; in run Q, with rows decoding on while a piece
# is prepared, 64.6 against 60.8-61.5 s (the engine started 2.6 s sooner, but rows waited empty for each piece:
# 17 % padding). bench.ingest_gpu --stream-piece measures it.
STREAM_PIECE = 0
MAX_LOAD_WORKERS = 16
PROMPTS = {("ocr", Modality.PDF_OCR): prompts.OCR_PAGE, ("ocr", Modality.IMAGE_OCR): prompts.OCR_IMAGE,
           ("caption", Modality.IMAGE_CAPTION): prompts.CAPTION, ("caption", Modality.PDF_FIGURE): prompts.CAPTION,
           ("video", Modality.VIDEO_SEGMENT): prompts.VIDEO_WINDOW}


# What a file's status means. Stored: in the knowledge base now. Not read: met by a folder walk and left alone
# on purpose (counted in the summary). Failed ones make the exit code 1.
STORED = frozenset({Outcome.ADDED, Outcome.UPDATED, Outcome.COPIED, Outcome.RENAMED, Outcome.SKIPPED, Outcome.PARTIAL,
                    Outcome.EMPTY})
NOT_READ = (Outcome.UNSUPPORTED, Outcome.HIDDEN, Outcome.LINK)
FAILED = frozenset({Outcome.FAILED, Outcome.PARTIAL})
NO_TEXT = {kind: said(english, f"said.no_text.{kind or 'page'}") for kind, english in {
    "video": "no text found in it: it was read without errors but shows no text the engine could read",
    "audio": "no speech found in it: it was read without errors but holds silence, music or noise only",
    "": "no text found on it: it was read without errors but holds nothing readable (blank, or a picture without "
        "writing)"}.items()}
NO_TEXT_FIX = {"video": "nothing to do if it shows no writing; a Qwen3-VL engine (--engine transformers or openai) "
                        "also describes what is shown",
               "audio": "nothing to do if nobody speaks in it",
               "": "nothing to do if it is blank; if it does show text, scan it again at a higher resolution or "
                   "contrast, or read it with a Qwen3-VL engine (--engine transformers or openai)"}


@dataclass
class FileResult:
    rel: str  # relative to its ingest root, as the filesystem names it (surrogate-escaped); see `shown`
    status: Outcome
    chunks: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not errors: read as another type, no text on a page, ...
    fix: str = ""
    cause: SeekframeError | None = None  # the error behind `errors`, when one error failed the file

    @property
    def shown(self) -> str:
        return display(self.rel)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.shown, "status": self.status, "chunks": self.chunks,
                "errors": [display(e.split("\n  fix: ")[0]) for e in self.errors],
                "notes": [display(n) for n in self.notes], "fix": display(self.fix)}


@dataclass
class IngestReport:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = ""
    engine_why: str = ""  # why that engine ran (kb.engines.why_chosen); empty when no file needed one
    pages_read: int = 0

    def counts(self) -> Counter[Outcome]:
        return Counter(r.status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status in FAILED]

    def extensions(self, status: Outcome) -> Counter[str]:
        """How many files of each extension got `status` (for `unsupported 3 (.docx ×2, .mp3 ×1)`)."""
        return Counter(os.path.splitext(r.rel)[1].lower() or "(none)" for r in self.results if r.status == status)

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _FileInFlight:
    """A file being read: its units wait for the engine, then it is chunked and stored."""

    source: Source  # rel and path in the stored form (kb/paths.py)
    name: str  # rel as the filesystem has it: results and progress events are named by it
    record: SourceRecord
    read: ReadResult
    status: Outcome  # what storing it will be: added or updated
    waiting: int = 0
    failed_units: set[int] = field(default_factory=set)  # id(unit) of units the engine could not read
    fix: str = ""  # the way out of the first unit failure that has one
    checkpoint: Checkpoint | None = None
    keys: dict[int, str] = field(default_factory=dict)  # id(unit) -> checkpoint key
    done: dict[str, str] | None = None  # texts of the checkpoint, read when it is opened (`_checkpointed`)
    windows: list[Unit] = field(default_factory=list)  # a video's units as its windows closed during the read
    streamed: set[int] = field(default_factory=set)  # id(unit) of those queued during the read (`_stream`)
    stream_stopped: bool = False  # a window that is not in memory came: the rest queue once the file is read
    speech_checkpoint: Checkpoint | None = None  # the transcript's blocks (ingest/audio.py)


@dataclass
class _Handed:
    """An engine batch handed over: its units with their requests, and the engine's texts to come piece by piece,
    `ready` in order (each piece: its number of requests, and their texts; none: asked for only when collected,
    through `generate`)."""

    ready: list[tuple[_FileInFlight, Unit, Request]]
    pieces: list[tuple[int, Future[list[str]]]] = field(default_factory=list)


@dataclass
class _Write:
    """A file ready for the store: its file in flight (manifest row, checkpoints), chunks, and its result once
    written."""

    job: _FileInFlight
    chunks: list[Chunk]
    result: FileResult


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Walk:
    """What walking the given paths found: files to read (with their ingest root), and results for the rest."""

    files: list[tuple[Path, Path]] = field(default_factory=list)
    results: list[FileResult] = field(default_factory=list)


def walk(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, ingest root) pairs to read; see `scan` for what is left out and why."""
    return scan(paths).files


def scan(paths: Sequence[Path]) -> Walk:
    """Walk files and folders. A folder gives its supported files; hidden entries, other types and links that
    loop, dangle, lead out of the folder or to a folder are results of their own. A file given by name is read
    whatever its type (the reader says what it is); a given link is followed, as the user named it."""
    found = Walk()
    seen: set[Path] = set()
    for given in paths:
        target, problem = _follow(Path(given))
        if problem:
            found.results.append(problem)
        elif target.is_dir():
            _walk_folder(target, target, found, seen)
        elif target.is_file():
            if target not in seen:
                seen.add(target)
                found.files.append((target, target.parent))
        else:
            found.results.append(_special(Path(given).name))
    return found


def _follow(given: Path, label: str = "") -> tuple[Path, FileResult | None]:
    """A path resolved, or the result (named `label`, else its file name) that says why it cannot be."""
    name = label or given.name or str(given)
    try:
        return given.resolve(strict=True), None
    except (RuntimeError, OSError) as err:
        if isinstance(err, RuntimeError) or err.errno == errno.ELOOP:
            return given, _link_loop(name)
        if os.path.islink(given) or isinstance(err, FileNotFoundError) and os.path.lexists(given):
            return given, _dangling(name, given)
        return given, FileResult(name, Outcome.FAILED, errors=[f"{display(name)}: cannot open: {err.strerror or err}"],
                                 fix="check that it exists and that you may read it")


def _walk_folder(root: Path, folder: Path, found: Walk, seen: set[Path]) -> None:
    extensions = supported_extensions()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        rel = _rel(folder, root) or folder.name
        found.results.append(FileResult(rel, Outcome.FAILED, errors=[f"{rel}: cannot list the folder: {err.strerror}"],
                                        fix="check the folder's permissions (ls -ld, chmod)"))
        return
    for entry in entries:
        path = Path(entry.path)
        rel = _rel(path, root)
        if entry.name.startswith("."):
            kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
            note = f"a hidden {kind} (name starts with '.'): skipped"
            found.results.append(FileResult(rel, Outcome.HIDDEN, notes=[note]))
        elif entry.is_symlink():
            _walk_link(root, path, rel, found, seen, extensions)
        elif entry.is_dir(follow_symlinks=False):
            _walk_folder(root, path, found, seen)
        else:
            _take(root, path, rel, entry.is_file(follow_symlinks=False), found, seen, extensions)


def _walk_link(root: Path, path: Path, rel: str, found: Walk, seen: set[Path], extensions: set[str]) -> None:
    """A link met in a folder: a file inside the root is read (under the link's name); the rest is reported.
    Links to folders are never followed: a folder inside the root is walked at its own place anyway, and
    following them is how a walk loops forever (`d/up -> ..`)."""
    target, problem = _follow(path, rel)
    if problem:
        found.results.append(problem)
    elif not target.is_relative_to(root):
        found.results.append(FileResult(rel, Outcome.LINK, notes=[
            f"a link to {display(str(target))}, outside the folder being ingested: not followed"],
            fix=f"ingest {display(str(target))} itself if you want it"))
    elif target.is_dir():
        where = _rel(target, root) or "."
        if path.parent.is_relative_to(target):
            note = f"a link back to {display(where)}, a folder that contains it (a loop): not followed"
        else:
            note = f"a link to the folder {display(where)}, which is walked at its own place: not followed"
        found.results.append(FileResult(rel, Outcome.LINK, notes=[note]))
    else:
        _take(root, path, rel, target.is_file(), found, seen, extensions)


def _take(root: Path, path: Path, rel: str, regular: bool, found: Walk, seen: set[Path], extensions: set[str]
          ) -> None:
    """The end of a folder walk's way to a file: read it once if it is a regular file of a supported type (a link
    under the link's own name), else say why not."""
    if not regular:
        found.results.append(_special(rel))
    elif path.suffix.lower() not in extensions:
        found.results.append(_unsupported(rel))
    elif path not in seen:
        seen.add(path)
        found.files.append((path, root))


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (a 500-frame GIF must not print 500 numbers)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _rel(path: Path, root: Path) -> str:
    return "" if path == root else path.relative_to(root).as_posix()


def _link_loop(rel: str) -> FileResult:
    return FileResult(rel, Outcome.FAILED, errors=[
        f"{display(rel)}: the link loops (it leads back to itself through other links)"],
        fix="remove the link, or point it at the real file")


def _dangling(rel: str, path: Path) -> FileResult:
    pointee = display(os.readlink(path)) if os.path.islink(path) else "a file that is gone"
    return FileResult(rel, Outcome.FAILED, errors=[
        f"{display(rel)}: a broken link: it points to {pointee}, which does not exist"],
        fix="restore the file it points to, or remove the link")


def _special(rel: str) -> FileResult:
    return FileResult(rel, Outcome.UNSUPPORTED, notes=["not a regular file (a pipe, socket or device): skipped"])


def _unsupported(rel: str) -> FileResult:
    ext = os.path.splitext(rel)[1] or "(no extension)"
    return FileResult(rel, Outcome.UNSUPPORTED, notes=[f"unsupported file type {ext}: skipped"])


def load_workers() -> int:
    """Processes that load pictures ahead of the engine (LOAD_WORKERS)."""
    if LOAD_WORKERS is not None:
        return LOAD_WORKERS
    cores = len(os.sched_getaffinity(0))
    return min(MAX_LOAD_WORKERS, cores - 2) if cores >= 4 else 0


def _loader(unit: Unit, picture_pixels: int = 0) -> Callable[[], Image.Image | VideoClip]:
    """What loads a unit's picture: a video window's frames, or a page or image; a page rendered no larger than
    `picture_pixels` (the engine's budget, 0: none), which cuts rendering, sending it back and resizing it again."""
    if unit.task == "video" and unit.video is not None:
        return unit.video
    assert unit.load_image is not None  # a unit that needs the model has a clip or an image (kb.types.Unit)
    if picture_pixels:
        from ingest.pdf import PageRender  # imported already wherever a page was read

        if isinstance(unit.load_image, PageRender):
            return replace(unit.load_image, max_pixels=picture_pixels)
    return unit.load_image


def _opens_here(loader: object) -> bool:
    """A video window's frames were all kept in memory while sampling (ingest.video.WindowLoader.in_memory)."""
    return bool(getattr(loader, "in_memory", False))


@dataclass
class _Loaded:
    """A unit's picture, or why it could not be loaded. A worker sends this, not the exception: an error's own
    arguments do not survive pickling (InputError's constructor takes others than it keeps)."""

    picture: Image.Image | VideoClip | None = None
    problem: str = ""
    fix: str = ""
    named: bool = False  # the problem is a SeekframeError's message, which names the file
    seconds: float = 0.0  # spent loading it


def load(loader: Callable[[], Image.Image | VideoClip]) -> _Loaded:
    started = time.perf_counter()
    try:
        loaded = _Loaded(loader())
    except SeekframeError as err:  # a decoder limit met only now, when the page or frame is loaded
        loaded = _Loaded(problem=err.message, fix=err.fix, named=True)
    except Exception as err:
        loaded = _Loaded(problem=f"cannot render: {err}")
    loaded.seconds = time.perf_counter() - started
    return loaded


def _load_pickled(blob: bytes) -> _Loaded:
    """In a worker process: load the picture of a pickled loader."""
    return load(pickle.loads(blob))


class _LoadAhead:
    """Pictures of the units queued for the engine, loaded by worker processes in queue order, at most `limit`
    loaded or loading at a time (a page at 200 dpi is ~12 MB; the limit is one engine batch). A loader that
    cannot be pickled, or one left after the workers broke, is loaded on the main thread when it is taken."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.limit = 0  # set from the engine's batch size when the first units are queued
        self.picture_pixels = 0  # the engine's (Engine.picture_pixels), set with the limit
        self._pool: ProcessPoolExecutor | None = None
        self._queued: deque[Unit] = deque()
        self._started: dict[int, Future[_Loaded] | None] = {}  # id(unit) -> its load (None: on the main thread)
        self.wait_s = 0.0  # time the main thread waited for pictures (the engine's next batch waited with it)
        self.load_s = 0.0  # time spent loading them, summed over processes

    def add(self, units: Iterable[Unit], limit: int, picture_pixels: int = 0) -> None:
        self.limit = max(self.limit, limit)
        self.picture_pixels = picture_pixels
        self._queued.extend(units)
        self._top_up()

    def _top_up(self) -> None:
        while self._queued and len(self._started) < self.limit:
            unit = self._queued.popleft()
            self._started[id(unit)] = self._submit(_loader(unit, self.picture_pixels))

    def _submit(self, loader: Callable[[], Image.Image | VideoClip]) -> Future[_Loaded] | None:
        # A window whose frames were kept in memory while sampling opens on the main thread in microseconds: a
        # process would only decode it and send the pixels back.
        if self.workers <= 0 or _opens_here(loader):
            return None
        try:
            blob = pickle.dumps(loader)
        except Exception:  # e.g. a loader defined inside a function: loaded on the main thread
            return None
        if self._pool is None:
            from ingest.pdf import process_pool  # forkserver processes that end with this one

            self._pool = process_pool(self.workers)
        return self._pool.submit(_load_pickled, blob)

    def take(self, unit: Unit) -> _Loaded:
        """The unit's picture (loaded now if no worker has it), and the next queued unit's load started."""
        started = time.perf_counter()
        if id(unit) in self._started:
            future = self._started.pop(id(unit))
        else:  # taken before its turn came (not queued, or beyond the limit)
            self._queued = deque(u for u in self._queued if u is not unit)
            future = None
        self._top_up()
        loaded = self._result(future, unit)
        self.wait_s += time.perf_counter() - started
        self.load_s += loaded.seconds
        return loaded

    def _result(self, future: Future[_Loaded] | None, unit: Unit) -> _Loaded:
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool as err:  # a worker died (killed, or a library crashed on a page)
                log.warning("picture loading processes failed (%s): loading the rest on the main thread", err)
                self.workers = 0
                self._started = {key: None for key in self._started}
        return load(_loader(unit, self.picture_pixels))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._queued.clear()
        self._started.clear()


class Ingestor:
    def __init__(self, settings: Settings, store: Store, engine: Engine | None = None,
                 progress: ProgressFn = no_progress) -> None:
        self.settings = settings
        self.store = store
        self._engine = engine
        self.progress = progress
        self._engine_down: str = ""
        self._video_seconds = [0.0, 0.0]  # read by the engine so far, known in all
        self._speech: SpeechEngine | None = None
        self._speech_down: EngineError | None = None  # why the speech engine cannot run, once known
        self._writes: list[_Write] = []  # files read and chunked, not yet written (see _flush)
        self._ahead = _LoadAhead(0)  # pictures loaded ahead of the engine: one per run (see run)
        self._loading: Future[Engine] | None = None  # the engine loading on a thread of its own (`_load_early`)
        self._warming: Future[None] | None = None  # its first bulk call's one-time work (`prepare_to_ingest`)
        self._in_flight: deque[_Handed] = deque()  # engine batches handed over, not yet collected (`_enrich`)
        self._pending: list[tuple[_FileInFlight, Unit]] = []  # units queued for the engine, not yet handed over

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            # Loading since the plan (`_load_early`): wait for it. A failed load raises its error here, where a load
            # on this thread would have, and a later use loads again, as it would have.
            loading, self._loading = self._loading, None
            self._engine = loading.result() if loading is not None else load_engine(self.settings)
        return self._engine

    def _load_early(self, jobs: list[_FileInFlight]) -> None:
        """Start loading the engine when the plan shows a file that certainly needs it (a video or an image). A
        PDF may hold text layers only: it starts the load once read, if a page needs the engine (`_process`), as a
        folder of text and born-digital files never loads one."""
        kinds = kinds_by_extension()
        planned = {kinds.get(Path(job.name).suffix.lower()) for job in jobs}
        if planned & {"video", "image"}:
            self._start_loading(video="video" in planned, pages=bool(planned & {"image", "pdf"}))

    def _start_loading(self, video: bool, pages: bool) -> None:
        """Load the engine on a thread of its own, and where it can, warm it for bulk calls (`prepare_to_ingest`:
        38-45 s of a fresh process's first call on an H200, docs/benchmarks.md runs H and I): both then overlap
        reading the files, sampling the videos and loading the pictures instead of following them."""
        if self._engine is not None or self._loading is not None:
            return  # given, or loading already
        if type(self).engine is not Ingestor.engine:  # brought its own way (the job worker's, loaded once and kept):
            _ = self.engine  # taken now, so a video's windows can go to it while the video is sampled (`_stream`)
            return
        self._loading = Future()
        threading.Thread(target=self._load_into, args=(self._loading, video, pages), daemon=True,
                         name="seekframe-ingest-engine").start()

    def _load_into(self, loading: Future[Engine], video: bool, pages: bool) -> None:
        try:
            engine = load_engine(self.settings)
        except BaseException as err:  # raised where the engine is first used (the `engine` property)
            loading.set_exception(err)
            return
        try:  # set before the load is done: `_wait_for_warm_up` waits for the load, then for this
            prepare = getattr(engine, "prepare_to_ingest", None)  # only engines with one-time GPU work have it
            if callable(prepare):
                self._warming = prepare(video=video, pages=pages)
        finally:
            loading.set_result(engine)

    def _engine_ready(self) -> bool:
        """The engine is loaded: asking for it now neither waits nor raises (a failed load raises where it did)."""
        if self._engine is not None:
            return True
        return self._loading is not None and self._loading.done() and self._loading.exception() is None

    def _wait_for_warm_up(self) -> None:
        """Before other GPU work on this thread (the embedder, the speech engine): the engine's warm-up records
        CUDA graphs, a capture that another thread's allocations and copies break (and fail with it)."""
        if self._loading is not None:
            wait([self._loading])
        if self._warming is not None:
            wait([self._warming])

    @property
    def batch_size(self) -> int:
        return batch_size_for(self.settings, self.engine)

    # the run ---------------------------------------------------------------------------------------------
    def run(self, paths: Sequence[Path], prune: bool = False, force: bool = False) -> IngestReport:
        """Ingest `paths`; `force` reads unchanged files again (a new engine or model, a fixed reader)."""
        started = time.monotonic()
        report = IngestReport()
        found = scan(paths)
        report.results += found.results
        files = found.files
        jobs: list[_FileInFlight] = []
        for n, (path, root) in enumerate(files, 1):
            self.progress(Progress(Stage.PLAN, n, len(files), "files", path.name))
            job = self._plan(path, root, report, force)
            if job:
                jobs.append(job)
        from ingest.pdf import reader_processes  # late: PyMuPDF is a heavy import

        self._load_early(jobs)
        self._ahead = _LoadAhead(load_workers())
        with reader_processes():  # started once for the run's long PDFs and videos (a worker's: kept between jobs)
            try:
                self._process(jobs, report)
            finally:
                self._ahead.close()
                self._let_in_flight_go()
        if prune:
            self._prune(paths, report)
        report.seconds = time.monotonic() - started
        report.engine = f"{self._engine.name} ({self._engine.model})" if self._engine else "none needed"
        report.engine_why = why_chosen(self._engine) if self._engine else ""
        if self._speech:
            report.engine += f"; speech: {self._speech.name} ({self._speech.model})"
        return report

    def _plan(self, path: Path, root: Path, report: IngestReport, force: bool = False) -> _FileInFlight | None:
        rel = path.relative_to(root).as_posix() if path != root else path.name
        if not storable(str(path)):
            report.results.append(FileResult(rel, Outcome.FAILED, errors=[
                f"{display(rel)}: its name holds private-use characters (U+10FF80..U+10FFFF) that Seekframe uses "
                "to store bytes that are not UTF-8"], fix="rename the file"))
            return None
        try:
            sha = sha256_of(path)
        except OSError as err:
            report.results.append(FileResult(rel, Outcome.FAILED, errors=[f"{display(rel)}: cannot read the file: "
                                                                    f"{err.strerror or err}"],
                                             fix="check the file's permissions (ls -l, chmod)"))
            return None
        source = Source(rel=to_stored(rel), path=to_stored(str(path)), sha256=sha)
        known = self.store.manifest.get(source.path)
        if known and known.sha256 == sha and known.status in (SourceStatus.OK, SourceStatus.EMPTY) and not force:
            # Stored: a checkpoint of it is left only by a run killed between the write and its cleanup.
            Checkpoint(self.settings.home, sha, "", "").clear()
            report.results.append(FileResult(rel, Outcome.SKIPPED, known.chunks))
            return None
        twin = next((r for r in self.store.manifest.by_sha(sha) if r.path != source.path), None)
        if twin and not force:
            report.results.append(self._copy(twin, source, rel, path))
            return None
        record = SourceRecord(path=source.path, rel=source.rel, sha256=sha, size=path.stat().st_size, kind="",
                              status=SourceStatus.OK, chunks=0, engine="", model="")
        status = Outcome.UPDATED if known else Outcome.ADDED
        return _FileInFlight(source, rel, record, ReadResult(), status=status)

    def _copy(self, twin: SourceRecord, source: Source, rel: str, path: Path) -> FileResult:
        """Same content under a new path: reuse the twin's text and vectors; a rename removes the old path."""
        chunks, vectors = self.store.chunks_of(twin.path, with_embeddings=True)
        for n, c in enumerate(chunks):
            c.id, c.rel, c.path, c.position = chunk_id(source.path, source.sha256, n), source.rel, source.path, n
        record = SourceRecord(**{**twin.to_json(), "path": source.path, "rel": source.rel, "size": path.stat().st_size,
                                 "ingested_at": time.time()})
        self.store.replace_source(record, chunks, vectors)
        renamed = not os.path.lexists(fs_path(twin.path))
        if renamed:
            self.store.delete_source(twin.path)
        return FileResult(rel, Outcome.RENAMED if renamed else Outcome.COPIED, len(chunks))

    def _process(self, jobs: list[_FileInFlight], report: IngestReport) -> None:
        open_jobs: list[_FileInFlight] = []
        for n, job in enumerate(jobs, 1):
            self.progress(Progress(Stage.READ, n, len(jobs), "files", job.name))
            left_out = self._read(job)
            if left_out:
                report.results.append(left_out)
                self._pending = [(j, u) for j, u in self._pending if j is not job]  # windows queued while read
                continue
            if not self._engine_down and any(u.needs_model for u in job.read.units):
                self._start_loading(video=job.read.kind == FileKind.VIDEO, pages=True)  # a scanned PDF's pages
            rest = {id(u) for u in self._visual_units(job)} - job.streamed
            visual = self._resume(job, [(n, u) for n, u in enumerate(job.read.units) if id(u) in rest])
            job.waiting += len(visual)
            self._pending += [(job, u) for u in visual]
            if visual:
                self._ahead.add(visual, self.batch_size, picture_pixels(self.engine))
            open_jobs.append(job)
            # With pictures loaded ahead, a batch goes to the engine once the next one is read too: its pictures
            # load while the engine reads this one.
            ahead = self.batch_size if self._pending and self._ahead.workers else 0
            while self._pending and len(self._pending) >= self.batch_size + ahead:
                self._enrich(self._pending[:self.batch_size], report)
                del self._pending[:self.batch_size]
                open_jobs = self._finish_ready(open_jobs, report)
            open_jobs = self._finish_ready(open_jobs, report)  # a file with nothing for the engine is stored now
        size = self.batch_size if self._pending else 1  # asking the batch size loads the engine: only when needed
        for start in range(0, len(self._pending), size):
            self._enrich(self._pending[start:start + size], report)
        self._pending.clear()
        while self._in_flight:
            self._collect_oldest(report)
        self._finish_ready(open_jobs, report)
        self._flush(report)

    def _read(self, job: _FileInFlight) -> FileResult | None:
        """Read the file (a video's windows go to the engine as they close: `_stream`) and transcribe its sound;
        the file's result when it fails or is left out."""
        try:
            path = fs_path(job.source.path)
            job.read = read_file(path, job.source, self.settings, on_unit=partial(self._stream, job))
            return self._transcribe(job)
        except SeekframeError as err:
            return FileResult(job.name, Outcome.FAILED, errors=[str(err)], fix=err.fix, cause=err)
        except OSError as err:  # gone or locked since the walk
            return FileResult(job.name, Outcome.FAILED, errors=[
                f"{display(job.name)}: cannot open the file: {err.strerror or err}"],
                fix="check that it still exists and that you may read it, then run the ingest again")
        except Exception as err:  # a reader bug or library crash on one odd file must not stop the run
            log.exception("reading %s failed", job.source.rel)
            return FileResult(job.name, Outcome.FAILED, errors=[f"{display(job.name)}: cannot read: {err!r}"])

    def _stream(self, job: _FileInFlight, unit: Unit) -> None:
        """A video's window that closed while the rest of the file is still sampled: queued for the engine now,
        and what is queued handed over in pieces of the engine's rows, none waited for. So the engine reads the
        first windows of a long recording while the later ones are sampled (the hour of video was sampled for
        ~19 s on an H200 before the engine saw a window: docs/benchmarks.md, run J). Only where the engine is
        loaded and takes batches ahead (`submitter`), and while the windows' frames are in memory (one opens in
        microseconds on this thread); the other windows queue once the file is read, as every other unit does."""
        job.windows.append(unit)
        if job.stream_stopped or not self._engine_ready():
            return  # the windows wait in `job.windows` for the engine's load, or for the end of the read
        if self._engine_down or submitter(self.engine) is None:
            job.stream_stopped = True
            return
        new: list[tuple[int, Unit]] = []  # windows not yet queued, with their places in the file
        for index in range(len(job.streamed), len(job.windows)):
            if not _opens_here(job.windows[index].video):
                job.stream_stopped = True
                break
            new.append((index, job.windows[index]))
        job.streamed.update(id(window) for _, window in new)
        waiting = self._resume(job, new)
        job.waiting += len(waiting)
        self._pending += [(job, window) for window in waiting]
        piece = STREAM_PIECE or piece_size(self.engine, self.settings)
        while len(self._pending) >= piece:
            self._in_flight.append(self._hand_over(self._pending[:piece]))
            del self._pending[:piece]

    # speech: a file's sound track, block by block, before its visual units queue for the engine -----------------
    def speech_engine(self) -> SpeechEngine:
        """The speech engine, loaded on first use; EngineError (kept for the rest of the run) when it cannot be."""
        if self._speech is None and self._speech_down is None:
            try:
                self._speech = SpeechEngine(self.settings)
            except EngineError as err:
                self._speech_down = err
                if self.settings.asr == "auto":
                    log.warning("speech is left out: %s", err)
        if self._speech is None:
            assert self._speech_down is not None  # set whenever loading failed
            raise self._speech_down
        return self._speech

    def _transcribe(self, job: _FileInFlight) -> FileResult | None:
        """Words said in the file: an audio file's units, or laid on a video's windows. A result when the file is
        left out: an audio file with speech off, or with no speech model under KB_ASR=auto."""
        track = job.read.audio
        if self.settings.asr == "off" or track is None:
            if job.read.kind != FileKind.AUDIO:
                return None
            return FileResult(job.name, Outcome.UNSUPPORTED, fix="set KB_ASR=auto to transcribe audio files",
                              notes=job.read.notes + [said("an audio file, and speech is off (KB_ASR=off): skipped",
                                                                "said.audio.asr_off")])
        self._wait_for_warm_up()
        try:
            engine = self.speech_engine()
        except EngineError as err:
            if self.settings.asr == "on":
                raise
            if job.read.kind != FileKind.AUDIO:
                return None  # a video is still read for what it shows
            return FileResult(job.name, Outcome.UNSUPPORTED, fix=err.fix,
                              notes=job.read.notes + [said(f"an audio file: {err.message}: skipped",
                                                                "said.audio.no_engine", problem=err.message)])
        parts = self._transcript(job, engine)
        words = [w for part in parts for w in part.words]
        language = main_language(parts)
        if job.read.kind == FileKind.AUDIO:
            job.read.units = speech_units(job.source, words, language)
        else:
            lay_on_windows(job.read.units, words, language)
        return None

    def _transcript(self, job: _FileInFlight, engine: SpeechEngine) -> list[Transcript]:
        """The track's blocks, each from the checkpoint of an interrupted run or else from the engine."""
        track = job.read.audio
        assert track is not None  # _transcribe asks only for files with a sound track
        job.speech_checkpoint = Checkpoint(self.settings.home, job.source.sha256, engine.name, engine.model)
        done = job.speech_checkpoint.load()
        parts: list[Transcript] = []
        try:
            for n, (offset, samples) in enumerate(blocks(track, job.source.rel)):
                key = f"speech:{n}:{offset:.3f}"
                if key in done:
                    parts.append(Transcript.from_json(json.loads(done[key])))
                else:
                    with self._beside_engine():
                        parts.append(engine.transcribe(samples, offset))
                    job.speech_checkpoint.add(key, json.dumps(parts[-1].to_json(), ensure_ascii=False))
                heard = int(offset + samples.size / SAMPLE_RATE)
                self.progress(Progress(Stage.SPEECH, heard, max(int(track.duration), heard), "s", job.name))
        except SeekframeError as err:  # damaged past some point: what was heard before it is kept
            job.read.errors.append(f"speech: {err.message}")
            job.fix = job.fix or err.fix
        except Exception as err:
            log.exception("transcribing %s failed", job.source.rel)
            job.read.errors.append(f"speech: the speech engine failed: {err}")
        return parts

    def _visual_units(self, job: _FileInFlight) -> list[Unit]:
        units = [u for u in job.read.units if u.needs_model]
        if units and (self.settings.ocr_first or not self._engine_down and not self.engine.can_caption):
            # OCR-first (the user's choice: faster) and the ocr engine read text only: captions are not an error.
            job.read.units = [u for u in job.read.units if u.task != "caption"]
            units = [u for u in units if u.task != "caption"]
        return units

    def _resume(self, job: _FileInFlight, visual: list[tuple[int, Unit]]) -> list[Unit]:
        """Fill in units an interrupted run already read (each unit with its place in the file, which its
        checkpoint key holds); return those still to read."""
        if not visual or self._engine_down:
            return [unit for _, unit in visual]
        done = self._checkpointed(job)
        for index, unit in visual:
            job.keys[id(unit)] = unit_key(index, unit)
            unit.text = done.get(job.keys[id(unit)])
            self._count_video(unit, finished=unit.text is not None)
        return [unit for _, unit in visual if unit.text is None]

    def _checkpointed(self, job: _FileInFlight) -> dict[str, str]:
        """The texts an interrupted run kept of the file, its checkpoint opened (and read) on first use."""
        if job.checkpoint is None or job.done is None:
            job.checkpoint = Checkpoint(self.settings.home, job.source.sha256, self.engine.name, self.engine.model)
            job.done = job.checkpoint.load()
        return job.done

    def _count_video(self, unit: Unit, finished: bool) -> None:
        """Minutes of video known and already read, for progress with an ETA on long recordings."""
        if unit.t_start is not None:
            length = (unit.t_end or unit.t_start) - unit.t_start
            self._video_seconds[1] += length
            self._video_seconds[0] += length if finished else 0.0

    # enrich: one engine call for a batch of units from any number of files ------------------------------
    def _enrich(self, batch: list[tuple[_FileInFlight, Unit]], report: IngestReport) -> None:
        """Hand a batch to the engine. An engine that takes the next batch while one decodes (`submitter`) gets it
        before the batch handed earlier is collected: two in flight, the new one's requests join the rows as the
        earlier one's free, and a run drains the engine once, at its end, not after every batch. Batches are
        collected (texts kept, checkpointed, counted) in the order they were handed over."""
        self._flush(report)  # files read so far are written before the engine's (slow) batch: none waits on it
        self._in_flight.append(self._hand_over(batch))
        while len(self._in_flight) > (1 if submitter(self.engine) else 0):
            self._collect_oldest(report)

    def _collect_oldest(self, report: IngestReport) -> None:
        """Collect the batch handed over first; it stays in flight until collected, so a run cut short while
        waiting for it cancels it too."""
        self._collect(self._in_flight[0], report)
        self._in_flight.popleft()

    def _let_in_flight_go(self) -> None:
        """A run cut short (a job cancelled, Ctrl-C, an error): what it had in flight is not kept (nor
        checkpointed), and the engine is told to stop decoding it (a cancelled piece leaves its decode loop)."""
        for handed in self._in_flight:
            for _, texts in handed.pieces:
                texts.cancel()
        self._in_flight.clear()

    def _hand_over(self, batch: list[tuple[_FileInFlight, Unit]]) -> _Handed:
        """The batch's pictures taken from the loaders (a unit whose picture fails fails now), and its requests
        submitted where the engine takes them ahead: a piece (`piece_size`) as soon as its pictures are loaded, so an
        idle engine starts on the first rows while the rest of the batch still loads (a fresh process on the H200
        waited 7-10 s for its first batch's pictures: docs/benchmarks.md, runs J and L)."""
        handed = _Handed([])
        submit = None if self._engine_down else submitter(self.engine)
        submitted, piece = 0, piece_size(self.engine, self.settings)
        for job, unit in batch:
            loaded = self._ahead.take(unit)
            if loaded.picture is not None:
                handed.ready.append((job, unit, self._request(unit, loaded.picture)))
            elif loaded.named:  # a decoder limit met only now, when the page or frame is loaded
                job.fix = job.fix or loaded.fix
                self._fail_unit(job, unit, loaded.problem, named=True)
            else:
                self._fail_unit(job, unit, loaded.problem)
            if submit is not None and len(handed.ready) - submitted >= piece:
                submitted = self._submit_piece(submit, handed, submitted)
        if submit is not None and len(handed.ready) > submitted:
            self._submit_piece(submit, handed, submitted)
        return handed

    @staticmethod
    def _submit_piece(submit: Callable[[Sequence[Request]], Future[list[str]]], handed: _Handed,
                      start: int) -> int:
        """Submit the handed requests from `start` on as one piece; where the next piece starts."""
        requests = [r for _, _, r in handed.ready[start:]]
        handed.pieces.append((len(requests), submit(requests)))
        return start + len(requests)

    def _collect(self, handed: _Handed, report: IngestReport) -> None:
        """A handed batch's texts, kept: each unit's text, its checkpoint entry, its file's count of units waiting."""
        ready = handed.ready
        texts: list[str | None] = []
        pieces: list[tuple[int, Future[list[str]] | None]] = [*handed.pieces] or [(len(ready), None)]
        for size, piece in pieces:
            part = ready[len(texts):len(texts) + size]
            texts += self._generate([r for _, _, r in part], [(j, u) for j, u, _ in part], piece)
        for (job, unit, _), text in zip(ready, texts):
            if text is not None:
                unit.text = trim_repetition(text.strip())
                job.waiting -= 1
                assert job.checkpoint is not None  # _resume opened it before any unit was queued
                job.checkpoint.add(job.keys[id(unit)], unit.text)
            if unit.t_start is not None:
                self._video_seconds[0] += (unit.t_end or unit.t_start) - unit.t_start
        report.pages_read += len(ready)
        self.progress(Progress(Stage.MODEL, report.pages_read, 0, "pages", self.engine.name))
        if self._video_seconds[1]:
            done, total = self._video_seconds
            self.progress(Progress(Stage.VIDEO, int(done), int(total), "s", "video read by the engine"))

    def _beside_engine(self) -> ContextManager[object]:
        """GPU work on this thread while engine batches decode on the engine's own (the embedder, the speech
        engine): kept apart from its recording of a decode step (`recording`: a CUDA graph capture fails when
        another thread allocates or launches on the GPU)."""
        lock = getattr(self._engine, "recording", None) if self._in_flight else None
        return lock if lock is not None else nullcontext()

    def _request(self, unit: Unit, picture: Image.Image | VideoClip) -> Request:
        """What the engine is asked about a unit, its picture loaded (a page or image, or a window's frames)."""
        if isinstance(picture, VideoClip):
            return Request(task="video", prompt=PROMPTS[("video", unit.modality)], video=picture,
                           max_new_tokens=self.settings.max_video_tokens)
        task = unit.task or "ocr"
        limit = self.settings.max_caption_tokens if task == "caption" else self.settings.max_page_tokens
        return Request(task=task, prompt=PROMPTS[(task, unit.modality)], images=[picture], max_new_tokens=limit)

    def _generate(self, requests: list[Request], owners: list[tuple[_FileInFlight, Unit]],
                  submitted: Future[list[str]] | None = None) -> list[str | None]:
        """Texts for the batch (those of its `submitted` future where it was handed over ahead); on failure each
        request is retried alone so one bad page fails alone."""
        if self._engine_down:
            for job, unit in owners:
                self._fail_unit(job, unit, self._engine_down)
            return [None] * len(requests)
        try:
            return list(submitted.result() if submitted is not None else self.engine.generate(requests))
        except EngineUnavailable as err:
            self._engine_down = str(err)
        except Exception as err:
            if len(requests) > 1:
                log.warning("an engine batch of %d failed (%r): each of its requests again alone", len(requests), err)
                return self._each_alone(requests, owners)
            self._fail_unit(*owners[0], f"the engine failed: {err}")
            return [None]
        return self._generate(requests, owners)

    def _each_alone(self, requests: list[Request], owners: list[tuple[_FileInFlight, Unit]]) -> list[str | None]:
        """A failed batch's requests, each alone (so one bad page fails alone); handed over all at once where the
        engine takes batches ahead, so they decode side by side: one after another, 16 video windows of a failed
        batch took 46 s on an H200 (docs/benchmarks.md, run M)."""
        submit = None if self._engine_down else submitter(self.engine)
        alone = [submit([r]) if submit is not None else None for r in requests]
        return [self._generate([r], [o], texts)[0] for r, o, texts in zip(requests, owners, alone)]

    def _fail_unit(self, job: _FileInFlight, unit: Unit, reason: str, named: bool = False) -> None:
        """Record a unit the engine could not read; `named`: the reason already names the file (InputError)."""
        where = f"page {unit.page}: " if unit.page else ""
        job.read.errors.append(f"{where}{reason}" if named else f"{where}{unit.task}: {reason}")
        job.failed_units.add(id(unit))
        unit.text = ""
        job.waiting -= 1

    # store: files are written in groups (one embedding call, one lexical commit), each still its own commit ---
    def _finish_ready(self, jobs: list[_FileInFlight], report: IngestReport) -> list[_FileInFlight]:
        still_open = []
        for job in jobs:
            if job.waiting > 0:
                still_open.append(job)
            else:
                prepared = self._prepare(job)
                if isinstance(prepared, FileResult):
                    report.results.append(prepared)
                else:
                    self._writes.append(prepared)
        if sum(len(w.chunks) for w in self._writes) >= STORE_BATCH_CHUNKS or len(self._writes) >= STORE_BATCH_FILES:
            self._flush(report)
        return still_open

    def _prepare(self, job: _FileInFlight) -> _Write | FileResult:
        """A read file's chunks and manifest row, ready to write; or its result when there is nothing to write."""
        engine = self._engine.name if self._engine else "none"
        model = self._engine.model if self._engine else ""
        if job.read.kind == FileKind.AUDIO and self._speech:  # an audio file is read by the speech engine alone
            engine, model = self._speech.name, self._speech.model
        chunks = make_chunks(job.read.units, engine, model, self.settings.chunk_chars)
        for chunk in chunks:
            if chunk.modality == Modality.SPEECH and self._speech:  # an audio file's passages: by the speech engine
                chunk.engine, chunk.model = self._speech.name, self._speech.model
        errors = list(dict.fromkeys(job.read.errors))  # OCR and caption of one bad image fail alike
        notes = job.read.notes + self._blank_pages(job)
        if errors and not chunks:
            return FileResult(job.name, Outcome.FAILED, errors=errors, notes=notes, fix=job.fix)
        # Read without errors and nothing readable on it: stored (so it is not read again), but said so.
        status = SourceStatus.PARTIAL if errors else SourceStatus.EMPTY if not chunks else SourceStatus.OK
        kind = job.read.kind if job.read.kind in ("video", "audio") else ""
        if status == SourceStatus.EMPTY:
            notes = [n for n in notes if "no text found" not in n] + [NO_TEXT[kind]]
        record = job.record
        record.kind, record.pages, record.duration = job.read.kind or "", job.read.pages, job.read.duration
        record.engine, record.model, record.errors = engine, model, errors
        record.status, record.ingested_at = status, time.time()
        job.read.units = []  # the chunks hold the text now; files waiting to be written keep less
        shown = Outcome(status) if status != SourceStatus.OK else job.status
        fix = NO_TEXT_FIX[kind] if status == SourceStatus.EMPTY else job.fix
        return _Write(job, chunks, FileResult(job.name, shown, len(chunks), errors, notes, fix))

    def _flush(self, report: IngestReport) -> None:
        """Write the files read so far: their chunks embedded together (sorted by length across files), then one
        `Store.replace_sources`. If that fails, each file is written alone, so one bad file fails alone."""
        writes, self._writes = self._writes, []
        if not writes:
            return
        for write in writes:
            self.progress(Progress(Stage.STORE, len(write.chunks), len(write.chunks), "chunks", write.job.name))
        try:
            self._write(writes)
        except Exception as err:
            if len(writes) > 1:
                for write in writes:
                    self._writes = [write]
                    self._flush(report)
                return
            log.exception("storing %s failed", writes[0].job.source.rel)
            failed = writes[0].result
            report.results.append(FileResult(failed.rel, Outcome.FAILED, notes=failed.notes,
                                             errors=[*failed.errors, f"cannot store: {err}"]))
            return
        for write in writes:
            for checkpoint in (write.job.checkpoint, write.job.speech_checkpoint):
                if checkpoint:
                    checkpoint.clear()
            report.results.append(write.result)

    def _write(self, writes: list[_Write]) -> None:
        self._wait_for_warm_up()
        texts = [c.text for w in writes for c in w.chunks]
        with self._beside_engine():
            vectors = iter(self.store.embedder.embed_documents(texts) if texts else [])
        self.store.replace_sources([(w.job.record, w.chunks, [next(vectors) for _ in w.chunks]) for w in writes])

    @staticmethod
    def _blank_pages(job: _FileInFlight) -> list[str]:
        """`no text found on pages 2, 5`: pages or frames the engine read without error and found nothing on."""
        blank = sorted({u.page for u in job.read.units if u.task == "ocr" and u.page is not None
                        and not (u.text or "").strip() and id(u) not in job.failed_units})
        readable = {u.page for u in job.read.units if (u.text or "").strip()}
        blank = [p for p in blank if p not in readable]
        if not blank:
            return []
        pages = _ranges(blank)
        return [said(f"no text found on page{'s' if len(blank) > 1 else ''} {pages}",
                     "said.blank_pages" if len(blank) > 1 else "said.blank_page", pages=pages)]

    def _prune(self, paths: Iterable[Path], report: IngestReport) -> None:
        roots = [Path(p).resolve() for p in paths if Path(p).is_dir()]
        for record in self.store.manifest.all():
            path = fs_path(record.path)
            if not path.exists() and any(path.is_relative_to(r) for r in roots):
                self.store.delete_source(record.path)
                report.results.append(FileResult(fs_path(record.rel).as_posix(), Outcome.PRUNED, record.chunks))
