"""Scene-aware frame sampling of a video: which decoded frames are worth showing the engine.

Sampling looks at candidate frames at a target rate (default 1/s) and keeps a candidate when it differs from
the last kept frame: a scene cut, a visible change, or a change of on-screen text (ingest/video_changes.py).
A still scene keeps one frame every `max_gap` seconds. Decoding is ingest/video_decoders.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

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


MAX_FPS = 2.0
DEFAULT_PARAMS = SamplingParams()


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


OnKeep = Callable[[KeptFrame, Frame], None]


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
        raise InputError(str(decoder.path), "no frame of the video could be decoded", DAMAGED_FIX,
                         code="video.no_frame_decoded")
    _check_complete(decoder, result, len(picks))
    log.info("%s: %.1f s, %d candidates decoded, %d kept, %d dropped, %d cuts (%s)", decoder.path,
             info.duration, result.decoded, result.kept, result.dropped, len(result.cuts), info.backend)
    return result


def _check_complete(decoder: Decoder, result: SampleResult, requested: int) -> None:
    """Frames that stop well before the container's declared end, or candidates that would not decode, mean a
    damaged file: say so in the result and keep what could be read."""
    info = result.info
    declared = info.declared_duration or info.duration
    short = declared - info.duration > max(1.0, 0.05 * declared)
    missing = requested - result.decoded
    if short or missing > max(1, requested // 20) or decoder.skipped_packets:
        decoded_until, declared_s = f"{result.frames[-1].time:.1f}", f"{declared:.1f}"
        result.errors.append(said(f"the video is damaged or truncated: {result.decoded} of {requested} sampled frames "
                                  f"decoded, up to {decoded_until} s of {declared_s} s; fix: {DAMAGED_FIX}",
                                  "said.video.truncated", decoded=result.decoded, requested=requested,
                                  until=decoded_until, declared=declared_s))
