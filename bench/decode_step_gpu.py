"""One decode step of the KV slab on a GPU, old attention against new, and where a one-row step's time goes.

In one run, on the Qwen3-VL-4B architecture with random bf16 weights (bench/engine_gpu.py builds it):
- the per-row attention kernel (kb/engines/decode_attention.py) against torch's masked attention on one layer's
  cache: error, batch invariance (a row alone gives the same bits as in a batch), time and bytes/s, for a few
  span sizes / block sizes / warps;
- the recorded step of 128 rows at real lengths and of one row (an answer), with torch's masked attention (reads
  every row to the step's width) and with the kernel (each row to its own length);
- a kernel-by-kernel profile of the one-row step (what an answer stream waits for);
- making the bulk slab and recording its steps (what keeping it between calls saves).

usage: python -m bench.decode_step_gpu [--model-dir DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import triton.testing

import kb.engines.decode_attention as spans
from bench.engine_gpu import PAGE_TOKEN_QUANTILES, build_random_4b, page_lengths
from bench.report import markdown_table, publish
from kb.config import load_settings
from kb.engines import transformers_qwen as tq
from kb.engines.kv_slab import width_for

ROWS, KV_HEADS, GROUP, DIM, COLUMNS = 128, 8, 4, 128, 3584
PROMPT = (900, 1400)  # visual tokens + instructions of a scanned page (bench/engine_gpu.py's pages)


def live_lengths(rows: int, seed: int = 0) -> torch.Tensor:
    """Columns each row of a running batch attends to: its prompt plus part of its drawn page length."""
    rng = np.random.default_rng(seed)
    pages = np.array(page_lengths(rows, 1.0, seed))
    seen = rng.integers(*PROMPT, rows) + (rng.random(rows) * pages).astype(int)
    return torch.tensor(np.minimum(seen, COLUMNS - 1), dtype=torch.long, device="cuda")


def median_ms(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median"))


def kernel_rows() -> list[list]:
    torch.manual_seed(0)
    q = torch.randn(ROWS, KV_HEADS, GROUP, DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(ROWS, KV_HEADS, COLUMNS, DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    seen = live_lengths(ROWS)
    width = width_for(int(seen.max()), COLUMNS)
    scale = DIM ** -0.5
    ref = spans.masked_attention(q.double(), k[:, :, :width].double(), v[:, :, :width].double(),
                                 spans.visible_columns(seen, width), scale)
    used_gb = int(seen.sum()) * KV_HEADS * DIM * 2 * 2 / 1e9
    rows = []
    masked = spans.masked_attention(q, k[:, :, :width], v[:, :, :width], spans.visible_columns(seen, width), scale)
    err = float((masked.double() - ref).norm() / ref.norm())
    ms = median_ms(lambda: spans.masked_attention(q, k[:, :, :width], v[:, :, :width],
                                                  spans.visible_columns(seen, width), scale))
    rows.append([f"torch masked sdpa, width {width}", "", ms, used_gb / ms * 1e3, err, ""])
    defaults = spans.SPLIT, spans.BLOCK, spans.WARPS
    for split, block, warps in [(256, 64, 4), (128, 64, 4), (512, 64, 4), (256, 32, 4), (256, 64, 8),
                                (256, 128, 8), (512, 128, 8)]:
        spans.SPLIT, spans.BLOCK, spans.WARPS = split, block, warps
        out = spans.decode_attention(q, k, v, seen, scale)
        err = float((out.double() - ref).norm() / ref.norm())
        alone = all(torch.equal(spans.decode_attention(q[r:r + 1], k[r:r + 1], v[r:r + 1], seen[r:r + 1], scale),
                                out[r:r + 1]) for r in (0, 17, 101))
        ms = median_ms(lambda: spans.decode_attention(q, k, v, seen, scale))
        rows.append([f"spans {split}, block {block}, {warps} warps", "", ms, used_gb / ms * 1e3, err, alone])
        print(rows[-1], flush=True)
    spans.SPLIT, spans.BLOCK, spans.WARPS = defaults
    # One row (an answer): a 1 500-column prompt in an 8 192-column slab.
    q1, k1, v1 = q[:1], torch.randn(1, KV_HEADS, 8192, DIM, device="cuda", dtype=torch.bfloat16), None
    v1 = torch.randn_like(k1)
    seen1 = torch.tensor([1500], device="cuda")
    w1 = width_for(1500, 8192)
    rows.append(["1 row, torch masked sdpa", "", median_ms(lambda: spans.masked_attention(
        q1, k1[:, :, :w1], v1[:, :, :w1], spans.visible_columns(seen1, w1), scale)), "", "", ""])
    rows.append(["1 row, spans", "", median_ms(lambda: spans.decode_attention(q1, k1, v1, seen1, scale)), "", "",
                 ""])
    for row in rows:
        row[1] = f"{used_gb:.2f}" if not row[0].startswith("1 row") else ""
    return rows


def replay_ms(slab, rows: int, width: int, steps: int = 50) -> float:
    """Median of `steps` replays of the recorded step; the slab's state is put back after each."""
    saved = [t.clone() for t in (slab.tokens, slab.pos, slab.lens, slab.count)]
    slab.step(width, rows)
    times = []
    for _ in range(steps):
        for tensor, value in zip((slab.tokens, slab.pos, slab.lens, slab.count), saved):
            tensor.copy_(value)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        slab.step(width, rows)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def step_rows(engine: tq.TransformersEngine) -> tuple[list[list], str]:
    rows = []
    with torch.inference_mode():
        started = time.perf_counter()
        bulk = engine._slab("bulk", ROWS, COLUMNS)
        torch.cuda.synchronize()
        made_s = time.perf_counter() - started
        seen = live_lengths(ROWS)
        bulk.lens.copy_(seen - 1)
        width = width_for(int(seen.max()), bulk.length)
        started = time.perf_counter()
        count, halved = 0, ROWS
        while halved >= 1:
            count += bulk.record_all(bulk.length, halved)
            halved //= 2
        torch.cuda.synchronize()
        recorded_s = time.perf_counter() - started
        new = replay_ms(bulk, ROWS, width)
        bulk.spans = False
        old = replay_ms(bulk, ROWS, width)
        bulk.spans = True
        rows.append([f"{ROWS} rows, real lengths (mean {float(seen.float().mean()):.0f}, width {width})", old, new])
        keep = (f"making the bulk slab ({ROWS} x {bulk.length} columns, {bulk.bytes / 1e9:.0f} GB): {made_s:.2f} s; "
                f"recording its steps for every halving of the rows: {recorded_s:.1f} s")
        del bulk
        engine._slabs.clear()
        torch.cuda.empty_cache()
        answer = engine._slab("answer", 1, tq.ANSWER_COLUMNS)
        answer.lens.fill_(1499)
        width = width_for(1500, answer.length)
        new = replay_ms(answer, 1, width)
        answer.spans = False
        old = replay_ms(answer, 1, width)
        answer.spans = True
        rows.append(["1 row (an answer), 1 500 columns", old, new])
    return rows, keep


