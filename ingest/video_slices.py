"""A long video sampled in time slices by several processes, with the same kept frames as one pass.

Each keep decision depends on the previous candidate (a cut) and on the last kept frame (a change, a still
scene's gap), so a slice cannot decide alone what it keeps at its start. A process decodes its slice (and the
candidate just before it, for the cut test) and decides alone only from its first cut on: a cut is kept whatever
came before, and from a kept frame on both runs hold the same state. The candidates before that first cut (the
head) come back with their features and pictures, and the caller replays them in order with the true state.
Slices are read at most two per process in flight, so memory stays bounded whatever the length. Hosts with
fewer than 4 cores (CI) sample in one pass, as does any video where a process fails.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ingest.video_changes import Features, compare, features
from ingest.video_decoders import Decoder, open_video
from ingest.video_sampling import (
    KeptFrame,
    OnKeep,
    Sampler,
    SampleResult,
    SamplingParams,
    Sizes,
    candidates,
    finish,
    is_cut,
    sample_frames,
)
from kb.errors import InputError

log = logging.getLogger(__name__)

SLICE_SECONDS = 60.0  # one process's task: a minute of video (one seek, then decoding forward)
# Processes that sample one video's slices. None: the host's cores less two (the main thread and the engine's
# processor thread, busy with the files before this one, keep theirs; at most 16) on a host of at least 4 cores,
# none below (a pool costs more than it frees there); 0: always one pass.
SLICE_WORKERS: int | None = None
MIN_CORES = 4
MAX_SLICE_WORKERS = 16


@dataclass
class Candidate:
    """A candidate whose keeping depends on frames before its slice: decided by the caller."""

    index: int
    time: float
    features: Features
    keyframe: bytes
    picture: bytes | None


@dataclass
class SliceResult:
    head: list[Candidate] = field(default_factory=list)  # candidates before the slice's first sure keep
    kept: list[KeptFrame] = field(default_factory=list)  # kept from the first sure keep on
    reference: Features | None = None  # the last frame in `kept`
    last: Features | None = None  # the slice's last candidate
    decoded: int = 0
    dropped: int = 0  # among the candidates from the first sure keep on
    skipped_packets: int = 0
    cpu_s: float = 0.0  # the process's CPU time on this slice


def slice_workers() -> int:
    """Processes that sample one video's slices (SLICE_WORKERS)."""
    if SLICE_WORKERS is not None:
        return SLICE_WORKERS
    cores = len(os.sched_getaffinity(0))
    return min(MAX_SLICE_WORKERS, cores - 2) if cores >= MIN_CORES else 0


def sample(path: Path, params: SamplingParams, on_keep: OnKeep | None = None) -> SampleResult:
    """Sample the video: in time slices across processes when it is long and the host has the cores, else in one
    pass (sample_frames). Either way the same kept frames."""
    workers = slice_workers()
    if workers:
        decoder = open_video(path)
        try:
            info = decoder.info
            picks = candidates(info, params.fps)
            slices = _slices(picks, [float(info.times[i]) for i in picks])
            if len(slices) >= 2:
                return _sample_in_processes(decoder, params, slices, on_keep, workers)
        except InputError:
            raise
        except Exception as err:  # a process failed or died (the one pass below says so if the file is damaged)
            log.warning("sampling %s in slices failed (%r): sampling it in one pass", path.name, err)
        finally:
            decoder.close()
    return sample_frames(path, params, on_keep)


def _slices(picks: list[int], times: list[float]) -> list[list[int]]:
    slices: list[list[int]] = []
    for index, at in zip(picks, times):
        if not slices or at >= SLICE_SECONDS * len(slices):
            slices.append([])
        slices[-1].append(index)
    return slices


def _pool(workers: int, stack: ExitStack) -> ProcessPoolExecutor:
    """The ingest run's reader processes when one is open (ingest/pdf.py), else processes for this file alone."""
    from ingest.pdf import process_pool, shared_pool  # the forkserver processes long PDFs are read with

    return shared_pool(workers) or stack.enter_context(process_pool(workers))


