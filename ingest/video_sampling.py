"""Scene-aware frame sampling of a video: which decoded frames are worth showing the engine.

Sampling looks at candidate frames at a target rate (default 1/s) and keeps a candidate when it differs from
the last kept frame: a scene cut, a visible change, or a change of on-screen text (ingest/video_changes.py).
A still scene keeps one frame every `max_gap` seconds. Decoding is ingest/video_decoders.py.

With `frame_pixels` set, candidates are decoded once at the engine's size and each kept frame is kept as a JPEG
at that size too, so the engine's frames need no second decode (seeking in the file again costs far more than
the encode). A long video is sampled in time slices by several processes: ingest/video_slices.py.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from ingest.video_changes import Change, Features, compare, features
from ingest.video_decoders import DAMAGED_FIX, Decoder, Frame, PyAVDecoder, VideoInfo, fit, open_video
from kb.errors import InputError
from kb.i18n import said

log = logging.getLogger(__name__)


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
    # Kept frames are also kept (as JPEG) at this pixel budget for the engine; 0: decoded again when needed.
    frame_pixels: int = 0


MAX_FPS = 2.0
DEFAULT_PARAMS = SamplingParams()
KEYFRAME_QUALITY = 85
# The engine's frames: near-lossless (the video itself is 4:2:0 and lossy), ~50-90 KB at 682 x 384.
PICTURE_QUALITY = 95
# Kept engine frames of one video held in memory at most; beyond it the rest are decoded again when needed
# (an hour of 720p keeps about 3 600 frames, ~250 MB).
PICTURE_BUDGET = 1 << 30


@dataclass
class KeptFrame:
    index: int  # decode index into the source (presentation order)
    time: float  # seconds from the start, from the frame's timestamp
    cut: bool  # first kept frame of a new scene (the very first frame counts as one)
    reason: str  # first, cut, local (e.g. new text), change, still
    keyframe: bytes | None = field(default=None, repr=False, compare=False)  # JPEG at analysis size (thumb_side)
    picture: bytes | None = field(default=None, repr=False, compare=False)  # JPEG at the engine's size, if kept


@dataclass
class SampleResult:
    info: VideoInfo
    frames: list[KeptFrame]
    decoded: int  # candidate frames decoded and compared
    dropped: int  # candidates dropped as near-duplicates of the last kept frame
    errors: list[str] = field(default_factory=list)
    picture_bytes: int = 0  # engine frames held (PICTURE_BUDGET)

    def keep(self, frame: KeptFrame, on_keep: OnKeep | None) -> None:
        """Add a kept frame; its engine picture is dropped once the video's budget is spent."""
        if frame.picture is not None:
            if self.picture_bytes + len(frame.picture) > PICTURE_BUDGET:
                frame.picture = None
            else:
                self.picture_bytes += len(frame.picture)
        self.frames.append(frame)
        if on_keep:
            on_keep(frame, self.info)

    @property
    def kept(self) -> int:
        return len(self.frames)

    @property
    def cuts(self) -> list[float]:
        return [f.time for f in self.frames if f.cut]

    @property
    def duration(self) -> float:
        return self.info.duration


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