def profile_one_row(engine: tq.TransformersEngine) -> str:
    """The one-row step run eagerly (its compiled halves, not the graph) under the profiler: GPU time by kernel."""
    from torch.profiler import ProfilerActivity, profile

    slab = engine._slabs["answer"]
    with torch.inference_mode():
        slab.lens.fill_(1499)
        for _ in range(3):
            slab._forward(slab.read_width(1536), 1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                slab._forward(slab.read_width(1536), 1)
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kernels = kernel_rows()
    print(markdown_table(["attention of one layer", "GB used", "ms", "GB/s of used columns", "rel. error vs fp64",
                          "row alone == batched"], kernels), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp)
        if not (model_dir / "config.json").exists():
            build_random_4b(model_dir)
        engine = tq.TransformersEngine(load_settings({"engine": "transformers", "model": str(model_dir),
                                                      "device": "cuda"}, env={}))
        steps, keep = step_rows(engine)
        print(markdown_table(["recorded decode step", "ms, masked attention", "ms, per-row kernel"], steps))
        print(keep, flush=True)
        table = profile_one_row(engine)
        print(table, flush=True)
    body = (f"`python -m bench.decode_step_gpu`: one layer's attention ({ROWS} rows, {KV_HEADS} key/value heads x "
            f"{GROUP} query heads, head size {DIM}, {COLUMNS}-column slab, each row's prompt {PROMPT[0]}-"
            f"{PROMPT[1]} columns plus part of a page drawn from PAGE_TOKEN_QUANTILES ({len(PAGE_TOKEN_QUANTILES)} "
            "quantiles); GB/s counts only the columns rows use):\n\n"
            + markdown_table(["attention of one layer", "GB used", "ms", "GB/s of used columns",
                              "rel. error vs fp64", "row alone == batched"], kernels)
            + "\n\nThe whole recorded decode step (Qwen3-VL-4B architecture, random bf16 weights):\n\n"
            + markdown_table(["recorded decode step", "ms, masked attention", "ms, per-row kernel"], steps)
            + f"\n\n{keep}.\n\nOne-row step, GPU time by kernel (10 steps, eager with the compiled layer halves):\n\n"
            + "```\n" + table + "\n```")
    publish("Decode step on GPU (the KV slab's attention)", body, args.out)


if __name__ == "__main__":
    main()
