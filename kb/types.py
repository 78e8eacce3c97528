"""The nouns that travel through Seekframe: Request (to an engine), Unit (from a reader), Chunk (to the store), Hit."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from PIL import Image

from kb.paths import display

Task = Literal["ocr", "caption", "video", "answer", "outline"]
# Modalities a chunk can have; the app's filters group them into documents / images / video.
MODALITIES = ("pdf_text", "pdf_ocr", "pdf_figure", "image_ocr", "image_caption", "video_segment", "text",
              "speech")


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
    """Where a file came from: path relative to the ingest root (display, ids) and absolute (open it)."""

    rel: str
    abs: str
    sha256: str


@dataclass
class Unit:
    """What a format reader yields: text that needs no model, or a visual thing that needs one.

    Exactly one of `text` / `load_image` / `video` is the payload. Images load lazily so a batch
    holds only the pages it is reading.
    """

    source: Source
    modality: str
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


@dataclass
class Chunk:
    id: str
    text: str
    source: str
    source_abs: str
    sha256: str
    modality: str
    page: int | None = None
    t_start: float | None = None
    t_end: float | None = None
    keyframe: str | None = None
    engine: str = ""
    model: str = ""
    position: int = 0
    language: str | None = None  # of the speech in it (Whisper's code: en, zh, ...)

    def metadata(self) -> dict[str, Any]:
        """Chroma metadata: scalars only, None dropped (Chroma rejects None values)."""
        meta = asdict(self)
        meta.pop("id")
        meta.pop("text")
        return {k: v for k, v in meta.items() if v is not None}


HIT_FIELDS = ("id", "text", "score", "source", "page", "t_start", "t_end", "modality", "keyframe")


@dataclass
class Hit:
    id: str
    text: str
    score: float
    source: str
    page: int | None = None
    t_start: float | None = None
    t_end: float | None = None
    modality: str = ""
    keyframe: str | None = None
    source_abs: str = ""
    sha256: str = ""
    position: int = 0

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HIT_FIELDS}

    @property
    def where(self) -> str:
        """Human citation label: `file.pdf p. 3` or `clip.mp4 01:05–01:20` (undecodable bytes shown as U+FFFD)."""
        name = display(self.source)
        if self.t_start is not None:
            return f"{name} {format_clock(self.t_start)}–{format_clock(self.t_end or self.t_start)}"
        if self.page is not None:
            return f"{name} p. {self.page}"
        return name


def format_clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class Progress:
    """One progress report: the CLI draws a bar from it, the app a st.progress."""

    stage: str
    done: int
    total: int
    unit: str = "files"
    detail: str = ""


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    return None
