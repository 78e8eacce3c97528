"""Video reader: scene-aware sampled frames grouped into timestamped windows, one engine unit per window.

Reading a video decodes it once at thumbnail size (sampling, key-frame JPEGs); the frames a window sends to the
engine are decoded again, lazily, when the pipeline asks for that window, so memory stays bounded for any length.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from PIL import Image

from ingest.audio import probe
from ingest.read_result import ReadResult
from ingest.video_decoders import DAMAGED_FIX, Decoder, Frame, fit, open_video
from ingest.video_sampling import DEFAULT_PARAMS, KeptFrame, SampleResult, SamplingParams, sample_frames
from kb.config import Settings
from kb.errors import InputError
from kb.i18n import said
from kb.types import FileKind, Modality, Source, Unit, VideoClip

log = logging.getLogger(__name__)

# Not .ts (MPEG transport streams): in a folder of code that is TypeScript.
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv"}
KEYFRAME_QUALITY = 85


@dataclass
class Window:
    """Kept frames shown to the engine together; [t_start, t_end) tiles the video with its neighbours."""

    frames: list[KeptFrame]
    t_start: float
    t_end: float


def group_windows(frames: list[KeptFrame], duration: float, params: SamplingParams = DEFAULT_PARAMS) -> list[Window]:
    """Split kept frames into windows: at a scene cut (unless the window is still very short), when a window
    reaches `window_max` seconds, or when it has `window_max_frames` frames and is at least `window_min` long."""
    groups: list[list[KeptFrame]] = []
    for frame in frames:
        if groups:
            current = groups[-1]
            length = frame.time - current[0].time  # the window's length if this frame starts the next one
            if ((frame.cut and length >= params.cut_min_window) or length >= params.window_max
                    or (len(current) >= params.window_max_frames and length >= params.window_min)):
                groups.append([frame])
                continue
            current.append(frame)
        else:
            groups.append([frame])
    starts = [g[0].time for g in groups]
    ends = starts[1:] + [max(duration, frames[-1].time)] if frames else []
    return [Window(g, start, end) for g, start, end in zip(groups, starts, ends)]


def keyframe_path(settings: Settings, sha256: str, index: int) -> Path:
    return settings.keyframe_dir(sha256) / f"{index}.jpg"


def params_from(settings: Settings) -> SamplingParams:
    return replace(DEFAULT_PARAMS, fps=settings.video_fps, max_gap=settings.video_max_gap,
                   window_min=settings.video_window_min, window_max=settings.video_window_max,
                   window_max_frames=settings.video_window_frames)


def read_video(path: Path, source: Source, settings: Settings, params: SamplingParams | None = None) -> ReadResult:
    """Sample the video, save every kept frame as a small JPEG, and make one `video` unit per window."""
    params = params or params_from(settings)
    folder = settings.keyframe_dir(source.sha256)
    folder.mkdir(parents=True, exist_ok=True)

    def save(frame: KeptFrame, rgb: Frame) -> None:
        Image.fromarray(rgb).save(keyframe_path(settings, source.sha256, frame.index), quality=KEYFRAME_QUALITY)

    try:
        sample = sample_frames(path, params, on_keep=save)
    except InputError as err:
        # Name the file as the user gave it, not by its absolute path.
        raise InputError(source.rel, err.message.removeprefix(f"{path}: "), err.fix, code=err.code,
                         params={k: v for k, v in err.params.items() if k != "path"}) from err
    windows = group_windows(sample.frames, sample.duration, params)
    log.info("%s: %d windows from %d kept frames (%d decoded, %d dropped)", source.rel, len(windows), sample.kept,
             sample.decoded, sample.dropped)
    units = [Unit(source, Modality.VIDEO_SEGMENT, task="video", t_start=round(w.t_start, 3), t_end=round(w.t_end, 3),
                  keyframe=str(keyframe_path(settings, source.sha256, w.frames[0].index)),
                  video=partial(load_clip, path, sample, w.frames, settings.video_max_pixels))
             for w in windows]
    result = ReadResult(kind=FileKind.VIDEO, units=units, errors=list(sample.errors),
                        duration=round(sample.duration, 3))
    if settings.asr != "off":  # the sound track, for the speech engine: decoded only when it is transcribed
        try:
            result.audio = probe(path, source.rel)
        except InputError as err:
            result.notes.append(said(f"its sound cannot be read, so speech is left out: {err.message}",
                                     "said.video.sound_unreadable", problem=err.message))
    return result


# -- the frames of one window, decoded when the engine needs them -------------------------------------------------
class _OpenDecoder:
    """The decoder of the file being enriched, kept open between its windows (one file at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._decoder: Decoder | None = None

    def read(self, path: Path, backend: str, indices: list[int], size: tuple[int, int]) -> dict[int, Image.Image]:
        """Frames `indices` of the file as images (those that decode), one caller at a time."""
        with self._lock:
            decoder = self._get(path, backend)
            return {index: Image.fromarray(rgb) for index, rgb in decoder.read(indices, size)}

    def _get(self, path: Path, backend: str) -> Decoder:
        key = (str(path), backend)
        if self._key != key or self._decoder is None:
            if self._decoder is not None:
                self._decoder.close()
            self._decoder, self._key = open_video(path, prefer=backend), key
        return self._decoder


_open = _OpenDecoder()


def load_clip(path: Path, sample: SampleResult, frames: list[KeptFrame], max_pixels: int) -> VideoClip:
    """The window's kept frames at the engine's pixel budget, with indices that give their true times."""
    info = sample.info
    size = fit(info.width, info.height, max_pixels=max_pixels)
    images = _open.read(path, info.backend, [f.index for f in frames], size)
    got = [f for f in frames if f.index in images]
    if not got:
        at = f"{frames[0].time:.1f}"
        raise InputError(str(path), f"the frames at {at} s cannot be decoded any more", DAMAGED_FIX,
                         code="video.frames_lost", params={"time": at})
    indices = [info.clip_index(f.time) for f in got]
    return VideoClip(frames=[images[f.index] for f in got], frame_indices=indices, fps=info.clip_fps,
                     total_frames=max(info.total_frames, info.clip_index(info.duration), indices[-1] + 1))