def _sample_in_processes(decoder: Decoder, params: SamplingParams, slices: list[list[int]],
                         on_keep: OnKeep | None, workers: int) -> SampleResult:
    info = decoder.info
    result = SampleResult(info=info, frames=[], decoded=0, dropped=0)
    sampler = Sampler(params)
    skipped, cpu_s = 0, 0.0
    tasks = deque((str(decoder.path), info.backend, params, picks, slices[n - 1][-1] if n else None)
                  for n, picks in enumerate(slices))
    with ExitStack() as stack:
        pool = _pool(workers, stack)
        in_flight: deque[Future[SliceResult]] = deque()
        try:
            while tasks or in_flight:
                while tasks and len(in_flight) < 2 * workers:
                    in_flight.append(pool.submit(sample_slice, *tasks.popleft()))
                part = in_flight.popleft().result()
                _merge(result, sampler, part, on_keep)
                skipped += part.skipped_packets
                cpu_s += part.cpu_s
        finally:  # left early: a shared pool must not keep sampling this file
            for future in in_flight:
                future.cancel()
    finish(result, decoder.path, sum(len(s) for s in slices), skipped)
    log.info("%s: sampled in %d slices by %d processes, %.1f CPU-s in them", decoder.path.name, len(slices), workers,
             cpu_s)
    return result


def _merge(result: SampleResult, sampler: Sampler, part: SliceResult, on_keep: OnKeep | None) -> None:
    """Decide the slice's head with the true state, then take what the slice kept on its own."""
    for c in part.head:
        reason = sampler.decide(c.features, c.time)
        if reason:
            result.keep(KeptFrame(c.index, c.time, reason in ("first", "cut"), reason, c.keyframe, c.picture), on_keep)
        else:
            result.dropped += 1
    for frame in part.kept:
        result.keep(frame, on_keep)
    if part.kept:
        sampler.previous, sampler.reference, sampler.kept_time = part.last, part.reference, part.kept[-1].time
    result.decoded += part.decoded
    result.dropped += part.dropped


# -- in a worker process ----------------------------------------------------------------------------------------
_decoders: dict[tuple[str, str, int, int], Decoder] = {}  # the file this process samples, kept open between slices


def _decoder(path: str, backend: str) -> Decoder:
    stat = os.stat(path)
    key = (path, backend, stat.st_size, stat.st_mtime_ns)
    if key not in _decoders:
        for old in _decoders.values():
            old.close()
        _decoders.clear()
        # One decoding thread: the other processes have the other cores.
        _decoders[key] = open_video(Path(path), prefer=backend, threads=1)
    return _decoders[key]


def sample_slice(path: str, backend: str, params: SamplingParams, picks: list[int], before: int | None
                 ) -> SliceResult:
    """Sample candidates `picks`; `before` is the candidate just before them (None for the video's start)."""
    started = time.process_time()
    decoder = _decoder(path, backend)
    info = decoder.info
    sizes = Sizes.of(info, params)
    sampler = Sampler(params)
    out = SliceResult()
    sure = False  # a keep decided here is the one pass's: from the first cut (or the video's first frame) on
    skipped_before = decoder.skipped_packets
    for index, frame in decoder.read(([before] if before is not None else []) + picks, sizes.decode):
        thumb = sizes.thumb_of(frame)
        current = features(thumb)
        if index == before:
            sampler.previous = current
            continue
        at = float(info.times[index])
        out.decoded += 1
        if not sure:
            first = before is None and out.decoded == 1
            if not first and (sampler.previous is None or not is_cut(compare(sampler.previous, current), params)):
                out.head.append(Candidate(index, at, current, *sizes.pictures(thumb, frame)))
                sampler.previous = current
                continue
            sure = True
        reason = sampler.decide(current, at)
        if not reason:
            out.dropped += 1
            continue
        keyframe, picture = sizes.pictures(thumb, frame)
        out.kept.append(KeptFrame(index, at, reason in ("first", "cut"), reason, keyframe, picture))
    out.reference, out.last = sampler.reference, sampler.previous
    out.skipped_packets = decoder.skipped_packets - skipped_before
    out.cpu_s = time.process_time() - started
    return out
