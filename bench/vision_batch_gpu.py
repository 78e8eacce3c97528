"""The vision tower's attention batched over pieces of one size, against one call a piece (GPU).

Qwen3-VL's vision tower attends each picture within itself, and each frame pair of a video within itself: a group
of 16 video windows of 10 frames is 80 pieces of one size, 24 blocks deep. `speed_up_vision` calls torch's attention
once per run of pieces of one size, as one batch (`transformers_qwen.equal_runs`); before, once per piece. This
times, on the Qwen3-VL-4B architecture with random weights (bench/engine_gpu.py builds it), for a prefill group of
16 video windows, 16 scanned pages of one size and 16 of mixed sizes: the vision tower alone and the whole prompt
forward (vision tower and language model, as `TransformersEngine.prefill` runs it), each way, and the largest
difference between the two ways' tower outputs.

usage: python -m bench.vision_batch_gpu [--model-dir DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.decode_step_gpu import load_engine
from bench.engine_gpu import PAGE_SIZES, pages, scanned_page, timed, video_window
from bench.report import markdown_table, publish
from kb import prompts
from kb.engines import transformers_qwen as tq
from kb.types import Request

GROUP = 16


def one_call_a_piece(edges: list[int]) -> list[tuple[int, int, int]]:
    """The way before: every piece its own run."""
    return [(begin, end - begin, 1) for begin, end in zip(edges, edges[1:])]


def groups() -> dict[str, list[Request]]:
    windows = [Request("video", prompts.VIDEO_WINDOW, video=video_window(20 * n), max_new_tokens=8)
               for n in range(GROUP)]
    same = [Request("ocr", prompts.OCR_PAGE, [scanned_page(n * len(PAGE_SIZES))], max_new_tokens=8)
            for n in range(GROUP)]
    return {"16 video windows (10 frames, 640x360)": windows, "16 scanned pages of one size (A4, 150 dpi)": same,
            "16 scanned pages of 4 sizes": pages([8] * GROUP)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    engine = load_engine(args)
    visual = engine._net.model.visual
    batched_runs = tq.equal_runs
    rows = []
    with torch.inference_mode():
        for label, requests in groups().items():
            prepared = engine.prepare(requests)
            packed = prepared.packed
            times, outputs = {}, {}
            for way, runs in (("one call a piece", one_call_a_piece), ("batched", batched_runs)):
                tq.equal_runs = runs
                tower = timed(lambda packed=packed: [visual(p, grid_thw=g) for p, g, _ in packed.pictures], repeat=5)
                forward = timed(lambda packed=packed: engine._prompt_forward(packed), repeat=5)
                outputs[way] = torch.cat([visual(p, grid_thw=g).pooler_output for p, g, _ in packed.pictures])
                times[way] = (tower, forward)
            tq.equal_runs = batched_runs
            pieces = sum(int(g[:, 0].sum()) for _, g, _ in packed.pictures)
            difference = (outputs["batched"].float() - outputs["one call a piece"].float()).abs().max().item()
            (tower_before, forward_before), (tower_after, forward_after) = times["one call a piece"], times["batched"]
            rows.append([label, pieces, f"{tower_before * 1e3:.1f}", f"{tower_after * 1e3:.1f}",
                         f"{forward_before * 1e3:.1f}", f"{forward_after * 1e3:.1f}",
                         f"{(forward_before - forward_after) * 1e3 / GROUP:.1f}", f"{difference:.3g}"])
    header = ["prefill group", "pieces attended", "vision tower ms, one call a piece", "vision tower ms, batched",
              "prompt forward ms, one call a piece", "prompt forward ms, batched", "ms saved a request",
              "largest difference of the tower's output"]
    body = ("`python -m bench.vision_batch_gpu`: one prefill group, the vision tower's attention one call a piece "
            "against one batched call per run of pieces of one size (median of 5 after a warm-up; the prompt "
            "forward is the vision tower and the language model over the group's packed prompts).\n\n"
            + markdown_table(header, rows))
    publish("Vision tower: pieces of one size attended as one batch (GPU)", body, args.out)


if __name__ == "__main__":
    main()
