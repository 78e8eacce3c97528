"""Video decoders: frames by index, upright, at a requested size; decord when it can, PyAV (FFmpeg) otherwise.

Decoding streams: frames are read by index in small batches, never the whole file. Times come from the
file's own timestamps (variable frame rate safe), and the rotation flag of phone videos is applied.
"""
from __future__ import annotations

import bisect
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from kb.errors import InputError

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

log = logging.getLogger(__name__)

BATCH = 16  # frames decoded per call: bounds memory whatever the video length
DAMAGED_FIX = "the file is damaged or incomplete: copy or download it again, or re-encode it (e.g. with ffmpeg)"
Frame = NDArray[np.uint8]  # height x width x 3, RGB


@dataclass
class VideoInfo:
    """What the container and the timestamps say. `times[i]` is frame i's presentation time, first frame at 0."""

    backend: str
    fps: float
    total_frames: int
    duration: float
    width: int  # upright (after rotation)
    height: int
    rotation: int  # degrees counter-clockwise that turn stored frames upright
    times: NDArray[np.float64] = field(repr=False)
    declared_duration: float | None = None  # what the container claims; more than `duration` when truncated

    @property
    def variable_rate(self) -> bool:
        if self.total_frames < 2:
            return False
        return bool(np.max(np.abs(self.times - np.arange(self.total_frames) / self.fps)) > 0.5 / self.fps)

    @property
    def clip_fps(self) -> float:
        """The rate that `VideoClip` indices count at. For constant-rate files the file's rate (indices are
        source indices); for variable-rate ones the fastest instantaneous rate, so `index / clip_fps` is each
        frame's true time to within half of its shortest frame interval."""
        if not self.variable_rate:
            return self.fps
        steps = np.diff(self.times)
        shortest = float(steps[steps > 1e-4].min()) if np.any(steps > 1e-4) else 1.0 / self.fps
        return min(1000.0, round(1.0 / shortest, 3))

    def clip_index(self, time: float) -> int:
        return int(round(time * self.clip_fps))



