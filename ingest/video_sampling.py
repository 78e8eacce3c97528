"""Video decoding (decord, PyAV fallback) and scene-aware frame sampling.

Decoding streams: frames are read by index in small batches, never the whole file. Times come from the
file's own timestamps (variable frame rate safe), and the rotation flag of phone videos is applied.

Sampling looks at candidate frames at a target rate (default 1/s) and keeps a candidate when it differs from
the last kept frame: a scene cut, a visible change, or a change of on-screen text (measured block by block as a
strong local difference, so one new line on a slide counts even though few pixels move). A still scene keeps one
frame every `max_gap` seconds.
"""
from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from kb.errors import InputError

log = logging.getLogger(__name__)

BATCH = 16  # frames decoded per call: bounds memory whatever the video length
DAMAGED_FIX = "the file is damaged or incomplete: copy or download it again, or re-encode it (e.g. with ffmpeg)"


@dataclass(frozen=True)
class SamplingParams:
    """Sampling and windowing knobs. Defaults suit lectures, screen recordings and ordinary footage."""

    fps: float = 1.0  # candidate frames per second (capped at MAX_FPS: Qwen3-VL is trained up to 2 fps)
    max_gap: float = 10.0  # a still scene still keeps one frame this often (seconds)
    window_min: float = 10.0  # a window that reached `window_max_frames` closes once it is this long
    window_max: float = 30.0  # no window is longer than this (seconds)
    window_max_frames: int = 10  # bounds the frames (and visual tokens) one engine request carries
    cut_min_window: float = 3.0  # a scene cut starts a new window unless the current one is shorter than this
    thumb_side: int = 320  # longest side of analysis frames and of the key-frame JPEGs
    # Thresholds, all on a 0..1 scale; tuned on slides, test cards, noisy still
    # shots and film clips (see tests/test_video.py and bench/video_decode.py).
    cut_hist: float = 0.35  # colour-histogram distance between neighbouring candidates that means a cut
    cut_edges: float = 0.6  # share of edges that moved between neighbours that means a new layout (a new slide)
    same_pixels: float = 0.02  # mean grey difference below which frames look the same
    same_hist: float = 0.06
    local_block: float = 0.03  # share of one grid block that changed strongly: new/removed text in that block


MAX_FPS = 2.0
DEFAULT_PARAMS = SamplingParams()


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
    times: np.ndarray = field(repr=False)
    declared_duration: float | None = None  # what the container claims; more than `duration` when truncated
    has_audio: bool = False

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


@dataclass
class KeptFrame:
    index: int  # decode index into the source (presentation order)
    time: float  # seconds from the start, from the frame's timestamp
    cut: bool  # first kept frame of a new scene (the very first frame counts as one)
    reason: str  # first, cut, local (e.g. new text), change, still


@dataclass
class SampleResult:
    info: VideoInfo
    frames: list[KeptFrame]
    decoded: int  # candidate frames decoded and compared
    dropped: int  # candidates dropped as near-duplicates of the last kept frame
    errors: list[str] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.frames)

    @property
    def cuts(self) -> list[float]:
        return [f.time for f in self.frames if f.cut]

    @property
    def duration(self) -> float:
        return self.info.duration


