"""The processor threads' work on a GPU host: pictures to pixel values on the CPU against on the GPU.

Two tables. The processor alone (`TransformersEngine.processor_inputs`) on a video window (10 frames at the
engine's 682x384), a scanned page and 16 windows: wall and CPU milliseconds (CPU counts every thread), and the
largest difference between the two devices' pixel values. Then a wave of 128 windows prepared as a bulk loop
prepares them (`TransformersEngine.prepare`: processor, RoPE positions, packing, the copy to the GPU; groups of 16
on the engine's processor threads), each window's frames lazily decoded JPEGs as the sampler keeps them.

The processor's work does not depend on the model's size, so the tiny Qwen3-VL that the tests build is enough:
`python tests/tiny_qwen3vl.py DIR`, then `python -m bench.processor_gpu --model-dir DIR` (a CPU-only host runs the
CPU rows alone).
"""
from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.report import markdown_table, publish
from kb import prompts
from kb.config import Settings
from kb.engines import transformers_qwen as tq
from kb.types import Request, VideoClip

FRAME = (682, 384)  # an hour of 720p video's frames at the engine's budget (256 visual tokens)
WAVE, GROUP = 128, 16


def textured(seed: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB picture with gradients and grain: JPEG sizes like a video frame's, not like a flat test card."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = (x * (seed + 1) + y * 3) % 256
    rgb = np.stack([base, np.roll(base, 7 * seed, 0), 255 - base], -1) + rng.integers(0, 24, (size[1], size[0], 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def window(frames: list[bytes]) -> Request:
    """A video window as ingest hands it over: its kept frames opened, not yet decoded (the thread decodes them)."""
    opened = [Image.open(io.BytesIO(frame)) for frame in frames]
    return Request(task="video", prompt=prompts.VIDEO_WINDOW, max_new_tokens=768,
                   video=VideoClip(frames=opened, frame_indices=list(range(0, 25 * len(frames), 25)), fps=25.0,
                                   total_frames=90000))


def timed(run: Any, repeat: int, gpu: bool) -> tuple[float, float]:
    """Mean wall and CPU seconds of `run` after one warm-up."""
    run()
    if gpu:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        run()
    if gpu:
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def ms(engine: tq.TransformersEngine, requests: list[Request], on_gpu: bool, gpu: bool) -> str:
    wall, cpu = timed(lambda: engine.processor_inputs(requests, on_gpu=on_gpu), 5, gpu)
    return f"{wall * 1e3:.1f} / {cpu * 1e3:.1f}"


def processor_rows(engine: tq.TransformersEngine, frames: list[bytes], gpu: bool) -> list[list[object]]:
    page = Request(task="ocr", prompt=prompts.OCR_PAGE, images=[Image.fromarray(textured(1, (990, 1400)))])
    rows: list[list[object]] = []
    for name, requests in (("a video window", [window(frames)]), ("a page", [page]),
                           ("16 windows", [window(frames) for _ in range(GROUP)])):
        for request in requests:  # decoded once here: this table times the processor, not the JPEG decoder
            if request.video is not None:
                request.video.frames[:] = [frame.convert("RGB") for frame in request.video.frames]
        row: list[object] = [name, ms(engine, requests, False, gpu)]
        if gpu:
            cpu, on_gpu = (engine.processor_inputs(requests, on_gpu=where) for where in (False, True))
            key = "pixel_values_videos" if "pixel_values_videos" in cpu else "pixel_values"
            diff = (cpu[key].float() - on_gpu[key].float().cpu()).abs()
            same_ids = torch.equal(cpu["input_ids"], on_gpu["input_ids"])
            row += [ms(engine, requests, True, gpu),
                    f"{diff.max():.4f} ({diff.mean():.5f}), token ids {'equal' if same_ids else 'DIFFER'}"]
        rows.append(row)
    return rows


def wave_rows(engine: tq.TransformersEngine, frames: list[bytes], gpu: bool, waves: int) -> list[list[object]]:
    """A wave of windows through `prepare` on the engine's processor threads, the processor on each device."""
    pool = ThreadPoolExecutor(max_workers=engine.processor_threads)
    rows: list[list[object]] = []
    setting = tq.PIXELS_ON_GPU
    try:
        for on_gpu in (False, True) if gpu else (False,):
            tq.PIXELS_ON_GPU = on_gpu
            for wave in range(waves):
                groups = [[window(frames) for _ in range(GROUP)] for _ in range(WAVE // GROUP)]
                wall, cpu = time.perf_counter(), time.process_time()
                list(pool.map(engine.prepare, groups))
                if gpu:
                    torch.cuda.synchronize()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                rows.append([f"processor on the {'GPU' if on_gpu else 'CPU'}, wave {wave + 1}", f"{wall:.2f}",
                             f"{WAVE / wall:.0f}", f"{cpu / WAVE * 1e3:.0f}"])
    finally:
        tq.PIXELS_ON_GPU = setting
        pool.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a Qwen3-VL checkpoint folder (tiny is enough)")
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the markdown section to this file, not docs/benchmarks.md")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    engine = tq.TransformersEngine(Settings(engine="transformers", model=str(args.model_dir),
                                            device="cuda" if gpu else "cpu", batch_size=GROUP))
    frames = [jpeg(textured(seed, FRAME)) for seed in range(10)]
    alone = processor_rows(engine, frames, gpu)
    header = ["input", "on the CPU: wall / CPU ms"] + (["on the GPU: wall / CPU ms",
                                                          "largest pixel difference (mean)"] if gpu else [])
    waves = wave_rows(engine, frames, gpu, args.waves)
    body = (f"`python -m bench.processor_gpu --model-dir DIR --waves {args.waves}`; {engine.processor_threads} "
            f"processor threads; frames {FRAME[0]}x{FRAME[1]} JPEGs of {np.mean([len(f) for f in frames]) / 1e3:.0f} "
            f"kB.\n\nThe processor alone (5 calls each, after one):\n\n{markdown_table(header, alone)}\n\n"
            f"A wave of {WAVE} windows prepared in groups of {GROUP} (`TransformersEngine.prepare`; the frames decoded "
            f"by the threads):\n\n"
            + markdown_table(["processor threads' work", f"a wave of {WAVE} windows, s", "windows/s",
                              "CPU ms a window"], waves))
    publish("The processor threads on a GPU host (`python -m bench.processor_gpu`)", body, args.out)


if __name__ == "__main__":
    main()
