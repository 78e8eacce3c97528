"""End to end on a GPU host: `python -m ingest` on a folder of scanned PDFs, through the embedded Chroma store.

Scanned PDFs are made from real ones: the pages of the given PDFs rasterised (150 dpi, greyscale JPEG) into
image-only PDFs, so the reader sees scans (no text layer) and every page goes to the engine. The models are
random-weight copies of the real architectures (no weights can be downloaded where this runs): Qwen3-VL-4B for
the engine (bench/engine_gpu.py) and Qwen3-Embedding-0.6B for the embedder, on the GPU. A random model never ends
a page by itself, so each page's output length is drawn from the real distribution (bench/engine_gpu.py) and set
as its token cap, and its tokens are kept to printable characters so chunks hold text; the loop guard is off.
Everything else is the real `python -m ingest` (run in this process, so each stage can be timed).

With `--video-minutes N --clips DIR` the folder is instead one N-minute 1280x720 MP4 made by cycling the real clips
in DIR (each pass stamped with its number, so passes differ; written in parallel segments, then joined without
re-encoding), ingested the same way: decoding, sampling, the engine, embedding and the store, each timed.

`--load-workers N` sets the processes that load page images and window frames ahead of the engine
(ingest/pipeline.py LOAD_WORKERS; 0: each is loaded on the main thread when its engine batch is made, as before).
`--slice-workers N` sets the processes that sample a long video in time slices (ingest/video_slices.py
SLICE_WORKERS; 0: one pass on the main thread, as before) and `--seek-frames` drops the engine's frames kept while
sampling (ingest/video_sampling.py PICTURE_BUDGET = 0), so each window's frames are decoded again, as before.
`--stream-piece N` hands a video's windows to the engine N at a time while it is still sampled (ingest/pipeline.py
STREAM_PIECE; 0: the engine's rows).

`--runs N` runs `python -m ingest` N times in this one process, each into a fresh knowledge base (KB_HOME: WORK/kb,
then WORK/kb-run2, ...): one row per run (end to end, pages/min, engine s, the engine's warm-up s from its
DecodeStats: seconds making the KV cache, recording decode steps and the first prefill group's excess over a later
group; steps recorded, the drained tail, padding, GPU busy, rows) and each run's per-stage table, after a line of
its engine calls: the prefill groups begun while the files were read against those after (ms a row, the slowest with
when they began), Python's garbage collections during the run, and when a video's time slices were merged (how far
into the video, at which second of the run). The first run is a fresh process's. A later run loads everything again
as `python -m ingest` does (the engine's weights, processor and KV cache, its decode steps recorded anew; the
embedder; the store), once the earlier run's engine is collected and the GPU's cached memory emptied (a line says
whether an engine is still held), and reuses only what a process keeps: imported modules, the CUDA context,
torch.compile's code for the engine's functions (in memory, and in TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR on
disk). So run 1 against run 2 is the compile's share; what run 2 still spends warming up is the cache and the
recording. `--kept-runs K`: then K more runs that take the engine of the run before, as a worker does
(ingest/__main__.py run_worker: loaded once, its KV cache and recorded steps kept), and the reader processes of
the run before, as a worker keeps them between jobs (ingest/worker.py): no load, no recording; `--runs 2
--kept-runs 1` gives all three in one call. `--kept-variants` gives the kept runs settings in turn (e.g.
`readers=0`: a kept run that starts its own reader processes, as every run did before 2026-12-03). Both compile
caches live in WORK/compile-cache, so a later call on the same machine finds what an earlier one compiled (as a
user's second `python -m ingest` finds the first's in their cache folder); `--fresh-compile-cache` empties that
folder first, so run 1 compiles everything.

On the lent GPU host, whose image lacks chromadb, PyMuPDF, tantivy, PyAV and decord: bench/gpu_host.sh downloads
their wheels here, installs them there in two calls, and makes the hour of video and the random models once.

On a CPU (a smoke test, no GPU figures; nothing is recorded or compiled there): the tiny Qwen3-VL written by
`python tests/tiny_qwen3vl.py DIR` (a folder of its own: the bench rewrites its generation config), then
`--device cpu --model-dir DIR --embed-model bundled:all-MiniLM-L6-v2 --length-scale 0.01 --pages 6 --out FILE`.

usage: python -m bench.ingest_gpu --pdfs DIR [--pages 240] [--runs 1] [--kept-runs 0] [--fresh-compile-cache]
                                  [--work DIR] [--model-dir DIR] [--out FILE]
       python -m bench.ingest_gpu --video-minutes 60 --clips DIR [--fps 25] [...]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import runpy
import shutil
import sys
import time
import weakref
import zlib
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.engine_gpu import GpuBusy, build_random_4b, one_time, page_lengths
from bench.report import markdown_table, publish

DPI = 150


def rasterise(task: tuple[str, int, int]) -> bytes:
    """A page as the JPEG a scanner makes; from the second pass on, stamped with its pass (a distinct file)."""
    import pymupdf

    path, page, copy = task
    with pymupdf.open(path) as doc:
        pix = doc[page].get_pixmap(dpi=DPI, colorspace=pymupdf.csGRAY)
        if copy:
            pix.set_rect(pymupdf.IRect(0, 0, 12 + copy % 64, 4), ((copy * 37) % 200,))  # a mark in the corner
        return pix.tobytes("jpeg", jpg_quality=75)


def make_scans(pdfs: Path, out: Path, pages: int) -> int:
    """Image-only copies of the PDFs in `pdfs`, `pages` pages in all (spread over the files); pages written. Past
    the files' pages, they are read again as further passes (`scan-STEM-pK.pdf`), each page marked with its pass,
    so an archive-sized run has no two files alike (ingest would copy a twin without reading it)."""
    import pymupdf

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(pdfs.glob("*.pdf"))
    counts = {f: pymupdf.open(f).page_count for f in files}
    plan: list[tuple[Path, int, int]] = []  # (file, pages taken, pass)
    left, copy = pages, 0
    while left > 0:
        share, taken = max(1, left // len(files)), 0
        for n, f in enumerate(sorted(files, key=counts.get)):  # small files whole, the rest share what is left
            take = min(counts[f], left - taken, max(share, (left - taken) // max(1, len(files) - n)))
            if take > 0:
                plan.append((f, take, copy))
                taken += take
        left -= taken
        copy += 1
    tasks = [(str(f), n, k) for f, take, k in plan for n in range(take)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = list(pool.map(rasterise, tasks, chunksize=4))
    written = 0
    for f, take, k in plan:
        scan = pymupdf.open()
        src = pymupdf.open(f)
        for n in range(take):
            rect = src[n].rect
            page = scan.new_page(width=rect.width, height=rect.height)
            page.insert_image(page.rect, stream=images[written])
            written += 1
        scan.save(out / (f"scan-{f.stem}.pdf" if k == 0 else f"scan-{f.stem}-p{k}.pdf"))
    return written


def _clip_frames(path: Path) -> list:
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_segment(task: tuple[list[str], str, int, int, int, tuple[int, int]]) -> int:
    """Frames [first, first + count) of the endless cycle of the clips, as an MP4 (mp4v) of its own."""
    import cv2

    files, out, first, count, fps, size = task
    clips = [[cv2.resize(f, size) for f in _clip_frames(Path(name))] for name in files]
    cycle_length = sum(len(c) for c in clips)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for n in range(first, first + count):
        cycle, at = divmod(n, cycle_length)
        for name, frames in zip(files, clips):
            if at < len(frames):
                frame = frames[at].copy()
                cv2.putText(frame, f"pass {cycle} - {Path(name).stem}", (40, 680), cv2.FONT_HERSHEY_SIMPLEX, 1.2,
                            (255, 255, 255), 2)
                writer.write(frame)
                break
            at -= len(frames)
    writer.release()
    return count


def join_segments(parts: list[Path], out: Path) -> None:
    """One MP4 of the segments, packets copied (no re-encoding), each segment's timestamps moved after the last."""
    import av

    with av.open(str(out), "w") as joined:
        stream, offset = None, 0
        for part in parts:
            with av.open(str(part)) as source:
                video = source.streams.video[0]
                if stream is None:
                    stream = joined.add_stream_from_template(video)
                last = 0
                for packet in source.demux(video):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    last = max(last, packet.pts + (packet.duration or 0))
                    packet.stream = stream
                    joined.mux(packet)
                offset = last