# -- sizes and rotation -----------------------------------------------------------------------------------------
def fit(width: int, height: int, max_side: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """Largest even size with the same aspect within `max_side` and `max_pixels` (never upscaled)."""
    scale = 1.0
    if max_side:
        scale = min(scale, max_side / max(width, height))
    if max_pixels:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, as FFmpeg's display matrix gives it)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, turns)) if turns else frame


def _stored_size(size: tuple[int, int], rotation: int) -> tuple[int, int]:
    return (size[1], size[0]) if (rotation // 90) % 2 else size


# -- decoders ---------------------------------------------------------------------------------------------------
class Decoder:
    """Reads frames by index, upright, at a requested size (width, height after rotation)."""

    info: VideoInfo

    def read(self, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        return None


class DecordDecoder(Decoder):
    def __init__(self, path: Path, probe: _Probe) -> None:
        import decord

        self.path = path
        self._decord = decord
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        n = len(reader)
        if n == 0:
            raise InputError(str(path), "the video has no frames", DAMAGED_FIX)
        stamps = reader.get_frame_timestamp(range(n))
        start = float(stamps[0, 0])
        times = stamps[:, 0].astype(np.float64) - start
        fps = float(reader.get_avg_fps() or 0) or n / max(float(stamps[-1, 1]) - start, 1e-6)
        duration = float(stamps[-1, 1]) - start
        self.info = probe.info("decord", fps, times, duration)
        self._readers: dict[tuple[int, int], object] = {(0, 0): reader}

    def _reader(self, size: tuple[int, int]):
        w, h = _stored_size(size, self.info.rotation)
        if (w, h) not in self._readers:
            self._readers = {(w, h): self._decord.VideoReader(str(self.path), ctx=self._decord.cpu(0), width=w,
                                                              height=h)}
        return self._readers[(w, h)]

    def read(self, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
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

    def __init__(self, path: Path, probe: _Probe) -> None:
        self.path = path
        self.errors = 0
        with probe.open() as container:
            stream = container.streams.video[0]
            pts, last_duration = [], 0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    pts.append(packet.pts)
                    last_duration = packet.duration or 0
        if not pts:
            raise InputError(str(path), "no video frames could be read", DAMAGED_FIX)
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

    def read(self, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
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
            target = next(pending)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.errors += 1  # a damaged packet: skip it, the next key frame recovers
                    continue
                for frame in frames:
                    position += 1
                    index = self._index(frame.pts, position)
                    while target is not None and index > target:  # a frame the decoder could not produce
                        target = next(pending, None)
                    if target is None:
                        return
                    if index == target:
                        image = frame.to_ndarray(width=w, height=h, format="rgb24")
                        yield index, upright(image, self.info.rotation)
                        target = next(pending, None)
                        if target is None:
                            return


class _Probe:
    """Container facts both decoders need: rotation, declared rate/duration, audio; via PyAV when installed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rotation = 0
        self.rate: float = 0.0
        self.time_base: float = 0.0
        self.declared_duration: float | None = None
        self.has_audio = False
        self.width = self.height = 0
        self.declared_frames = 0
        try:
            import av  # noqa: F401
        except ImportError:
            return
        try:
            self._read()
        except InputError:
            raise
        except Exception as err:  # av.error.* : not a video FFmpeg can open
            raise InputError(str(path), f"not a readable video ({err})", DAMAGED_FIX) from err

    def open(self):
        import av

        return av.open(str(self.path))

    def _read(self) -> None:
        with self.open() as container:
            if not container.streams.video:
                raise InputError(str(self.path), "the file has no video stream", "ingest audio-only files elsewhere")
            stream = container.streams.video[0]
            self.has_audio = bool(container.streams.audio)
            self.time_base = float(stream.time_base or 0)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.rate = float(rate) if rate else 0.0
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.declared_frames = stream.frames or 0
            if container.duration:
                self.declared_duration = container.duration / 1_000_000
            self.rotation = self._rotation(container, stream)

    @staticmethod
    def _rotation(container, stream) -> int:
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

    def info(self, backend: str, fps: float, times: np.ndarray, duration: float) -> VideoInfo:
        width, height = self.width, self.height
        if (self.rotation // 90) % 2:
            width, height = height, width
        return VideoInfo(backend=backend, fps=float(fps), total_frames=len(times), duration=float(duration),
                         width=width, height=height, rotation=self.rotation, times=times,
                         declared_duration=self.declared_duration, has_audio=self.has_audio)


def open_video(path: Path, prefer: str = "decord") -> Decoder:
    """A decoder for the file: decord when installed and able to open it, PyAV otherwise."""
    probe = _Probe(path)
    # decord 0.6 turns rotated videos upright at full size but mirrors them when asked to scale: PyAV for those.
    if prefer == "decord" and not probe.rotation:
        try:
            decoder = DecordDecoder(path, probe)
            if probe.width == 0:  # no PyAV: take the size from a decoded frame
                frame = decoder._reader((0, 0)).get_batch([0]).asnumpy()[0]
                probe.height, probe.width = frame.shape[:2]
                decoder.info.width, decoder.info.height = probe.width, probe.height
            return decoder
        except ImportError:
            log.info("decord is not installed: decoding %s with PyAV", path.name)
        except InputError:
            raise
        except Exception as err:  # decord refuses some containers/codecs that FFmpeg itself reads
            log.info("decord cannot open %s (%s): trying PyAV", path.name, err)
    try:
        return PyAVDecoder(path, probe)
    except ImportError as err:
        raise InputError(str(path), "no video decoder is installed", "pip install decord av") from err


# -- frame features ---------------------------------------------------------------------------------------------
@dataclass
class Features:
    thumb: np.ndarray  # small grey thumbnail, 0..1
    hist: np.ndarray  # per-channel colour histograms, each summing to 1
    grey: np.ndarray  # the analysis frame, grey, lightly blurred (int16 so differences do not wrap)
    edges: np.ndarray  # its Canny edges (bool)
    near: np.ndarray  # the edges dilated by one pixel: "an edge is still there" tolerates a one-pixel shift


GRID = (9, 16)  # rows, columns of blocks for the local-change test (20 x 20 px blocks at 320 x 180)
STRONG = 40  # grey-level difference (of 255) that noise and compression never reach but new text does
DILATE = np.ones((3, 3), np.uint8)


def features(frame: np.ndarray) -> Features:
    small = cv2.resize(frame, fit(frame.shape[1], frame.shape[0], max_side=64), interpolation=cv2.INTER_AREA)
    thumb = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    hist = np.stack([np.bincount(small[..., c].ravel() >> 4, minlength=16) for c in range(3)]).astype(np.float32)
    hist /= hist.sum(axis=1, keepdims=True)
    # The blur keeps sensor noise and compression ringing below STRONG; letters at 320 px survive it.
    grey = cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    edges = cv2.Canny(grey, 100, 200) > 0
    near = cv2.dilate(edges.astype(np.uint8), DILATE) > 0
    return Features(thumb, hist, grey.astype(np.int16), edges, near)


@dataclass
class Change:
    pixels: float  # mean absolute grey difference of the thumbnails
    hist: float  # colour-histogram distance (half the L1 distance, averaged over channels)
    edges: float  # share of edges that appeared or vanished, camera motion followed (a new layout moves most)
    local: float  # the largest share of one grid block that changed strongly (new text, a subtitle, a label)


def _blocks(mask: np.ndarray) -> np.ndarray:
    rows, cols = GRID
    h, w = mask.shape
    rows, cols = min(rows, h), min(cols, w)
    return mask[:h // rows * rows, :w // cols * cols].reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))


def _moved_edges(a: Features, b: Features, dx: int = 0, dy: int = 0) -> float:
    """Share of edges that appeared or vanished on the overlap, where a's pixel (x + dx, y + dy) is b's (x, y)."""
    h, w = a.edges.shape
    ya, yb = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xa, xb = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    ea, na, eb, nb = a.edges[ya, xa], a.near[ya, xa], b.edges[yb, xb], b.near[yb, xb]
    total = int(ea.sum()) + int(eb.sum())
    return float(((eb & ~na) | (ea & ~nb)).sum() / total) if total else 0.0


def _pan(a: Features, b: Features) -> tuple[int, int]:
    """The whole-picture shift from `a` to `b` (a camera pan or a scrolling page), (0, 0) when there is none."""
    (dx, dy), response = cv2.phaseCorrelate(a.grey.astype(np.float32), b.grey.astype(np.float32))
    h, w = a.grey.shape
    if response < 0.1 or abs(dx) > w / 4 or abs(dy) > h / 4:
        return 0, 0
    return int(round(dx)), int(round(dy))


def compare(a: Features, b: Features) -> Change:
    edges = _moved_edges(a, b)
    if edges >= 0.3:  # maybe the camera moved: measure the layout change after following the motion
        dx, dy = _pan(a, b)
        if dx or dy:
            edges = min(edges, _moved_edges(a, b, -dx, -dy))
    strong = np.abs(a.grey - b.grey) >= STRONG
    return Change(pixels=float(np.abs(a.thumb - b.thumb).mean()),
                  hist=float(np.abs(a.hist - b.hist).sum(axis=1).mean() / 2),
                  edges=edges, local=float(_blocks(strong).max()))


def is_cut(change: Change, p: SamplingParams) -> bool:
    """A new shot or a new slide: the colours changed wholesale, or most edges moved and the picture changed."""
    return change.hist >= p.cut_hist or (change.edges >= p.cut_edges and change.local >= p.local_block)


def why_keep(change: Change, p: SamplingParams) -> str:
    """Why this frame is worth keeping next to the last kept one, or '' for a near-duplicate.

    A small area that changed strongly ("local") is how new on-screen text looks: a line added to a slide or
    a subtitle moves few pixels overall but changes its block almost completely.
    """
    if change.local >= p.local_block:
        return "local"
    if change.pixels >= p.same_pixels or change.hist >= p.same_hist:
        return "change"
    return ""


# -- sampling ---------------------------------------------------------------------------------------------------
def candidates(info: VideoInfo, rate: float) -> list[int]:
    """Frame indices nearest to every 1/rate seconds (by timestamp, so variable frame rate is sampled evenly)."""
    rate = min(rate, MAX_FPS, info.fps or MAX_FPS)
    targets = np.arange(0.0, info.duration, 1.0 / rate)
    # Half a frame of slack: a frame stamped 0.99999 s is the 1 s frame.
    picks = np.searchsorted(info.times, targets - 0.5 / info.fps)
    return sorted({int(i) for i in picks if i < info.total_frames})


OnKeep = Callable[[KeptFrame, np.ndarray], None]


def sample_frames(path: Path, params: SamplingParams = DEFAULT_PARAMS, on_keep: OnKeep | None = None,
                  prefer: str = "decord") -> SampleResult:
    """Decode candidate frames at `params.fps` and keep the ones worth looking at.

    `on_keep(frame, rgb)` receives each kept frame at analysis size (longest side `params.thumb_side`), e.g. to
    save it as a key frame. If decord fails part way, the whole pass is redone with PyAV.
    """
    decoder = open_video(path, prefer)
    try:
        return _sample(decoder, params, on_keep)
    except InputError:
        raise
    except Exception as err:
        if isinstance(decoder, PyAVDecoder):
            raise InputError(str(path), f"the video cannot be decoded ({err})", DAMAGED_FIX) from err
        log.info("decord failed on %s (%s): decoding it with PyAV", path.name, err)
    finally:
        decoder.close()
    decoder = open_video(path, prefer="pyav")
    try:
        return _sample(decoder, params, on_keep)
    except InputError:
        raise
    except Exception as err:
        raise InputError(str(path), f"the video cannot be decoded ({err})", DAMAGED_FIX) from err
    finally:
        decoder.close()


def _sample(decoder: Decoder, params: SamplingParams, on_keep: OnKeep | None) -> SampleResult:
    info = decoder.info
    size = fit(info.width, info.height, max_side=params.thumb_side)
    result = SampleResult(info=info, frames=[], decoded=0, dropped=0)
    previous: Features | None = None
    reference: Features | None = None
    picks = candidates(info, params.fps)
    for index, frame in decoder.read(picks, size):
        time = float(info.times[index])
        current = features(frame)
        result.decoded += 1
        reason = "first" if reference is None else ""
        if previous is not None and is_cut(compare(previous, current), params):
            reason = "cut"
        elif reference is not None:
            reason = why_keep(compare(reference, current), params)
            if not reason and time - result.frames[-1].time >= params.max_gap - 1e-6:
                reason = "still"
        previous = current
        if not reason:
            result.dropped += 1
            continue
        reference = current
        kept = KeptFrame(index=index, time=time, cut=reason in ("first", "cut"), reason=reason)
        result.frames.append(kept)
        if on_keep:
            on_keep(kept, frame)
    if not result.frames:
        raise InputError(str(getattr(decoder, "path", "")), "no frame of the video could be decoded", DAMAGED_FIX)
    _check_complete(decoder, result, len(picks))
    log.info("%s: %.1f s, %d candidates decoded, %d kept, %d dropped, %d cuts (%s)", getattr(decoder, "path", ""),
             info.duration, result.decoded, result.kept, result.dropped, len(result.cuts), info.backend)
    return result


def _check_complete(decoder: Decoder, result: SampleResult, requested: int) -> None:
    """Frames that stop well before the container's declared end, or candidates that would not decode, mean a
    damaged file: say so in the result and keep what could be read."""
    info = result.info
    declared = info.declared_duration or info.duration
    short = declared - info.duration > max(1.0, 0.05 * declared)
    missing = requested - result.decoded
    if short or missing > max(1, requested // 20) or getattr(decoder, "errors", 0):
        result.errors.append(f"the video is damaged or truncated: {result.decoded} of {requested} sampled frames "
                             f"decoded, up to {result.frames[-1].time:.1f} s of {declared:.1f} s; fix: {DAMAGED_FIX}")