# -- sizes and rotation -----------------------------------------------------------------------------------------
def fit(width: int, height: int, max_side: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """Largest even size with the same aspect within `max_side` and `max_pixels` (never upscaled)."""
    scale = 1.0
    if max_side:
        scale = min(scale, max_side / max(width, height))
    if max_pixels:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def upright(frame: Frame, rotation: int) -> Frame:
    """Apply a display rotation (counter-clockwise degrees, as FFmpeg's display matrix gives it)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, turns)) if turns else frame


def _stored_size(size: tuple[int, int], rotation: int) -> tuple[int, int]:
    return (size[1], size[0]) if (rotation // 90) % 2 else size


# -- decoders ---------------------------------------------------------------------------------------------------
class Decoder(ABC):
    """Reads frames by index, upright, at a requested size (width, height after rotation)."""

    path: Path
    info: VideoInfo
    skipped_packets: int = 0  # damaged packets skipped while reading (the next key frame recovers): a damaged file

    @abstractmethod
    def read(self, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, Frame]]:
        """(index, frame) for the decodable frames of `indices`, in order; a frame that cannot be made is left out."""

    def close(self) -> None:
        return None


class DecordDecoder(Decoder):
    def __init__(self, path: Path, probe: ContainerProbe, threads: int = 0) -> None:
        import decord

        self.path = path
        self._decord = decord
        self._threads = threads  # decoding threads (0: decord's choice, every core)
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        n = len(reader)
        if n == 0:
            raise InputError(str(path), "the video has no frames", DAMAGED_FIX, code="video.no_frames")
        stamps = reader.get_frame_timestamp(range(n))
        start = float(stamps[0, 0])
        times = stamps[:, 0].astype(np.float64) - start
        fps = float(reader.get_avg_fps() or 0) or n / max(float(stamps[-1, 1]) - start, 1e-6)
        duration = float(stamps[-1, 1]) - start
        self.info = probe.info("decord", fps, times, duration)
        if probe.width == 0:  # no PyAV to read the container: the size of a decoded frame
            self.info.height, self.info.width = reader.get_batch([0]).asnumpy()[0].shape[:2]
        self._readers: dict[tuple[int, int], Any] = {(0, 0): reader}  # decord is untyped

    def _reader(self, size: tuple[int, int]) -> Any:
        w, h = _stored_size(size, self.info.rotation)
        if (w, h) not in self._readers:
            self._readers = {(w, h): self._decord.VideoReader(str(self.path), ctx=self._decord.cpu(0), width=w,
                                                              height=h, num_threads=self._threads)}
        return self._readers[(w, h)]

    def read(self, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, Frame]]:
        reader = self._reader(size)
        for start in range(0, len(indices), BATCH):
            batch = list(indices[start:start + BATCH])
            frames = reader.get_batch(batch).asnumpy()
            for index, frame in zip(batch, frames):
                yield index, upright(frame, self.info.rotation)

    def close(self) -> None:
        self._readers = {}


class PyAVDecoder(Decoder):
    """FFmpeg through PyAV: decodes in order and matches frames to indices by their timestamps."""

    def __init__(self, path: Path, probe: ContainerProbe) -> None:
        self.path = path
        self.skipped_packets = 0
        with probe.open() as container:
            stream = container.streams.video[0]
            pts, last_duration = [], 0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    pts.append(packet.pts)
                    last_duration = packet.duration or 0
        if not pts:
            raise InputError(str(path), "no video frames could be read", DAMAGED_FIX, code="video.no_frames_read")
        tb = probe.time_base
        self._pts = sorted(set(pts))
        times = (np.asarray(self._pts, dtype=np.float64) - self._pts[0]) * tb
        fps = probe.rate or len(times) / max(times[-1], 1e-6)
        duration = float(times[-1]) + (last_duration * tb if last_duration else 1.0 / fps)
        self.info = probe.info("pyav", fps, times, duration)

    def _index(self, pts: int | None, fallback: int) -> int:
        if pts is None:
            return fallback
        i = bisect.bisect_left(self._pts, pts)
        if i == len(self._pts) or (i > 0 and pts - self._pts[i - 1] < self._pts[i] - pts):
            i -= 1
        return i

    def read(self, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, Frame]]:
        import av

        wanted = sorted(set(indices))
        if not wanted:
            return
        w, h = _stored_size(size, self.info.rotation)
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            position = -1
            if wanted[0] > 0:  # seek to the key frame at or before the first wanted frame
                container.seek(self._pts[wanted[0]], stream=stream, backward=True)
            pending = iter(wanted)
            target: int | None = next(pending)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.skipped_packets += 1  # a damaged packet: skip it, the next key frame recovers
                    continue
                for frame in frames:
                    position += 1
                    index = self._index(frame.pts, position)
                    while target is not None and index > target:  # a frame the decoder could not produce
                        target = next(pending, None)
                    if target is None:
                        return
                    if index == target:
                        image = np.asarray(frame.to_ndarray(width=w, height=h, format="rgb24"), dtype=np.uint8)
                        yield index, upright(image, self.info.rotation)
                        target = next(pending, None)
                        if target is None:
                            return


class ContainerProbe:
    """Container facts both decoders need: rotation, size, declared rate and duration; via PyAV when installed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rotation = 0
        self.rate: float = 0.0
        self.time_base: float = 0.0
        self.declared_duration: float | None = None
        self.width = self.height = 0
        try:
            import av  # noqa: F401
        except ImportError:
            return
        try:
            self._read()
        except InputError:
            raise
        except Exception as err:  # av.error.* : not a video FFmpeg can open
            raise InputError(str(path), f"not a readable video ({err})", DAMAGED_FIX, code="video.unreadable",
                             params={"detail": str(err)}) from err

    def open(self) -> InputContainer:
        import av

        return av.open(str(self.path))

    def _read(self) -> None:
        with self.open() as container:
            if not container.streams.video:
                raise InputError(str(self.path), "the file has no video stream", "ingest audio-only files elsewhere",
                                 code="video.no_video_stream")
            stream = container.streams.video[0]
            self.time_base = float(stream.time_base or 0)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.rate = float(rate) if rate else 0.0
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            if container.duration:
                self.declared_duration = container.duration / 1_000_000
            self.rotation = self._rotation(container, stream)

    @staticmethod
    def _rotation(container: InputContainer, stream: VideoStream) -> int:
        """The display matrix of the first frame; else the legacy `rotate` tag (clockwise degrees)."""
        try:
            for frame in container.decode(stream):
                angle = int(round(frame.rotation or 0))
                if angle:
                    return angle % 360
                break
        except Exception:  # an undecodable first frame: the real decode reports it
            pass
        tag = stream.metadata.get("rotate")
        return (-int(float(tag))) % 360 if tag else 0

    def info(self, backend: str, fps: float, times: NDArray[np.float64], duration: float) -> VideoInfo:
        width, height = self.width, self.height
        if (self.rotation // 90) % 2:
            width, height = height, width
        return VideoInfo(backend=backend, fps=float(fps), total_frames=len(times), duration=float(duration),
                         width=width, height=height, rotation=self.rotation, times=times,
                         declared_duration=self.declared_duration)


def open_video(path: Path, prefer: str = "decord", threads: int = 0) -> Decoder:
    """A decoder for the file: decord when installed and able to open it, PyAV otherwise. `threads`: decord's
    decoding threads (0: its own choice)."""
    probe = ContainerProbe(path)
    # decord 0.6 turns rotated videos upright at full size but mirrors them when asked to scale: PyAV for those.
    if prefer == "decord" and not probe.rotation:
        try:
            return DecordDecoder(path, probe, threads)
        except ImportError:
            log.info("decord is not installed: decoding %s with PyAV", path.name)
        except InputError:
            raise
        except Exception as err:  # decord refuses some containers/codecs that FFmpeg itself reads
            log.info("decord cannot open %s (%s): trying PyAV", path.name, err)
    try:
        return PyAVDecoder(path, probe)
    except ImportError as err:
        raise InputError(str(path), "no video decoder is installed", "pip install decord av",
                         code="video.no_decoder") from err


