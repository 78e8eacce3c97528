"""What a reader returns: a file turned into units, with its per-page problems and notes.

Its own module so that the readers (ingest/pdf.py, image.py, video.py, audio.py, text.py) and the registry
that picks one of them (ingest/read.py) both depend on it and not on each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kb.types import FileKind, Unit


@dataclass
class AudioTrack:
    """A file's first audio stream, found when the file was read; decoded only when it is transcribed."""

    path: Path
    duration: float


@dataclass
class ReadResult:
    """A file turned into units; `errors` are per-page problems that leave the rest of the file usable,
    `notes` are facts the user should see that are not problems (read as another type than its name says)."""

    kind: FileKind | None = None  # None only before the file is read
    units: list[Unit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pages: int | None = None
    duration: float | None = None
    audio: AudioTrack | None = None  # a sound track for the speech engine (videos and audio files)