class Sampler:
    """The keep decisions in candidate order: each depends on the previous candidate (a cut) and on the last
    kept frame (a change, or a still scene's `max_gap`), nothing else."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.previous: Features | None = None
        self.reference: Features | None = None  # the last kept frame
        self.kept_time = 0.0

    def decide(self, current: Features, time: float) -> str:
        """Why `current` is kept ('' when dropped); the state moves on to it."""
        p = self.params
        reason = "first" if self.reference is None else ""
        if self.previous is not None and is_cut(compare(self.previous, current), p):
            reason = "cut"
        elif self.reference is not None:
            reason = why_keep(compare(self.reference, current), p)
            if not reason and time - self.kept_time >= p.max_gap - 1e-6:
                reason = "still"
        self.previous = current
        if reason:
            self.reference, self.kept_time = current, time
        return reason


@dataclass(frozen=True)
class Sizes:
    """The size candidates are decoded at (the engine's when its frames are kept) and the analysis size."""

    decode: tuple[int, int]
    thumb: tuple[int, int]
    keep_pictures: bool

    @classmethod
    def of(cls, info: VideoInfo, params: SamplingParams) -> Sizes:
        thumb = fit(info.width, info.height, max_side=params.thumb_side)
        if not params.frame_pixels:
            return cls(thumb, thumb, False)
        return cls(fit(info.width, info.height, max_pixels=params.frame_pixels), thumb, True)

    def thumb_of(self, frame: Frame) -> Frame:
        if self.decode == self.thumb:
            return frame
        return np.asarray(cv2.resize(frame, self.thumb, interpolation=cv2.INTER_AREA), dtype=np.uint8)

    def pictures(self, thumb: Frame, frame: Frame) -> tuple[bytes, bytes | None]:
        """The key-frame JPEG and, when kept, the engine's JPEG of one candidate."""
        return _jpeg(thumb, KEYFRAME_QUALITY), _jpeg(frame, PICTURE_QUALITY) if self.keep_pictures else None


def _jpeg(rgb: Frame, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


# -- sampling ---------------------------------------------------------------------------------------------------
def candidates(info: VideoInfo, rate: float) -> list[int]:
    """Frame indices nearest to every 1/rate seconds (by timestamp, so variable frame rate is sampled evenly)."""
    rate = min(rate, MAX_FPS, info.fps or MAX_FPS)
    targets = np.arange(0.0, info.duration, 1.0 / rate)
    # Half a frame of slack: a frame stamped 0.99999 s is the 1 s frame.
    picks = np.searchsorted(info.times, targets - 0.5 / info.fps)
    return sorted({int(i) for i in picks if i < info.total_frames})


OnKeep = Callable[[KeptFrame, VideoInfo], None]  # a kept frame, and the video it is from


def sample_frames(path: Path, params: SamplingParams = DEFAULT_PARAMS, on_keep: OnKeep | None = None,
                  prefer: str = "decord") -> SampleResult:
    """Decode candidate frames at `params.fps` and keep the ones worth looking at.

    `on_keep(frame, info)` receives each kept frame, its `keyframe` JPEG at analysis size (longest side
    `params.thumb_side`) set, e.g. to save it, and the video it was kept from (another one once decoding starts
    over). If decord fails part way, the whole pass is redone with PyAV.
    """
    decoder = open_video(path, prefer)
    try:
        return _sample(decoder, params, on_keep)
    except InputError:
        raise
    except Exception as err:
        if isinstance(decoder, PyAVDecoder):
            raise InputError(str(path), f"the video cannot be decoded ({err})", DAMAGED_FIX, code="video.undecodable",
                             params={"detail": str(err)}) from err
        log.info("decord failed on %s (%s): decoding it with PyAV", path.name, err)
    finally:
        decoder.close()
    decoder = open_video(path, prefer="pyav")
    try:
        return _sample(decoder, params, on_keep)
    except InputError:
        raise
    except Exception as err:
        raise InputError(str(path), f"the video cannot be decoded ({err})", DAMAGED_FIX, code="video.undecodable",
                             params={"detail": str(err)}) from err
    finally:
        decoder.close()


def _sample(decoder: Decoder, params: SamplingParams, on_keep: OnKeep | None) -> SampleResult:
    info = decoder.info
    sizes = Sizes.of(info, params)
    result = SampleResult(info=info, frames=[], decoded=0, dropped=0)
    sampler = Sampler(params)
    picks = candidates(info, params.fps)
    for index, frame in decoder.read(picks, sizes.decode):
        time = float(info.times[index])
        thumb = sizes.thumb_of(frame)
        result.decoded += 1
        reason = sampler.decide(features(thumb), time)
        if not reason:
            result.dropped += 1
            continue
        keyframe, picture = sizes.pictures(thumb, frame)
        result.keep(KeptFrame(index, time, reason in ("first", "cut"), reason, keyframe, picture), on_keep)
    finish(result, decoder.path, len(picks), decoder.skipped_packets)
    return result


def finish(result: SampleResult, path: Path, requested: int, skipped_packets: int) -> None:
    """A sampling with no frame fails; a short or damaged one says so in its errors."""
    if not result.frames:
        raise InputError(str(path), "no frame of the video could be decoded", DAMAGED_FIX,
                         code="video.no_frame_decoded")
    _check_complete(result, requested, skipped_packets)
    info = result.info
    log.info("%s: %.1f s, %d candidates decoded, %d kept, %d dropped, %d cuts (%s)", path, info.duration,
             result.decoded, result.kept, result.dropped, len(result.cuts), info.backend)


def _check_complete(result: SampleResult, requested: int, skipped_packets: int) -> None:
    """Frames that stop well before the container's declared end, or candidates that would not decode, mean a
    damaged file: say so in the result and keep what could be read."""
    info = result.info
    declared = info.declared_duration or info.duration
    short = declared - info.duration > max(1.0, 0.05 * declared)
    missing = requested - result.decoded
    if short or missing > max(1, requested // 20) or skipped_packets:
        decoded_until, declared_s = f"{result.frames[-1].time:.1f}", f"{declared:.1f}"
        result.errors.append(said(f"the video is damaged or truncated: {result.decoded} of {requested} sampled frames "
                                  f"decoded, up to {decoded_until} s of {declared_s} s; fix: {DAMAGED_FIX}",
                                  "said.video.truncated", decoded=result.decoded, requested=requested,
                                  until=decoded_until, declared=declared_s))