def make_video(clips: Path, out: Path, minutes: float, fps: int, size: tuple[int, int] = (1280, 720)) -> float:
    """An MP4 of `minutes` cycling the video files under `clips` (resized, each played whole, every pass stamped
    with its number so no two passes are the same picture), written in segments by all cores. Seconds written."""
    from ingest.video import VIDEO_EXTENSIONS

    files = sorted(str(p) for p in clips.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise SystemExit(f"no video files under {clips}")
    out.parent.mkdir(parents=True, exist_ok=True)
    total = int(minutes * 60 * fps)
    workers = os.cpu_count() or 1
    step = -(-total // workers)
    tasks = [(files, str(out.parent / f"part-{n:03d}.mp4"), first, min(step, total - first), fps, size)
             for n, first in enumerate(range(0, total, step))]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(write_segment, tasks))
    parts = [Path(t[1]) for t in tasks]
    join_segments(parts, out)
    for part in parts:
        part.unlink()
    return written / fps


def printable_only(model_dir: Path) -> None:
    """The random engine model writes printable ASCII only and never ends a page by itself (lengths are forced)."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = GenerationConfig.from_pretrained(model_dir)
    vocab = json.loads((model_dir / "config.json").read_text())["text_config"]["vocab_size"]
    keep = {tokenizer.convert_tokens_to_ids(chr(c)) for c in range(0x21, 0x7F)}
    keep.add(tokenizer.convert_tokens_to_ids("Ġ"))  # the byte-level space
    config.suppress_tokens = [t for t in range(vocab) if t not in keep]
    config.save_pretrained(model_dir)


def build_random_embedder(out: Path) -> None:
    """Qwen3-Embedding-0.6B's architecture with random weights as a sentence-transformers folder (last-token
    pooling, normalised). Its tokenizer is byte-level, so sequences are capped at 512 tokens: about what a
    1200-character chunk takes with the real tokenizer."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import Qwen3Config, Qwen3Model

    from tests.tiny_qwen3vl import build_processor

    tokenizer = build_processor()[0].tokenizer
    config = Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    raw = out / "raw"
    Qwen3Model(config).to(torch.bfloat16).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=512)
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="lasttoken")
    SentenceTransformer(modules=[word, pool, models.Normalize()]).save(str(out))


