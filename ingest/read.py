"""Which reader handles which file, and what a reader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kb.config import Settings
from kb.errors import InputError
from kb.types import Source, Unit


@dataclass
class ReadResult:
    """A file turned into units; `errors` are per-page problems that leave the rest of the file usable."""

    kind: str  # pdf, image, video
    units: list[Unit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pages: int | None = None
    duration: float | None = None


Reader = Callable[[Path, Source, Settings], ReadResult]
PDF_EXTENSIONS = {".pdf"}
TEXT_EXTENSIONS = {".txt", ".md", ".markdown"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}


def _readers() -> dict[str, Reader]:
    from ingest.image import read_image
    from ingest.pdf import read_pdf
    from ingest.text import read_text
    from ingest.video import VIDEO_EXTENSIONS, read_video

    table: dict[str, Reader] = {ext: read_pdf for ext in PDF_EXTENSIONS}
    table.update({ext: read_image for ext in IMAGE_EXTENSIONS})
    table.update({ext: read_text for ext in TEXT_EXTENSIONS})
    table.update({ext: read_video for ext in VIDEO_EXTENSIONS})
    return table


def supported_extensions() -> set[str]:
    return set(_readers())


def read_file(path: Path, source: Source, settings: Settings) -> ReadResult:
    reader = _readers().get(path.suffix.lower())
    if reader is None:
        raise InputError(str(path), f"unsupported file type {path.suffix or '(no extension)'}",
                         f"Seekframe reads {', '.join(sorted(supported_extensions()))}")
    if path.stat().st_size == 0:
        raise InputError(source.rel, "the file is empty (0 bytes)", "copy or download it again")
    return reader(path, source, settings)
