"""Video reader: scene-aware sampled frames grouped into timestamped windows, one engine unit per window.

Reading a video decodes it once, at the engine's frame size (sampling on thumbnails, key-frame JPEGs); the kept
frames are held as JPEGs at the engine's size (ingest/video_sampling.py PICTURE_BUDGET), so a window's frames
need no second decode. Past that budget a window's frames are decoded again, lazily, when the pipeline asks for
them, so memory stays bounded for any length. Long videos are sampled in time slices by several processes
(ingest/video_slices.py).
"""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from PIL import Image

from ingest.audio import probe
from ingest.read_result import ReadResult
from ingest.video_decoders import DAMAGED_FIX, Decoder, VideoInfo, fit, open_video
from ingest.video_sampling import DEFAULT_PARAMS, KeptFrame, SamplingParams
from ingest.video_slices import sample
from kb.config import Settings
from kb.errors import InputError
from kb.i18n import said
from kb.types import FileKind, Modality, Source, Unit, VideoClip

log = logging.getLogger(__name__)

# Not .ts (MPEG transport streams): in a folder of code that is TypeScript.
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv"}


@dataclass
class Window:
    """Kept frames shown to the engine together; [t_start, t_end) tiles the video with its neighbours."""

    frames: list[KeptFrame]
    t_start: float
    t_end: float


