"""GPU throughput of the `transformers` engine: scanned pages and a 60-minute video, Qwen3-VL-4B architecture.

No weights can be downloaded where this runs, so the real Qwen3-VL-4B architecture is built with random
weights; output lengths are forced (min_new_tokens) so every row generates exactly what a real page or
video window would. Timing covers the engine call as ingest makes it: processor, vision tower, generation.

usage: python -m bench.engine_gpu [--batches 1,8,32,64] [--video-minutes 60] [--out FILE]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import kb.engines.transformers_qwen as tq
from bench.report import markdown_table, write_section
from kb import prompts
from kb.config import load_settings
from kb.types import Request, VideoClip

PAGE_TOKENS = 512  # a dense scanned page transcribed as Markdown
WINDOW_TOKENS = 160  # summary + on-screen text + entities of one video window
WINDOW_SECONDS, FRAMES_PER_WINDOW = 20, 10  # 1 frame/s sampling after scene-change dropping keeps about half


def build_random_4b(out: Path) -> None:
    """Qwen3-VL-4B-Instruct's architecture (text and vision) with random bf16 weights, saved like a checkpoint."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from tests.tiny_qwen3vl import build_processor

    processor, ids = build_processor()
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2560,
                           num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    torch.cuda.empty_cache()


def scanned_page(n: int) -> Image.Image:
    page = Image.new("RGB", (1240, 1754), "white")  # A4 at 150 dpi
    draw = ImageDraw.Draw(page)
    for line in range(60):
        draw.text((90, 90 + line * 26), f"Page {n} line {line}: invoice INV-{n:04d}-{line:02d} total {line * 7.5:.2f}",
                  fill="black")
    return page


def video_window(start_s: int, fps: float = 25.0) -> VideoClip:
    frames = [Image.new("RGB", (640, 360), ((start_s * 7 + k * 20) % 255, 80, 160)) for k in range(FRAMES_PER_WINDOW)]
    step = WINDOW_SECONDS / FRAMES_PER_WINDOW
    indices = [int((start_s + k * step) * fps) for k in range(FRAMES_PER_WINDOW)]
    return VideoClip(frames=frames, frame_indices=indices, fps=fps, total_frames=int(3600 * fps))


def timed(engine: tq.TransformersEngine, requests: list[Request], forced_tokens: int) -> tuple[float, float]:
    engine._net.generation_config.min_new_tokens = forced_tokens
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    ids = engine.generate_ids(requests)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    assert all(len(row) == forced_tokens for row in ids), [len(row) for row in ids]
    return seconds, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--video-minutes", type=int, default=60, help="0 skips the video workload")
    parser.add_argument("--video-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write the markdown section to this file, not docs/benchmarks.md")
    parser.add_argument("--cache", default="dynamic", choices=["dynamic", "static"], help="KB_GENERATION_CACHE")
    parser.add_argument("--quant", default="none", choices=["none", "nf4"], help="KB_QUANT")
    parser.add_argument("--model-dir", type=Path, help="where the random checkpoint is built (reused if present)")
    args = parser.parse_args()
    # Random weights loop easily; the loop guard would then stop rows early and flatter the numbers.
    tq.repeating_tail = lambda *a, **k: False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp)
        started = time.perf_counter()
        if not (model_dir / "config.json").exists():
            build_random_4b(model_dir)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        engine = tq.TransformersEngine(load_settings({"engine": "transformers", "model": str(model_dir),
                                                      "device": "cuda", "generation_cache": args.cache,
                                                      "quant": args.quant}, env={}))
        load_s = time.perf_counter() - started
        weights_gib = torch.cuda.memory_allocated() / 2**30
        print(f"model loaded: {weights_gib:.2f} GiB on the GPU", flush=True)
        variant = f"{args.cache} cache" + (", nf4" if args.quant == "nf4" else "")
        for batch in [int(b) for b in args.batches.split(",")]:
            engine.settings = engine.settings.replace(batch_size=batch)
            pages = [Request("ocr", prompts.OCR_PAGE, [scanned_page(n)], max_new_tokens=PAGE_TOKENS)
                     for n in range(batch)]
            # Warm-up: a static cache compiles per batch shape, so it warms up on the very same batch.
            if args.cache == "static":
                warm, _ = timed(engine, pages, PAGE_TOKENS)
            else:
                warm, _ = timed(engine, [Request("ocr", prompts.OCR_PAGE, [scanned_page(0)], max_new_tokens=8)], 8)
            seconds, peak = timed(engine, pages, PAGE_TOKENS)
            rows.append([f"scanned pages ({variant})", batch, batch, warm, seconds, batch * 60 / seconds,
                         batch * PAGE_TOKENS / seconds, peak])
            print(rows[-1], flush=True)
        windows = args.video_minutes * 60 // WINDOW_SECONDS
        if not windows:
            return finish(rows, args, build_s, load_s, engine)
        engine.settings = engine.settings.replace(batch_size=args.video_batch)
        requests = [Request("video", prompts.VIDEO_WINDOW, video=video_window(w * WINDOW_SECONDS),
                            max_new_tokens=WINDOW_TOKENS) for w in range(windows)]
        warm = 0.0
        if args.cache == "static":  # compile for the window batch shape first, on one batch of windows
            warm, _ = timed(engine, requests[:args.video_batch], WINDOW_TOKENS)
        seconds, peak = timed(engine, requests, WINDOW_TOKENS)
        rows.append([f"video windows, {args.video_minutes} min video ({variant})", args.video_batch, windows,
                     warm, seconds, windows * 60 / seconds, windows * WINDOW_TOKENS / seconds, peak])
        print(rows[-1], flush=True)
    finish(rows, args, build_s, load_s, engine)


def finish(rows, args, build_s: float, load_s: float, engine) -> None:
    header = ["workload", "batch", "items", "warm-up s", "seconds", "items/min", "output tok/s", "peak GiB"]
    table = markdown_table(header, rows)
    body = (f"`python -m bench.engine_gpu`: Qwen3-VL-4B architecture, random bf16 weights (built and saved in "
            f"{build_s:.0f} s, loaded by the engine in {load_s:.0f} s), `generate` with a {args.cache} KV cache, "
            f"output forced to {PAGE_TOKENS} tokens per page (A4 at 150 dpi, "
            f"up to {engine.settings.image_max_pixels // 1024} visual tokens) and {WINDOW_TOKENS} per video window "
            f"({FRAMES_PER_WINDOW} frames of 640x360 per {WINDOW_SECONDS} s).\n\n{table}")
    print(body)
    if args.out:
        args.out.write_text(body)
    else:
        write_section("Engine throughput on GPU (transformers)", body)


if __name__ == "__main__":
    main()
