"""The nouns that travel through Seekframe (Request to an engine, Unit from a reader, Chunk to the store, Hit from
a search) and the vocabularies they use (StrEnums whose values are the stored strings)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Callable, Literal

from PIL import Image

from kb.paths import display

Task = Literal["ocr", "caption", "video", "answer", "outline"]


# Vocabularies. Each is a StrEnum: its members are the very strings stored in Chroma, the manifest and the job
# table, so knowledge bases and job tables written before these types read unchanged.
class Modality(StrEnum):
    """What a chunk holds; the app's filters group them into documents / images / video / audio."""

    PDF_TEXT = "pdf_text"
    PDF_OCR = "pdf_ocr"
    PDF_FIGURE = "pdf_figure"
    IMAGE_OCR = "image_ocr"
    IMAGE_CAPTION = "image_caption"
    VIDEO_SEGMENT = "video_segment"
    TEXT = "text"
    SPEECH = "speech"


class FileKind(StrEnum):
    """What a source is, as its reader read it (`ReadResult.kind`, the manifest's `kind`)."""

    PDF = "pdf"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"


class Outcome(StrEnum):
    """What an ingest run did with one file (`FileResult.status`, a job file's `result`)."""

    ADDED = "added"
    UPDATED = "updated"
    COPIED = "copied"  # same content as a stored file: its text and vectors reused
    RENAMED = "renamed"
    SKIPPED = "skipped"  # unchanged since the last ingest
    PARTIAL = "partial"  # stored, but some pages or windows failed
    EMPTY = "empty"  # read without errors, nothing readable in it
    FAILED = "failed"
    PRUNED = "pruned"  # gone from disk, removed from the knowledge base
    UNSUPPORTED = "unsupported"
    HIDDEN = "hidden"
    LINK = "link"  # a link a folder walk does not follow


class SourceStatus(StrEnum):
    """How a stored source was read (the manifest's `status`)."""

    OK = "ok"
    PARTIAL = "partial"  # some pages or windows could not be read
    EMPTY = "empty"  # read without errors, nothing readable in it


