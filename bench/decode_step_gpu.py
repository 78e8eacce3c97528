"""One decode step of the KV slab on a GPU: the per-row attention kernel over a bf16 cache and over an fp8 cache.

In one run, on the Qwen3-VL-4B architecture with random bf16 weights (bench/engine_gpu.py builds it):
- the per-row attention kernel (kb/engines/decode_attention.py) on one layer's cache, bf16 and fp8 (float8_e4m3fn
  with a scale per row, key/value head and column: kb/engines/kv_slab.py): error against float64 over the
  unquantised cache, batch invariance (a row alone gives the same bits as in a batch), time and bytes/s, for a few
  span sizes / block sizes / warps;
- the recorded step at 128, 64 and 1 rows of the bulk slab at real lengths, bf16 cache against fp8 (the kernel
  converting fp8 to bf16, or to fp16: decode_attention.FP8_VIA_FP16; the slab filled with random keys and values,
  not zeros), and of the one-row answer slab;
- the fp8 cache's accuracy on the random model's real cache: one layer's attention output (fp8 and bf16 kernel
  against float64 over the bf16 cache), and the share of greedy tokens that agree between an fp8 and a bf16 slab
  over a few pages (random weights make near-ties common: one flipped pick changes the rest of the page);
- making the bulk slab and recording its steps.

usage: python -m bench.decode_step_gpu [--model-dir DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import triton.testing

import kb.engines.decode_attention as spans
from bench.engine_gpu import PAGE_TOKEN_QUANTILES, build_random_4b, page_lengths, pages
from bench.report import markdown_table, publish
from kb.config import load_settings
from kb.engines import transformers_qwen as tq
from kb.engines.kv_slab import KvSlab, quantize, width_for

ROWS, KV_HEADS, GROUP, DIM, COLUMNS = 128, 8, 4, 128, 3584
PROMPT = (900, 1400)  # visual tokens + instructions of a scanned page (bench/engine_gpu.py's pages)


def live_lengths(rows: int, seed: int = 0) -> torch.Tensor:
    """Columns each row of a running batch attends to: its prompt plus part of its drawn page length."""
    rng = np.random.default_rng(seed)
    drawn = np.array(page_lengths(rows, 1.0, seed))
    seen = rng.integers(*PROMPT, rows) + (rng.random(rows) * drawn).astype(int)
    return torch.tensor(np.minimum(seen, COLUMNS - 1), dtype=torch.long, device="cuda")


def median_ms(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median"))


def kernel_rows() -> list[list]:
    """One layer's attention at 128 rows: torch's masked attention, the kernel over bf16 and over fp8."""
    torch.manual_seed(0)
    q = torch.randn(ROWS, KV_HEADS, GROUP, DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(ROWS, KV_HEADS, COLUMNS, DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    (k8, ks), (v8, vs) = quantize(k), quantize(v)
    seen = live_lengths(ROWS)
    width = width_for(int(seen.max()), COLUMNS)
    scale = DIM ** -0.5
    mask = spans.visible_columns(seen, width)
    ref = spans.masked_attention(q.double(), k[:, :, :width].double(), v[:, :, :width].double(), mask, scale)
    used = int(seen.sum()) * KV_HEADS * 2  # key and value vectors the rows use
    gb = {"bf16": used * DIM * 2 / 1e9, "fp8": used * (DIM + 2) / 1e9}  # fp8: a byte each, plus a bf16 scale

    def error(out: torch.Tensor) -> float:
        return float((out.double() - ref).norm() / ref.norm())

    rows = []
    masked = spans.masked_attention(q, k[:, :, :width], v[:, :, :width], mask, scale)
    ms = median_ms(lambda: spans.masked_attention(q, k[:, :, :width], v[:, :, :width], mask, scale))
    rows.append([f"bf16, torch masked sdpa, width {width}", gb["bf16"], ms, gb["bf16"] / ms * 1e3, error(masked), ""])
    defaults = spans.SPLIT, spans.BLOCK, spans.WARPS, spans.FP8_VIA_FP16
    variants = [("bf16", 256, 64, 4), ("fp8", 256, 64, 4), ("fp8", 256, 128, 4), ("fp8", 256, 128, 8),
                ("fp8", 512, 128, 8), ("fp8", 512, 64, 4), ("fp8 via fp16", 256, 64, 4),
                ("fp8 via fp16", 512, 64, 4), ("fp8 via fp16", 256, 128, 8)]
    for label, split, block, warps in variants:
        cache = label.split()[0]
        spans.SPLIT, spans.BLOCK, spans.WARPS, spans.FP8_VIA_FP16 = split, block, warps, label == "fp8 via fp16"
        if cache == "fp8":
            def attend(r: slice) -> torch.Tensor:
                return spans.decode_attention(q[r], k8[r], v8[r], seen[r], scale, key_scales=ks[r],
                                              value_scales=vs[r])
        else:
            def attend(r: slice) -> torch.Tensor:
                return spans.decode_attention(q[r], k[r], v[r], seen[r], scale)
        out = attend(slice(None))
        alone = all(torch.equal(attend(slice(r, r + 1)), out[r:r + 1]) for r in (0, 17, 101))
        ms = median_ms(partial(attend, slice(None)))
        rows.append([f"{label}, spans {split}, block {block}, {warps} warps", gb[cache], ms, gb[cache] / ms * 1e3,
                     error(out), alone])
        print(rows[-1], flush=True)
    spans.SPLIT, spans.BLOCK, spans.WARPS, spans.FP8_VIA_FP16 = defaults
    return rows


def fill_random(slab: KvSlab) -> None:
    """Random keys and values in every column (timing on zeros can flatter a kernel), quantized for fp8."""
    generator = torch.Generator(device=slab.device).manual_seed(0)
    for n in range(len(slab.keys)):
        for cache, scales in ((slab.keys, slab.key_scales), (slab.values, slab.value_scales)):
            noise = torch.randn(cache[n].shape, generator=generator, device=slab.device, dtype=slab.dtype)
            if slab.fp8:
                stored, scale = quantize(noise)
                cache[n].copy_(stored)
                scales[n].copy_(scale)
            else:
                cache[n].copy_(noise)
            del noise


def replay_ms(slab: KvSlab, rows: int, width: int, steps: int = 50) -> float:
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


def with_cache(engine: tq.TransformersEngine, cache: str) -> None:
    """Bulk slabs made from now on store `cache` (the setting KB_KV_CACHE); the kept ones are dropped."""
    engine._slabs.clear()
    torch.cuda.empty_cache()
    engine.settings = engine.settings.replace(kv_cache=cache)


STEP_CACHES = ("bf16", "fp8", "fp8 via fp16")  # the step's cache, and for fp8 the kernel's compute dtype


def step_rows(engine: tq.TransformersEngine) -> tuple[list[list], list[str]]:
    """The recorded step of the bulk slab at 128, 64 and 1 rows and of the one-row answer slab, for each of
    STEP_CACHES (the kernel's variant is fixed when a step is recorded, so each gets its own slab)."""
    seen = live_lengths(ROWS)
    times: dict[str, list[float]] = {}
    notes = []
    default = spans.FP8_VIA_FP16
    with torch.inference_mode():
        for label in STEP_CACHES:
            cache = label.split()[0]
            spans.FP8_VIA_FP16 = label == "fp8 via fp16"
            with_cache(engine, cache)
            started = time.perf_counter()
            bulk = engine._slab("bulk", ROWS, COLUMNS)
            torch.cuda.synchronize()
            made_s = time.perf_counter() - started
            assert bulk.fp8 == (cache == "fp8")
            fill_random(bulk)
            bulk.lens.copy_(seen - 1)
            width = width_for(int(seen.max()), bulk.length)
            started = time.perf_counter()
            for rows in (ROWS, ROWS // 2, 1):
                bulk.record_all(bulk.length, rows)
            torch.cuda.synchronize()
            recorded_s = time.perf_counter() - started
            times[label] = [replay_ms(bulk, rows, width) for rows in (ROWS, ROWS // 2, 1)]
            notes.append(f"{label} bulk slab ({ROWS} x {bulk.length} columns, {bulk.bytes / 1e9:.1f} GB): made in "
                         f"{made_s:.2f} s, its steps at {ROWS}, {ROWS // 2} and 1 rows recorded in {recorded_s:.1f} s")
            del bulk
            with_cache(engine, cache)
            answer = KvSlab(engine._net, 1, tq.ANSWER_COLUMNS, banned=None, eos=engine.eos_ids, min_new=0,
                            graphs=True, kv_cache=cache)
            fill_random(answer)
            answer.lens.fill_(1499)
            times[label].append(replay_ms(answer, 1, width_for(1500, answer.length)))
            del answer
            torch.cuda.empty_cache()
    spans.FP8_VIA_FP16 = default
    mean = float(seen.float().mean())
    labels = [f"{ROWS} rows, real lengths (mean {mean:.0f} columns)", f"{ROWS // 2} rows (the first half)",
              f"1 row of the {ROWS}-row bulk slab", f"1 row (an answer's slab, {tq.ANSWER_COLUMNS} columns), 1 500 "
              "columns"]
    table = [[label, *(times[c][n] for c in STEP_CACHES), times["bf16"][n] / min(times[c][n] for c in STEP_CACHES[1:])]
             for n, label in enumerate(labels)]
    return table, notes


def accuracy_rows(engine: tq.TransformersEngine, count: int = 8, tokens: int = 192) -> tuple[list[list], str]:
    """The fp8 cache on the random model's real cache: (1) one layer's attention output, fp8 and bf16 kernel
    against float64 over the bf16 cache, for a few layers; (2) greedy ids of `count` pages decoded over a bf16 and
    over an fp8 slab."""
    requests = pages([tokens] * count)
    engine.settings = engine.settings.replace(batch_size=count)
    ids = {}
    for cache in ("fp8", "bf16"):
        with_cache(engine, cache)
        ids[cache] = engine.generate_ids(requests)
    # (1) The bf16 slab after its decode, one more step run eagerly: each layer's query and cache as the kernel
    # gets them.
    slab = engine._slabs["bulk"]
    assert not slab.fp8
    captured: list[tuple] = []
    kernel = spans.decode_attention

    def capture(query, keys, values, seen, scale, **kwargs):  # type: ignore[no-untyped-def]
        captured.append((query.clone(), keys, values, seen.clone(), scale))
        return kernel(query, keys, values, seen, scale, **kwargs)

    spans.decode_attention = capture  # type: ignore[assignment]
    try:
        with torch.inference_mode():
            slab._forward(slab.length, slab.rows)
    finally:
        spans.decode_attention = kernel
    rows = []
    for layer in (0, len(captured) // 2, len(captured) - 1):
        query, keys, values, seen, scale = captured[layer]
        (k8, ks), (v8, vs) = quantize(keys), quantize(values)
        width = width_for(int(seen.max()), keys.shape[2])
        ref = spans.masked_attention(query.double(), keys[:, :, :width].double(), values[:, :, :width].double(),
                                     spans.visible_columns(seen, width), scale)
        outs = {"bf16": kernel(query, keys, values, seen, scale),
                "fp8": kernel(query, k8, v8, seen, scale, key_scales=ks, value_scales=vs)}
        errors = {}
        for cache, out in outs.items():
            per_row = (out.double() - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
            errors[cache] = (float(per_row.max()), float(per_row.mean()))
        key_range = float(keys[:, :, :width].float().abs().amax())
        rows.append([layer, f"{int(seen.min())}-{int(seen.max())}", key_range, *errors["bf16"], *errors["fp8"]])
    engine._slabs.clear()
    # (2) Greedy agreement, position by position, and how far each page runs before its first different token.
    same = total = 0
    firsts = []
    for a, b in zip(ids["bf16"], ids["fp8"]):
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
        firsts.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    agreement = (f"greedy ids of {count} pages x {tokens} tokens, fp8 slab against bf16 slab: {same}/{total} "
                 f"tokens equal ({same / total:.1%}); tokens before each page's first difference: {firsts}")
    return rows, agreement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # Random weights loop: the loop guard would end pages early.
    tq.repeating_tail = lambda *a, **k: False  # type: ignore[attr-defined]
    kernels = kernel_rows()
    kernel_header = ["attention of one layer", "GB used", "ms", "GB/s of used bytes", "rel. error vs fp64 (bf16 "
                     "cache)", "row alone == batched"]
    print(markdown_table(kernel_header, kernels), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp)
        if not (model_dir / "config.json").exists():
            build_random_4b(model_dir)
        engine = tq.TransformersEngine(load_settings({"engine": "transformers", "model": str(model_dir),
                                                      "device": "cuda"}, env={}))
        engine.eos_ids = []  # a random model must not end a page by chance
        engine._net.generation_config.eos_token_id = None
        steps, notes = step_rows(engine)
        step_header = ["recorded decode step", *(f"ms, {c} cache" for c in STEP_CACHES), "bf16 / best fp8"]
        print(markdown_table(step_header, steps), "\n" + "\n".join(notes), flush=True)
        accuracy, agreement = accuracy_rows(engine)
        accuracy_header = ["layer", "row lengths", "largest key", "bf16 kernel: max rel. error", "mean",
                           "fp8 kernel: max rel. error", "mean"]
        print(markdown_table(accuracy_header, accuracy), "\n" + agreement, flush=True)
    body = (f"`python -m bench.decode_step_gpu`: one layer's attention ({ROWS} rows, {KV_HEADS} key/value heads x "
            f"{GROUP} query heads, head size {DIM}, {COLUMNS}-column slab, each row's prompt {PROMPT[0]}-"
            f"{PROMPT[1]} columns plus part of a page drawn from PAGE_TOKEN_QUANTILES ({len(PAGE_TOKEN_QUANTILES)} "
            "quantiles); GB counts only the columns rows use, in the cache's format):\n\n"
            + markdown_table(kernel_header, kernels)
            + "\n\nThe whole recorded decode step (Qwen3-VL-4B architecture, random bf16 weights, slab filled with "
              "random keys and values):\n\n" + markdown_table(step_header, steps) + "\n\n" + "; ".join(notes)
            + ".\n\nThe fp8 cache on the random model's real cache (8 scanned pages, one eager step after decoding "
              "them): each row's ||out - ref|| / ||ref||, ref = float64 attention over the bf16 cache:\n\n"
            + markdown_table(accuracy_header, accuracy) + f"\n\n{agreement}.")
    publish("Decode step on GPU with an fp8 KV cache", body, args.out)


if __name__ == "__main__":
    main()