class WindowGrouper:
    """Kept frames in time order into windows, each closed as soon as a later frame starts the next: so a long
    video's first windows can go to the engine while the rest is still sampled. A window splits at a scene cut
    (unless it is still very short), when it reaches `window_max` seconds, or when it has `window_max_frames`
    frames and is at least `window_min` long; it ends where the next one starts (the last: at the video's end)."""

    def __init__(self, params: SamplingParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._open: list[KeptFrame] = []

    def add(self, frame: KeptFrame) -> Window | None:
        """Take the next kept frame; the window it closes, if it starts a new one."""
        current, p = self._open, self.params
        length = frame.time - current[0].time if current else 0.0  # the window's length if this frame starts the next
        if current and ((frame.cut and length >= p.cut_min_window) or length >= p.window_max
                        or (len(current) >= p.window_max_frames and length >= p.window_min)):
            self._open = [frame]
            return Window(current, current[0].time, frame.time)
        current.append(frame)
        return None

    def close(self, duration: float) -> Window | None:
        """The last window, ending with the video (or its last frame, past a duration the container understates)."""
        current, self._open = self._open, []
        return Window(current, current[0].time, max(duration, current[-1].time)) if current else None


def group_windows(frames: list[KeptFrame], duration: float, params: SamplingParams = DEFAULT_PARAMS) -> list[Window]:
    """Split kept frames into windows (WindowGrouper)."""
    grouper = WindowGrouper(params)
    windows = [w for w in map(grouper.add, frames) if w is not None]
    last = grouper.close(duration)
    return windows + [last] if last is not None else windows


def keyframe_path(settings: Settings, sha256: str, index: int) -> Path:
    return settings.keyframe_dir(sha256) / f"{index}.jpg"


def params_from(settings: Settings) -> SamplingParams:
    return replace(DEFAULT_PARAMS, fps=settings.video_fps, max_gap=settings.video_max_gap,
                   window_min=settings.video_window_min, window_max=settings.video_window_max,
                   window_max_frames=settings.video_window_frames, frame_pixels=settings.video_max_pixels)


def read_video(path: Path, source: Source, settings: Settings, params: SamplingParams | None = None,
               on_unit: Callable[[Unit], None] | None = None) -> ReadResult:
    """Sample the video, save every kept frame as a small JPEG, and make one `video` unit per window; `on_unit`
    gets each window's unit as soon as the window closes, while the rest of the video is still sampled."""
    params = params or params_from(settings)
    folder = settings.keyframe_dir(source.sha256)
    folder.mkdir(parents=True, exist_ok=True)
    grouper = WindowGrouper(params)
    made: list[tuple[tuple[float, float, tuple[int, ...]], Unit]] = []  # each window's unit, by its times and frames
    given: list[tuple[tuple[float, float, tuple[int, ...]], Unit]] = []  # made in a pass that sampling started over
    sampled_from: VideoInfo | None = None  # the pass's video: a new one when sampling starts over

    def add(window: Window, info: VideoInfo) -> None:
        key = (round(window.t_start, 3), round(window.t_end, 3), tuple(f.index for f in window.frames))
        n = len(made)
        if n < len(given) and given[n][0] == key:
            made.append(given[n])  # the pass before made this very window, and `on_unit` has it
            return
        made.append((key, Unit(source, Modality.VIDEO_SEGMENT, task="video", t_start=key[0], t_end=key[1],
                               keyframe=str(keyframe_path(settings, source.sha256, window.frames[0].index)),
                               video=WindowLoader(path, ClipPlace.of(info), window.frames, settings.video_max_pixels))))
        if on_unit is not None:
            on_unit(made[-1][1])

    def keep(frame: KeptFrame, info: VideoInfo) -> None:
        nonlocal grouper, sampled_from
        if info is not sampled_from:
            if sampled_from is not None:  # started over (decord failed part way, or a slice's process died)
                given[:] = made  # its windows come again
                made.clear()
                grouper = WindowGrouper(params)
            sampled_from = info
        assert frame.keyframe is not None  # the sampler encodes every kept frame's key frame
        keyframe_path(settings, source.sha256, frame.index).write_bytes(frame.keyframe)
        frame.keyframe = None  # written: not held for the rest of the run
        window = grouper.add(frame)
        if window is not None:
            add(window, info)

    try:
        sampled = sample(path, params, on_keep=keep)
    except InputError as err:
        # Name the file as the user gave it, not by its absolute path.
        raise InputError(source.rel, err.message.removeprefix(f"{path}: "), err.fix, code=err.code,
                         params={k: v for k, v in err.params.items() if k != "path"}) from err
    last = grouper.close(sampled.duration)
    if last is not None:
        add(last, sampled.info)
    units = [unit for _, unit in made]
    log.info("%s: %d windows from %d kept frames (%d decoded, %d dropped)", source.rel, len(units), sampled.kept,
             sampled.decoded, sampled.dropped)
    result = ReadResult(kind=FileKind.VIDEO, units=units, errors=list(sampled.errors),
                        duration=round(sampled.duration, 3))
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


@dataclass(frozen=True)
class ClipPlace:
    """What a window's loader needs of the video (small: it travels to a loading process with each window)."""

    backend: str
    width: int
    height: int
    clip_fps: float
    total_frames: int
    duration: float

    @classmethod
    def of(cls, info: VideoInfo) -> ClipPlace:
        return cls(info.backend, info.width, info.height, info.clip_fps, info.total_frames, info.duration)

    def clip_index(self, time: float) -> int:
        return int(round(time * self.clip_fps))


@dataclass(frozen=True)
class WindowLoader:
    """A window's `Unit.video`: its frames as a clip, made where the engine needs them."""

    path: Path
    place: ClipPlace
    frames: list[KeptFrame]
    max_pixels: int

    @property
    def in_memory(self) -> bool:
        """Every frame was kept as a JPEG while sampling: the clip opens in microseconds, in this process, and its
        frames decode where the engine reads them (its processor threads). Sending it to a loading process instead
        sent back ~8 MB of pixels a window (the main thread waited 9 s for an hour's 382 windows on an H200)."""
        return all(f.picture is not None for f in self.frames)

    def __call__(self) -> VideoClip:
        return load_clip(self.path, self.place, self.frames, self.max_pixels)


def load_clip(path: Path, place: ClipPlace, frames: list[KeptFrame], max_pixels: int) -> VideoClip:
    """The window's kept frames at the engine's pixel budget, with indices that give their true times: those the
    sampling kept as JPEGs opened, the others decoded again from the file."""
    size = fit(place.width, place.height, max_pixels=max_pixels)
    images = {f.index: _opened(f.picture, size) for f in frames if f.picture is not None}
    missing = [f.index for f in frames if f.picture is None]
    if missing:
        images.update(_open.read(path, place.backend, missing, size))
    got = [f for f in frames if f.index in images]
    if not got:
        at = f"{frames[0].time:.1f}"
        raise InputError(str(path), f"the frames at {at} s cannot be decoded any more", DAMAGED_FIX,
                         code="video.frames_lost", params={"time": at})
    indices = [place.clip_index(f.time) for f in got]
    return VideoClip(frames=[images[f.index] for f in got], frame_indices=indices, fps=place.clip_fps,
                     total_frames=max(place.total_frames, place.clip_index(place.duration), indices[-1] + 1))


def _opened(picture: bytes, size: tuple[int, int]) -> Image.Image:
    """A kept frame at the engine's size. Left undecoded (PIL decodes on first use, releasing the GIL), so the
    engine's processor threads decode the frames of the windows they prepare, in parallel."""
    image = Image.open(io.BytesIO(picture))
    # Kept at another size (settings changed between reading and loading): the engine's size all the same.
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