class JobState(StrEnum):
    """Where an ingest job stands (ingest/jobs.py)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FileState(StrEnum):
    """Where one file of an ingest job stands: waiting, the step it is in, or how it ended."""

    QUEUED = "queued"
    READING = "reading"
    OCR = "OCR"
    CAPTIONING = "captioning"
    VIDEO = "video"
    TRANSCRIBING = "transcribing"
    EMBEDDING = "embedding"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self in (FileState.DONE, FileState.FAILED, FileState.CANCELLED, FileState.SKIPPED)


class Stage(StrEnum):
    """What a `Progress` report is about."""

    PLAN = "plan"  # walking and hashing (files)
    READ = "read"  # a file opened by its reader (files)
    SPEECH = "speech"  # seconds of a file's sound transcribed
    MODEL = "model"  # pages sent to the engine so far
    VIDEO = "video"  # seconds of video read by the engine, of all known
    STORE = "store"  # a file's chunks written (chunks)


@dataclass
class VideoClip:
    """Frames already sampled from a video, with their true place in the source file.

    `frame_indices` are absolute indices into the source at `fps`, so a window deep into a long video
    still gets the right `<t seconds>` stamps from the model's processor.
    """

    frames: list[Image.Image]
    frame_indices: list[int]
    fps: float
    total_frames: int

    @property
    def timestamps(self) -> list[float]:
        return [i / self.fps for i in self.frame_indices]


@dataclass
class Request:
    """One thing to ask an engine: a prompt, optional images and an optional video clip."""

    task: Task
    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    video: VideoClip | None = None
    system: str = ""
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy; above: sampling (answers only, from the user's settings)
    top_p: float = 1.0
    # The prior conversation as (role, text) pairs, for follow-up questions.
    history: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Source:
    """Where a file came from: `rel` relative to its ingest root (display) and `path` absolute (open it, ids)."""

    rel: str
    path: str
    sha256: str


@dataclass
class Unit:
    """What a format reader yields: text that needs no model, or a visual thing that needs one.

    Exactly one of `text` / `load_image` / `video` is the payload. Images load lazily so a batch
    holds only the pages it is reading.
    """

    source: Source
    modality: Modality
    page: int | None = None
    text: str | None = None
    load_image: Callable[[], Image.Image] | None = None
    video: Callable[[], VideoClip] | None = None
    task: Task | None = None
    t_start: float | None = None
    t_end: float | None = None
    keyframe: str | None = None
    # Where the unit sits in its document ("Title › Section"): its chunks carry it, for search (ingest/chunk.py).
    context: str | None = None
    # What was said during this video window (ingest/audio.py), stored with what the window shows, and the
    # language the speech engine heard in the file.
    speech: str = ""
    language: str = ""

    @property
    def needs_model(self) -> bool:
        return self.text is None


# Everywhere in Seekframe `path` is a file's absolute path and `rel` its path relative to its ingest root.
# Chroma and the lexical index store them under their first names: `source` and `source_abs`.
_STORED_NAMES = {"rel": "source", "path": "source_abs"}
_FIELD_NAMES = {stored: name for name, stored in _STORED_NAMES.items()}


@dataclass
class Chunk:
    """A passage of a source, as stored and as found: its text and where in the file it is."""

    id: str
    text: str
    rel: str
    path: str
    sha256: str
    modality: Modality
    page: int | None = None
    t_start: float | None = None
    t_end: float | None = None
    keyframe: str | None = None
    engine: str = ""
    model: str = ""
    position: int = 0
    language: str | None = None  # of the speech in it (Whisper's code: en, zh, ...)

    def metadata(self) -> dict[str, Any]:
        """Chroma metadata: scalars only, None dropped (Chroma rejects None values), under the stored names."""
        meta = asdict(self)
        meta.pop("id")
        meta.pop("text")
        # Vocabulary members go in as their plain strings: the indexes' native bindings want a str, not a subclass.
        return {_STORED_NAMES.get(k, k): str(v) if isinstance(v, StrEnum) else v
                for k, v in meta.items() if v is not None}

    @classmethod
    def from_stored(cls, cid: str, text: str, meta: dict[str, Any]) -> Chunk:
        """The chunk that `metadata` stored (the one mapper from stored rows, for both indexes)."""
        fields = {_FIELD_NAMES.get(k, k): v for k, v in meta.items()}
        known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__ and k not in ("id", "text")}
        known["position"] = int(known.get("position", 0))
        known["modality"] = Modality(known["modality"])
        return cls(id=cid, text=text, **known)

    @property
    def where(self) -> str:
        """Human citation label: `file.pdf p. 3` or `clip.mp4 01:05–01:20` (undecodable bytes shown as U+FFFD)."""
        name = display(self.rel)
        if self.t_start is not None:
            return f"{name} {format_clock(self.t_start)}–{format_clock(self.t_end or self.t_start)}"
        if self.page is not None:
            return f"{name} p. {self.page}"
        return name


# What a hit shows as JSON (answers, `kb search --json`; `source` is the `rel`).
HIT_JSON = ("id", "text", "score", "source", "page", "t_start", "t_end", "modality", "keyframe")


@dataclass
class Hit:
    """A chunk that a search found, and how well it matched (higher is better)."""

    chunk: Chunk
    score: float

    @property
    def where(self) -> str:
        return self.chunk.where

    def to_record(self) -> dict[str, Any]:
        """All of it, flat, under the stored names: what the answer cache and conversations keep."""
        chunk = asdict(self.chunk)
        return {"id": chunk.pop("id"), "text": chunk.pop("text"), "score": self.score,
                **{_STORED_NAMES.get(k, k): v for k, v in chunk.items()}}

    def to_json(self) -> dict[str, Any]:
        record = self.to_record()
        return {name: record[name] for name in HIT_JSON}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Hit:
        """A hit that `to_record` (or an older version's flat hit) wrote."""
        meta = {k: v for k, v in data.items() if k not in ("id", "text", "score")}
        meta.setdefault("source_abs", "")
        meta.setdefault("sha256", "")
        meta["modality"] = meta.get("modality") or ""
        return cls(Chunk.from_stored(data["id"], data["text"], meta), float(data["score"]))


def format_clock(seconds: float, hours: bool = False) -> str:
    """`01:05`, or `1:02:03` past an hour; `hours`: always `HH:MM:SS` (outlines, where lines align)."""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    if hours:
        return f"{h:02d}:{m:02d}:{s:02d}"
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class Progress:
    """One progress report: the CLI draws a bar from it, the app a st.progress."""

    stage: Stage
    done: int
    total: int
    unit: str = "files"
    detail: str = ""


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    return None