class Stages:
    """Seconds spent in each stage, by wrapping the functions that do it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.marks: dict[str, float] = {}  # when something happened in the run (time.perf_counter)

    def mark(self, owner, name: str, event: str, first: bool) -> None:
        """Note when `name` is called: its first call's start (`first`), else its last call's end."""
        original = getattr(owner, name)

        def marked(*args, **kwargs):
            if first:
                self.marks.setdefault(event, time.perf_counter())
            try:
                return original(*args, **kwargs)
            finally:
                if not first:
                    self.marks[event] = time.perf_counter()

        setattr(owner, name, marked)

    def wrap(self, owner, name: str, stage: str, sync: bool = False) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if sync and torch.cuda.is_available():
                    synchronize(args[0] if args else None)
                self.seconds[stage] += time.perf_counter() - started
                self.calls[stage] += 1

        setattr(owner, name, timed)


def synchronize(holder) -> None:
    """Wait for the GPU, but not while the engine records a decode step: a sync from another thread breaks a CUDA
    graph capture ("operation not permitted when stream is capturing": run Q, where a warm-up that ran out of
    memory was retried by the first engine call and recorded while the main thread waited here). `holder`: what
    the wrapped function was called on; an Ingestor holds the engine, whose `recording` lock the pipeline takes
    for its own GPU work beside bulk decoding."""
    lock = getattr(getattr(holder, "_engine", None), "recording", None)
    with lock if lock is not None else contextlib.nullcontext():
        torch.cuda.synchronize()


ENGINE_STAGE = "engine (processor, vision, decode), waited for by the main thread"
FIRST_BATCH = "first batch handed to the engine"
READ_ENDED = "last file read"
READ_BEGAN = "first file's read began"
LOAD_ENGINE_STAGE = "load the engine (weights to the GPU, processor)"
WAIT_STAGE = "wait for page images / window frames (main thread, before each engine call)"


class SliceTimeline:
    """When each time slice of a sampled video was merged (ingest/video_slices.py `_merge`, in order) and how far
    into the video it reached: what the engine's first batch waits for."""

    def __init__(self) -> None:
        import ingest.video_slices as video_slices

        self.merged: list[tuple[float, float]] = []  # (time.perf_counter, the slice's last frame kept or weighed, s)
        self.began: list[float] = []  # when a video's sampling in slices began (its file opened, the pool asked for)
        original = video_slices._merge
        original_sample = video_slices._sample_in_processes

        def sample(*args, **kwargs):
            self.began.append(time.perf_counter())
            return original_sample(*args, **kwargs)

        video_slices._sample_in_processes = sample

        def merge(result, sampler, part, on_keep):
            original(result, sampler, part, on_keep)
            self.merged.append((time.perf_counter(), max([c.time for c in part.head] + [f.time for f in part.kept],
                                                         default=0.0)))

        video_slices._merge = merge

    def during(self, begin: float, end: float) -> str:
        """Seconds into the run at which the video was merged up to each 7 minutes (its last frame kept or weighed
        within half a minute of it: a still scene keeps a frame every few seconds only), and the slices merged."""
        part = [(at - begin, reached) for at, reached in self.merged if begin <= at < end]
        if not part:
            return "no video sampled in slices"
        marks = []
        for minutes in range(7, int(max(reached for _, reached in part) // 60) + 1, 7):
            at = next(at for at, reached in part if reached >= 60 * minutes - 30)
            marks.append(f"{minutes} min at {at:.1f} s")
        began = [at - begin for at in self.began if begin <= at < end]
        return (f"sampling in slices began at {began[0]:.1f} s, {len(part)} slices merged, the first at "
                f"{part[0][0]:.1f} s; the video's first " + ", ".join(marks) + f"; the last at {part[-1][0]:.1f} s")


class GcPauses:
    """Python's cyclic garbage collections while a run goes on: each stops every thread of the process, the engine
    loop's too (its kernels are launched from Python), so a long one leaves the GPU idle."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []  # (time.perf_counter at its start, generation, seconds)
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((self._started, info["generation"], time.perf_counter() - self._started))

    def during(self, begin: float, end: float) -> str:
        """The collections between two times (time.perf_counter): count and seconds by generation, the longest."""
        part = [p for p in self.pauses if begin <= p[0] < end]
        by_generation = ", ".join(
            f"gen {g}: {sum(1 for p in part if p[1] == g)} ({sum(p[2] for p in part if p[1] == g):.2f} s)"
            for g in range(3))
        longest = sorted(part, key=lambda p: -p[2])[:3]
        return (f"garbage collections {by_generation}; longest "
                + (", ".join(f"{s:.2f} s (gen {g} at {at - begin:.1f} s)" for at, g, s in longest) or "none"))


@dataclasses.dataclass
class EngineCall:
    """One engine decode loop of a run (a lone call, or the batches ingest handed over while it decoded): its
    DecodeStats and the rows it decoded at once."""

    stats: object
    rows: int


def instrument(stages: Stages, scale: float) -> tuple[list[EngineCall], list[float]]:
    """Timers around each stage; each page's token cap drawn from the real distribution (seeded by the page).
    Also: each engine call's stats and the seconds of picture loading per run."""
    import ingest.pipeline as pipeline
    import kb.engines.transformers_qwen as tq
    from kb.embed import Embedder
    from kb.store import Store

    tq.repeating_tail = lambda *a, **k: False  # random weights loop; the guard would cut pages short
    original_request = pipeline.Ingestor._request

    def request(self, unit, picture):
        made = original_request(self, unit, picture)
        if unit.task == "video":  # a window keeps its own token cap (KB_MAX_VIDEO_TOKENS) unless WINDOW_TOKENS says
            return dataclasses.replace(made, max_new_tokens=WINDOW_TOKENS) if WINDOW_TOKENS else made
        seed = zlib.crc32(f"{unit.source.rel}:{unit.page}".encode())
        return dataclasses.replace(made, max_new_tokens=page_lengths(1, scale, seed=seed)[0])

    pipeline.Ingestor._request = request
    calls: list[EngineCall] = []
    loads: list[float] = []  # seconds spent loading pictures (summed over processes), per run
    original_loop = tq._BulkLoop._loop

    def loop(self):  # one decode loop: a lone engine call, or the batches ingest hands over while one decodes
        original_loop(self)
        stats = self.engine.last_stats  # a loop that failed before it drained (out of memory) left the last one's
        if stats is not None and not any(call.stats is stats for call in calls):
            calls.append(EngineCall(stats, self.engine.slots))

    tq._BulkLoop._loop = loop
    stages.wrap(pipeline, "load_engine", LOAD_ENGINE_STAGE, sync=True)
    stages.wrap(pipeline, "read_file", "read (open, text layer, plan; video: decode and sample)")
    stages.mark(pipeline, "read_file", READ_BEGAN, first=True)
    stages.mark(pipeline, "read_file", READ_ENDED, first=False)
    stages.mark(tq.TransformersEngine, "submit", FIRST_BATCH, first=True)
    stages.wrap(pipeline._LoadAhead, "take", WAIT_STAGE)
    original_close = pipeline._LoadAhead.close

    def close(self):
        loads.append(self.load_s)
        original_close(self)

    pipeline._LoadAhead.close = close
    stages.wrap(pipeline.Ingestor, "_collect", ENGINE_STAGE, sync=True)  # batches decode while the next is read
    stages.wrap(Embedder, "embed_documents", "embed chunks (GPU)", sync=True)
    stages.wrap(Store, "replace_sources", "store (Chroma + lexical + manifest; embedding above)")
    return calls, loads


class EngineLoads:
    """Between `python -m ingest` and the engine it loads (ingest.pipeline.load_engine): holds the engine the last
    run loaded, lets go of it before a run that loads its own (`let_go`), or hands it to a run that keeps it, as a
    worker does (ingest/__main__.py run_worker: loaded once, its KV cache and recorded decode steps kept)."""

    def __init__(self) -> None:
        import ingest.pipeline as pipeline

        self.last = None
        self.keep = False
        self.loaded: list = []  # weak references to every engine loaded
        load = pipeline.load_engine

        def load_or_keep(settings):
            if self.keep and self.last is not None:
                return self.last
            self.last = load(settings)
            self.loaded.append(weakref.ref(self.last))
            return self.last

        pipeline.load_engine = load_or_keep

    def let_go(self) -> None:
        """Free the last run's engine, as the end of its process would: the next engine then sizes its rows from
        the same free memory. Says whether an engine is still held (the next would load beside it)."""
        self.last = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        held = sum(ref() is not None for ref in self.loaded)
        print(f"{len(self.loaded)} engine(s) loaded so far, {held} still in memory"
              + (": WARNING, the next run loads beside them (fewer free bytes, maybe fewer rows)" if held else ""),
              flush=True)


@dataclasses.dataclass
class Run:
    """One `python -m ingest` of the folder into its own fresh knowledge base."""

    number: int
    how: str  # what it found loaded
    seconds: float
    code: int
    chunks: int
    busy: float
    stages: dict[str, float]
    calls: dict[str, int]
    engine_calls: list[EngineCall]
    load_s: float  # picture loading, summed over processes
    marks: dict[str, float]  # seconds from the run's start
    started: float  # time.perf_counter at the run's start
    gc: str  # Python's garbage collections during the run (GcPauses.during)
    slices: str  # when the video's slices were merged (SliceTimeline.during)

    def at(self, event: str) -> str:
        return f"{self.marks[event]:.1f}" if event in self.marks else "-"

    def total(self, field: str) -> float:
        return sum(getattr(c.stats, field) for c in self.engine_calls)

    @property
    def padding(self) -> float:
        return 1 - self.total("tokens") / max(1, self.total("row_steps"))

    @property
    def warm_up_s(self) -> float:
        return self.total("warm_up_s")

    def prefill_while_reading(self) -> str:
        """Prefill groups that began while the files were still read (the host's cores busy sampling or rendering)
        against those after: ms a row each, and the slowest groups with when they began (seconds of the run)."""
        read_ended = self.marks.get(READ_ENDED, float("inf"))
        groups = [(c.stats.began + at - self.started, seconds, rows) for c in self.engine_calls
                  for at, seconds, rows in list(zip(c.stats.group_at, c.stats.group_s, c.stats.group_rows))[1:]]
        if not groups:
            return "no prefill group after a loop's first"

        def per_row(part: list[tuple[float, float, int]]) -> str:
            rows = sum(r for _, _, r in part)
            return f"{len(part)} groups, {1e3 * sum(s for _, s, _ in part) / rows:.1f} ms a row" if rows else "none"

        while_read = per_row([g for g in groups if g[0] < read_ended])
        after = per_row([g for g in groups if g[0] >= read_ended])
        slowest = sorted(groups, key=lambda g: -g[1] / g[2])[:5]
        return (f"prefill groups after a loop's first: begun while the files were read, {while_read}; after, "
                f"{after}; slowest a row: "
                + ", ".join(f"{1e3 * s / r:.0f} ms ({r} rows at {at:.1f} s)" for at, s, r in slowest))

    def stage_table(self) -> str:
        rows = [[stage, f"{seconds:.1f}", f"{100 * seconds / self.seconds:.0f} %", self.calls[stage]]
                for stage, seconds in self.stages.items()]
        rows.append(["total `python -m ingest` (model loading included)", f"{self.seconds:.1f}", "100 %", 1])
        return markdown_table(["stage", "seconds", "share of the run", "calls"], rows)


# A video window's output length here: 0 keeps each window's token cap (KB_MAX_VIDEO_TOKENS, 768), which a random
# model always reaches; N gives every window N tokens, e.g. 160, the summary + on-screen text + entities that
# bench/engine_gpu.py (and the "43 s of engine time for the 60-minute video") count for a window.
WINDOW_TOKENS = 0
# Settings a kept run may take (--kept-variants): each knob's module constant.
KNOBS = {"first-alone": ("kb.engines.transformers_qwen", "FIRST_GROUP_ALONE", lambda v: bool(int(v))),
         "piece": ("ingest.pipeline", "STREAM_PIECE", int),
         "slices": ("ingest.video_slices", "SLICE_WORKERS", int),
         "window-tokens": (__name__, "WINDOW_TOKENS", int)}  # this module, also when it runs as __main__


# 1: the kept run finds the reader processes of the run before, as a worker's job does; 0: it starts its own.
READERS_KNOB = "readers"


def parse_variant(text: str) -> dict[str, str]:
    """'first-alone=0+piece=32' -> {'first-alone': '0', 'piece': '32'}; ValueError names a bad part."""
    variant = {}
    for part in text.split("+"):
        knob, _, value = part.partition("=")
        if knob == READERS_KNOB and value in ("0", "1"):
            variant[knob] = value
            continue
        if knob not in KNOBS or not value:
            raise ValueError(f"--kept-variants: {part!r} is not KNOB=VALUE with a knob of "
                             f"{', '.join([*KNOBS, READERS_KNOB])}")
        KNOBS[knob][2](value)  # a value the knob cannot take fails here, before any run
        variant[knob] = value
    return variant


def knob_values() -> dict[str, object]:
    """Each knob's value now: taken once the flags are applied, it is what a variant's unnamed knobs go back to."""
    return {knob: getattr(importlib.import_module(module), name) for knob, (module, name, _) in KNOBS.items()}


def apply_variant(variant: dict[str, str], defaults: dict[str, object]) -> None:
    """Set each knob the variant names; those it does not name go back to `defaults` (knob_values)."""
    for knob, (module, name, convert) in KNOBS.items():
        value = convert(variant[knob]) if knob in variant else defaults[knob]
        setattr(importlib.import_module(module), name, value)


def ingest_once(number: int, how: str, scans: Path, home: Path, stages: Stages, calls: list[EngineCall],
                loads: list[float], busy: GpuBusy, pauses: GcPauses, slices: SliceTimeline) -> Run:
    """The real `python -m ingest SCANS` in this process, into the fresh knowledge base `home`."""
    from kb.config import load_settings
    from kb.store import open_store

    shutil.rmtree(home, ignore_errors=True)  # a fresh knowledge base: every file is read
    os.environ["KB_HOME"] = str(home)
    stages.seconds.clear()
    stages.calls.clear()
    stages.marks.clear()
    first_call, first_load = len(calls), len(loads)
    sys.argv = ["ingest", str(scans)]
    started = time.perf_counter()
    code = 0
    with busy:
        try:
            runpy.run_module("ingest", run_name="__main__", alter_sys=True)
        except SystemExit as done:
            code = done.code or 0
    seconds = time.perf_counter() - started
    store = open_store(load_settings({}, env=dict(os.environ)))
    chunks = store.count()
    store.close()
    return Run(number, how, seconds, code, chunks, busy.share, dict(stages.seconds), dict(stages.calls),
               calls[first_call:], sum(loads[first_load:]),
               {event: at - started for event, at in stages.marks.items()}, started,
               pauses.during(started, started + seconds), slices.during(started, started + seconds))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdfs", type=Path, help="folder of real PDFs to rasterise")
    parser.add_argument("--video-minutes", type=float, default=0, help="ingest one video this long instead")
    parser.add_argument("--clips", type=Path, help="folder of real video clips the video is made of")
    parser.add_argument("--fps", type=int, default=25, help="frame rate of the made video")
    parser.add_argument("--pages", type=int, default=240)
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ingest_gpu"))
    parser.add_argument("--model-dir", type=Path, help="random Qwen3-VL-4B folder (built if missing)")
    parser.add_argument("--embed-model", help="an embedder instead of the random Qwen3-Embedding-0.6B (smoke tests)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--load-workers", type=int, help="processes loading pictures ahead (default: the pipeline's)")
    parser.add_argument("--stream-piece", type=int, default=0,
                        help="windows of a video still sampled handed over at once (0: the engine's rows)")
    parser.add_argument("--slice-workers", type=int, help="processes sampling a video in time slices (default: "
                        "ingest/video_slices.py's; 0: one pass)")
    parser.add_argument("--window-tokens", type=int, default=0, help="each video window's output length (0: its "
                        "token cap, which a random model always reaches; 160: bench/engine_gpu.py's realistic one)")
    parser.add_argument("--seek-frames", action="store_true", help="decode each window's frames again instead of "
                        "keeping them while sampling")
    parser.add_argument("--runs", type=int, default=1, help="runs of `python -m ingest` in this process, each into "
                        "a fresh knowledge base (the first is cold, later ones find the compiled code warm)")
    parser.add_argument("--kept-runs", type=int, default=0, help="then this many runs that keep the engine of the "
                        "run before, as a worker does (no reload, no recording)")
    parser.add_argument("--kept-variants", default="", help="settings the kept runs take in turn, comma-separated, "
                        "each KNOB=VALUE joined by '+' (knobs: " + ", ".join([*KNOBS, READERS_KNOB]) + "), e.g. "
                        "'first-alone=1,first-alone=0': interleaved runs on one machine and one engine compare "
                        "settings without the run-to-run drift of separate invocations")
    parser.add_argument("--out", type=Path, help="write the markdown section here, not docs/benchmarks.md")
    parser.add_argument("--fresh-compile-cache", action="store_true", help="empty the compile caches "
                        "(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR: WORK/compile-cache) before run 1")
    args = parser.parse_args()
    if args.runs < 1 or args.kept_runs < 0:
        parser.error("--runs takes 1 or more, --kept-runs 0 or more")
    try:
        variants = [parse_variant(v) for v in args.kept_variants.split(",")] if args.kept_variants else []
    except ValueError as err:
        parser.error(str(err))
    caches = args.work / "compile-cache"  # read when torch first compiles, which is later
    if args.fresh_compile_cache:
        shutil.rmtree(caches, ignore_errors=True)
    os.environ.update({"TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "TRITON_CACHE_DIR": str(caches / "triton")})
    prep = {}
    started = time.perf_counter()
    if args.video_minutes:
        if not args.clips:
            parser.error("--video-minutes needs --clips DIR")
        scans = args.work / "video"
        video = scans / f"video-{args.video_minutes:g}min-{args.fps}fps.mp4"
        if video.exists():  # made by an earlier call (a lent machine's calls are short): reused as it is
            video_s = args.video_minutes * 60
        else:
            shutil.rmtree(scans, ignore_errors=True)
            video_s = make_video(args.clips, video, args.video_minutes, args.fps)
        shutil.rmtree(args.work / "kb", ignore_errors=True)  # a fresh knowledge base: every file is read
        pages = 0
        prep["make the video"] = time.perf_counter() - started
    elif args.pdfs:
        scans = args.work / "scans"
        shutil.rmtree(args.work / "kb", ignore_errors=True)  # a fresh knowledge base: every file is read
        pages = make_scans(args.pdfs, scans, args.pages)
        prep["rasterise"] = time.perf_counter() - started
    else:
        parser.error("give --pdfs DIR or --video-minutes N --clips DIR")
    model_dir = args.model_dir or args.work / "qwen3-vl-4b-random"
    started = time.perf_counter()
    if not (model_dir / "config.json").exists():
        build_random_4b(model_dir)
    printable_only(model_dir)
    embed_dir = args.work / "qwen3-embedding-0.6b-random"
    if not args.embed_model and not (embed_dir / "modules.json").exists():
        build_random_embedder(embed_dir)
    prep["models"] = time.perf_counter() - started
    print(f"{pages} scanned pages or a video in {scans}; prepared in {prep}", flush=True)

    os.environ.update({"KB_ENGINE": "transformers", "KB_MODEL": str(model_dir),
                       "KB_EMBED_MODEL": args.embed_model or str(embed_dir), "KB_DEVICE": args.device})
    stages = Stages()
    calls, loads = instrument(stages, args.length_scale)
    import ingest.pipeline as pipeline

    global WINDOW_TOKENS
    WINDOW_TOKENS = args.window_tokens
    if args.load_workers is not None:
        pipeline.LOAD_WORKERS = args.load_workers
    pipeline.STREAM_PIECE = args.stream_piece
    engines = EngineLoads()
    workers = pipeline.load_workers()
    import ingest.video_sampling as video_sampling
    import ingest.video_slices as video_slices

    if args.slice_workers is not None:
        video_slices.SLICE_WORKERS = args.slice_workers
    if args.seek_frames:
        video_sampling.PICTURE_BUDGET = 0
    sampling = (f"{video_slices.slice_workers()} processes sampling in time slices, "
                f"{'frames decoded again' if args.seek_frames else 'frames kept while sampling'}; ")
    busy, pauses, slices = GpuBusy(), GcPauses(), SliceTimeline()
    from ingest.pdf import reader_processes

    runs: list[Run] = []
    worker_readers = contextlib.ExitStack()
    defaults = knob_values()
    for number in range(1, args.runs + args.kept_runs + 1):
        engines.keep = number > args.runs
        if number == 1:
            how = "first in the process (compiles, records)"
        elif engines.keep:
            how = "same process, the run before's engine kept (a worker)"
        else:
            how = "same process, engine loaded again (compiled code warm)"
            engines.let_go()
        if number == args.runs and args.kept_runs:  # a worker keeps its reader processes from job to job
            readers = worker_readers.enter_context(reader_processes())
        if engines.keep:
            variant = variants[(number - args.runs - 1) % len(variants)] if variants else {}
            apply_variant(variant, defaults)
            if variant.get(READERS_KNOB) == "0":
                readers.close()  # this run starts its own (kept for the next)
            else:
                how = how.replace("engine kept", "engine and reader processes kept")
            if variant:
                how += ", " + "+".join(f"{k}={v}" for k, v in variant.items())
        home = args.work / ("kb" if number == 1 else f"kb-run{number}")
        runs.append(ingest_once(number, how, scans, home, stages, calls, loads, busy, pauses, slices))
        print(f"run {number} ({how}): {runs[-1].seconds:.1f} s, engine {runs[-1].stages.get(ENGINE_STAGE, 0):.1f} "
              f"s, warm-up {runs[-1].warm_up_s:.1f} s; {runs[-1].gc}", flush=True)
    worker_readers.close()

    def rate(run: Run) -> str:
        if args.video_minutes:
            return f"({video_s / run.seconds:.0f})"
        return f"{pages * 60 / run.seconds:.0f}"

    run_rows = [[run.number, run.how, f"{run.seconds:.1f}", rate(run), f"{run.stages.get(ENGINE_STAGE, 0):.1f}",
                 f"{run.stages.get(LOAD_ENGINE_STAGE, 0):.1f}", run.at(FIRST_BATCH), run.at(READ_ENDED),
                 f"{run.warm_up_s:.1f} ({run.total('slab_s'):.1f} + {run.total('record_s'):.1f} + "
                 f"{run.total('prefill_warm_up_s'):.1f})",
                 int(run.total("recorded")), f"{run.total('tail_s'):.1f}", f"{run.padding:.1%}",
                 f"{run.busy:.0%}", ",".join(str(r) for r in sorted({c.rows for c in run.engine_calls})),
                 run.chunks, run.code] for run in runs]
    header = ["run", "found", "end to end s", "pages/min (video s per s)", "engine s", "engine load s",
              "first batch handed at s", "reading ended at s",
              "warm-up s (KV cache + recording + first prefill group)", "steps recorded", "tail s", "padding",
              "GPU busy", "rows", "chunks", "exit code"]
    if args.video_minutes:
        what = (f"a {args.video_minutes:g}-minute 1280x720 video at {args.fps} fps ({video_s:.0f} s, made from the "
                f"clips in {args.clips.name}/, {prep['make the video']:.0f} s to make, not timed)")
    else:
        what = f"{pages} scanned pages (from {len(list(args.pdfs.glob('*.pdf')))} PDFs of mmlongbench_dev)"
    untimed = ", ".join(k for k in prep if k != "models")
    summary = (f"{what}, {len(runs)} run(s) of `python -m ingest` in one process, each into a fresh knowledge base; "
               f"{workers} processes loading pictures ahead; {sampling if args.video_minutes else ''}"
               f"GPU busy over each whole run. Output lengths drawn at {args.length_scale} x the real "
               f"distribution (pages; video windows: "
               f"{f'{args.window_tokens} tokens each' if args.window_tokens else 'their token cap'}). "
               f"Warm-up = the engine's one-time work "
               f"(DecodeStats: seconds making the KV cache, recording decode steps, the compile they trigger "
               f"included, and the first prefill group's time beyond a later group's for as many rows); tail = "
               f"after the last group joined. "
               f"Not timed: {untimed} and building the random models ({prep['models']:.0f} s).")
    command = command_line(args, workers, video_slices.slice_workers())
    # Settings given through the environment (the engine reads them as `python -m ingest` would).
    given = " ".join(f"{k}={os.environ[k]}" for k in ("KB_QUANT", "KB_KV_CACHE", "KB_BATCH_SIZE") if k in os.environ)
    body = f"`{given + ' ' if given else ''}python -m bench.ingest_gpu {command}`: {summary}\n\n"
    body += markdown_table(header, run_rows)
    for run in runs:
        engine_s = max(run.stages.get(ENGINE_STAGE, 0), 1e-9)
        tokens = run.total("tokens")
        body += (f"\n\nRun {run.number} ({run.how}), per stage: engine {tokens:.0f} tokens kept "
                 f"({tokens / engine_s:.0f} tok/s of engine time), {run.total('refills'):.0f} refills, processor "
                 f"waits {run.total('wait_s'):.1f} s, prefill {run.total('prefill_s'):.1f} s; "
                 f"{run.load_s:.1f} s of picture loading in all. Engine calls: "
                 + "; ".join(f"{c.stats.requests} requests on {c.rows} rows, "
                             f"{one_time(c.stats)}" for c in run.engine_calls)
                 + f"; {run.prefill_while_reading()}; {run.gc}; the first file's read began at "
                 f"{run.at(READ_BEGAN)} s; {run.slices}.\n\n{run.stage_table()}")
    publish("Ingest end to end on GPU (scanned PDFs through Chroma)", body, args.out)


def command_line(args: argparse.Namespace, workers: int, slice_workers: int) -> str:
    command = (f"--video-minutes {args.video_minutes:g} --clips DIR --fps {args.fps}" if args.video_minutes
               else f"--pdfs DIR --pages {args.pages}") + f" --load-workers {workers}"
    if args.video_minutes:
        command += f" --slice-workers {slice_workers}" + (" --seek-frames" if args.seek_frames else "")
        command += f" --stream-piece {args.stream_piece}" if args.stream_piece else ""
        command += f" --window-tokens {args.window_tokens}" if args.window_tokens else ""
    if args.runs != 1 or args.kept_runs:
        command += f" --runs {args.runs}" + (f" --kept-runs {args.kept_runs}" if args.kept_runs else "")
    if args.kept_variants:
        command += f" --kept-variants '{args.kept_variants}'"
    if args.fresh_compile_cache:
        command += " --fresh-compile-cache"
    return command


if __name__ == "__main__":
    main()
