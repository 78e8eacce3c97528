"""One decode step of the KV slab on a GPU: the per-row attention kernel over a bf16 cache and over an fp8 cache.

In one run, on the Qwen3-VL-4B architecture with random bf16 weights (bench/engine_gpu.py builds it):
- the per-row attention kernel (kb/engines/decode_attention.py) on one layer's cache, bf16 and fp8 (float8_e4m3fn
  with a scale per row, key/value head and column: kb/engines/kv_slab.py): error against float64 over the
  unquantised cache, batch invariance (a row alone gives the same bits as in a batch), time and bytes/s, for a few
  span sizes / block sizes / warps;
- the kernel's ways of turning fp8 into matrix operands (decode_attention.FP8_CONVERTS), then the fastest with other
  span / block / warp sizes, at real lengths and with every row at the slab's full length, and fp8 values stored
  column-major (kv_slab.FP8_VALUES_BY_COLUMN);
- the recorded step at 128 and 1 rows of the bulk slab at real lengths, bf16 cache against fp8 (the fastest
  conversion of the kernel table; the slab filled with random keys and values, not zeros), each with the layer's
  new key/value written by one launch (decode_attention.write_step) and by the index writes it replaced;
- greedy ids batched == alone (bench.engine_gpu's --check pages) over a bf16 and over an fp8 bulk slab (values
  stored by row and by column: kv_slab.FP8_VALUES_BY_COLUMN);
- the fp8 cache's accuracy on the random model's real cache: one layer's attention output (fp8 and bf16 kernel
  against float64 over the bf16 cache), and the share of greedy tokens that agree between an fp8 and a bf16 slab
  over a few pages (random weights make near-ties common: one flipped pick changes the rest of the page);
- making the bulk slab and recording its steps.

usage: python -m bench.decode_step_gpu [--model-dir DIR] [--out FILE] [--no-accuracy] [--steps-only | --write-check |
       --sweep [--small-programs] | --ncu]
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import triton.testing

import kb.engines.decode_attention as spans
from bench.engine_gpu import build_random_4b, page_lengths, pages
from bench.report import markdown_table, publish
from kb.config import load_settings
from kb.engines import kv_slab
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


def one_layer() -> tuple:
    """One layer's query and cache at ROWS rows: query, keys, values (bf16), the keys and values quantized to fp8
    (each with its scales), and each row's length at real page lengths."""
    torch.manual_seed(0)
    q = torch.randn(ROWS, KV_HEADS, GROUP, DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(ROWS, KV_HEADS, COLUMNS, DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    return q, k, v, quantize(k), quantize(v), live_lengths(ROWS)


def ncu_target(launches: int = 3) -> None:
    """What `--ncu` runs for Nsight Compute: one layer's attention at ROWS rows, real lengths, over the bf16 cache
    and over the fp8 cache (the kept conversion), `launches` times each, one after the other. Profile it with
    `ncu -k regex:_span_attention --launch-skip 4 --launch-count 2 --section SpeedOfLight --section Occupancy
    --section SchedulerStats --section WarpStateStats python -m bench.decode_step_gpu --ncu` (docs/benchmarks.md,
    run Z: the first profiled launch is bf16's, the second fp8's)."""
    q, k, v, (k8, ks), (v8, vs), seen = one_layer()
    scale = DIM ** -0.5
    for _ in range(launches):
        spans.decode_attention(q, k, v, seen, scale)
        spans.decode_attention(q, k8, v8, seen, scale, key_scales=ks, value_scales=vs)
    torch.cuda.synchronize()


def kernel_rows(sweep: tuple | None = None) -> tuple[list[list], str]:
    """One layer's attention at 128 rows: torch's masked attention, the kernel over bf16 and over fp8 (each way of
    converting fp8, then the fastest at other sizes), at real lengths and at the slab's full length; or (`sweep`)
    the kernel over fp8 and bf16 at every span, block, warps and pipelining stages of `sweep` (SWEEP or
    SMALL_PROGRAMS). Returns the table and the fastest conversion."""
    q, k, v, (k8, ks), (v8, vs), real = one_layer()
    v8_by_column = v8.transpose(2, 3).contiguous().transpose(2, 3)  # kv_slab.FP8_VALUES_BY_COLUMN's layout
    full = torch.full_like(real, COLUMNS - 1)
    scale = DIM ** -0.5
    refs = {}
    for name, seen in (("real", real), ("full", full)):
        width = width_for(int(seen.max()), COLUMNS)
        refs[name] = spans.masked_attention(q.double(), k[:, :, :width].double(), v[:, :, :width].double(),
                                            spans.visible_columns(seen, width), scale)

    def gb(cache: str, seen: torch.Tensor) -> float:
        used = int(seen.sum()) * KV_HEADS * 2  # key and value vectors the rows use
        return used * (DIM * 2 if cache == "bf16" else DIM + 2) / 1e9  # fp8: a byte each, plus a bf16 scale

    rows = []
    width = width_for(int(real.max()), COLUMNS)
    mask = spans.visible_columns(real, width)
    masked = spans.masked_attention(q, k[:, :, :width], v[:, :, :width], mask, scale)
    ms = median_ms(lambda: spans.masked_attention(q, k[:, :, :width], v[:, :, :width], mask, scale))
    error = float((masked.double() - refs["real"]).norm() / refs["real"].norm())
    rows.append([f"bf16, torch masked sdpa, width {width}", "real", gb("bf16", real), ms, gb("bf16", real) / ms * 1e3,
                 error, ""])
    defaults = spans.SPLIT, spans.BLOCK, spans.WARPS, spans.FP8_CONVERT, spans.STOP_AT_END, spans.STAGES

    def run(cache: str, split: int, block: int, warps: int, lengths: str = "real", by_column: bool = False
            ) -> float:
        spans.SPLIT, spans.BLOCK, spans.WARPS = split, block, warps
        spans.FP8_CONVERT = cache.split()[-1] if cache != "bf16" else "bf16"
        seen = real if lengths == "real" else full
        if cache == "bf16":
            def attend(r: slice) -> torch.Tensor:
                return spans.decode_attention(q[r], k[r], v[r], seen[r], scale)
        else:
            values = v8_by_column if by_column else v8

            def attend(r: slice) -> torch.Tensor:
                return spans.decode_attention(q[r], k8[r], values[r], seen[r], scale, key_scales=ks[r],
                                              value_scales=vs[r])
        try:
            out = attend(slice(None))
        except Exception as err:  # noqa: BLE001 - a variant that does not compile here is a row, not the end
            rows.append([f"{cache}, spans {split}, block {block}, {warps} warps: failed ({str(err)[:80]})",
                         lengths, "", "", "", "", ""])
            print(rows[-1], flush=True)
            return float("inf")
        alone = all(torch.equal(attend(slice(r, r + 1)), out[r:r + 1]) for r in (0, 17, 101))
        ms = median_ms(partial(attend, slice(None)))
        bytes_gb = gb("bf16" if cache == "bf16" else "fp8", seen)
        knobs = (("" if spans.STOP_AT_END else ", whole spans") + (f", {spans.STAGES} stages" if spans.STAGES else "")
                 + (", values by column" if by_column else ""))
        rows.append([f"{cache}, spans {split}, block {block}, {warps} warps{knobs}", lengths, bytes_gb, ms,
                     bytes_gb / ms * 1e3, float((out.double() - refs[lengths]).norm() / refs[lengths].norm()), alone])
        print(rows[-1], flush=True)
        return ms

    run("bf16", 256, 64, 4)
    if sweep:
        for cache in (f"fp8 {defaults[3]}", "bf16"):  # the kept conversion (`run` set bf16's for the row above)
            for split, (block, warps), stages in itertools.product(*sweep):
                spans.STAGES = stages
                run(cache, split, block, warps)
        spans.SPLIT, spans.BLOCK, spans.WARPS, spans.FP8_CONVERT, spans.STOP_AT_END, spans.STAGES = defaults
        return rows, defaults[3]
    for convert in ("bf16", "fp16-asm"):  # the values stored column-major: no bytes transposed in shared memory
        run(f"fp8 {convert}", 256, 64, 4, by_column=True)
        run(f"fp8 {convert}", 256, 64, 4, "full", by_column=True)
    converts = {convert: run(f"fp8 {convert}", 256, 64, 4) for convert in spans.FP8_CONVERTS}
    best = min(converts, key=lambda c: converts[c])
    for split, block, warps in ((256, 128, 4), (256, 128, 8), (512, 64, 4)):
        run(f"fp8 {best}", split, block, warps)
    spans.STOP_AT_END = False  # as before: every span runs its blocks to the span's end
    run("bf16", 256, 64, 4)
    run(f"fp8 {best}", 256, 64, 4)
    spans.STOP_AT_END = True
    for stages in (2,):
        spans.STAGES = stages
        run(f"fp8 {best}", 256, 64, 4)
    spans.STAGES = 0
    run("bf16", 256, 64, 4)  # again: the spread between two timings of one variant
    run("bf16", 256, 64, 4, "full")
    run(f"fp8 {best}", 256, 64, 4, "full")
    spans.SPLIT, spans.BLOCK, spans.WARPS, spans.FP8_CONVERT, spans.STOP_AT_END, spans.STAGES = defaults
    return rows, best


# `--sweep`: spans (columns a program reads), (block, warps), software-pipelining stages (0: Triton's default).
SWEEP = ((256, 512, 1024, 2048), ((64, 4), (128, 4), (128, 8)), (0, 3, 4))
# `--sweep --small-programs`: programs of one or two warps (more of them resident on a multiprocessor, no
# reduction across four warps in a block's softmax), smaller blocks, 1-3 stages.
SMALL_PROGRAMS = ((256, 512), ((16, 1), (32, 1), (64, 1), (32, 2), (64, 2)), (1, 2, 3))


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


# Rows stepped: a full batch, and one row (what an answer steps; a bulk tail steps 2 rows at the fewest).
STEP_ROWS = (ROWS, 1)


def step_rows(engine: tq.TransformersEngine, convert: str, index_writes: bool = True
              ) -> tuple[list[list], list[str], list[str]]:
    """The recorded step of the bulk slab at STEP_ROWS rows, bf16 cache and fp8 (the kernel converting as
    `convert` says), each with the layer's new key/value written by one launch and (`index_writes`) by index writes
    (the two ways are fixed when a step is recorded, so each gets its own slab)."""
    seen = live_lengths(ROWS)
    caches = [("bf16", True, False), ("fp8", True, False), ("fp8", True, True)]
    caches += [("bf16", False, False), ("fp8", False, False)] if index_writes else []
    labels = [f"{cache}{f' ({convert})' if cache == 'fp8' else ''}{', values by column' if by_column else ''}, "
              f"{'one write' if one else 'index writes'}" for cache, one, by_column in caches]
    times: dict[str, list[float]] = {}
    notes = []
    defaults = spans.FP8_CONVERT, kv_slab.ONE_WRITE, kv_slab.FP8_VALUES_BY_COLUMN
    with torch.inference_mode():
        for label, (cache, one, by_column) in zip(labels, caches):
            spans.FP8_CONVERT, kv_slab.ONE_WRITE, kv_slab.FP8_VALUES_BY_COLUMN = convert, one, by_column
            with_cache(engine, cache)
            started = time.perf_counter()
            bulk = engine._slab("bulk", ROWS, COLUMNS)
            torch.cuda.synchronize()
            made_s = time.perf_counter() - started
            assert bulk.fp8 == (cache == "fp8") and spans.by_column(bulk.values[0]) == by_column
            fill_random(bulk)
            bulk.lens.copy_(seen - 1)
            width = width_for(int(seen.max()), bulk.length)
            started = time.perf_counter()
            for rows in STEP_ROWS:
                bulk.record_all(bulk.length, rows)
            torch.cuda.synchronize()
            recorded_s = time.perf_counter() - started
            times[label] = [replay_ms(bulk, rows, width) for rows in STEP_ROWS]
            notes.append(f"{label}: bulk slab ({ROWS} x {bulk.length} columns, {bulk.bytes / 1e9:.1f} GB) made in "
                         f"{made_s:.2f} s, its steps at {' and '.join(map(str, STEP_ROWS))} rows recorded in "
                         f"{recorded_s:.1f} s")
            print(label, times[label], notes[-1], flush=True)
            del bulk
            with_cache(engine, cache)
    spans.FP8_CONVERT, kv_slab.ONE_WRITE, kv_slab.FP8_VALUES_BY_COLUMN = defaults
    mean = float(seen.float().mean())
    names = [f"{ROWS} rows, real lengths (mean {mean:.0f} columns)" if rows == ROWS else
             f"{rows} row{'s' if rows > 1 else ''} of the {ROWS}-row bulk slab" for rows in STEP_ROWS]
    table = [[name, *(times[label][n] for label in labels), times[labels[0]][n] / min(times[labels[1]][n],
                                                                                       times[labels[2]][n])]
             for n, name in enumerate(names)]
    return table, notes, labels


def batch_invariance(engine: tq.TransformersEngine, cache: str, convert: str, one_write: bool = True
                     ) -> tuple[str, list[list[int]]]:
    """bench.engine_gpu's --check over a bulk slab of `cache`: greedy ids of its 6 pages decoded 4 rows at once
    against one at a time, and recorded against eager; the line and the ids (batched, then alone)."""
    spans.FP8_CONVERT, kv_slab.ONE_WRITE = convert, one_write
    with_cache(engine, cache)
    requests = pages([40, 9, 23, 31, 17, 12])
    engine.settings = engine.settings.replace(batch_size=4)
    batched = engine.generate_ids(requests)
    assert engine._slabs["bulk"].fp8 == (cache == "fp8")
    engine._slabs["bulk"].graphs_on = False
    eager = engine.generate_ids(requests)
    engine.settings = engine.settings.replace(batch_size=1)
    alone = [engine.generate_ids([r])[0] for r in requests]
    engine._slabs.clear()
    kv_slab.ONE_WRITE = True
    line = (f"{cache} bulk slab{'' if one_write else ', index writes'}: recorded == eager {batched == eager}, "
            f"batched == alone {sum(a == b for a, b in zip(batched, alone))}/{len(requests)}, "
            f"lengths {[len(i) for i in batched]}")
    print(line, flush=True)
    return line, batched + alone


WRITE_CHECK_ORDER = (True, False)  # (True, False, True, False) also repeats each way


def write_check(engine: tq.TransformersEngine) -> str:
    """The step's one write against the index writes it replaced, bf16 cache: the --check pages' ids, batched and
    alone, each way (the same bytes are written: ids that differ would come from elsewhere)."""
    ids = {}
    lines = []
    for one_write in WRITE_CHECK_ORDER:
        line, got = batch_invariance(engine, "bf16", "bf16", one_write)
        ids.setdefault(one_write, []).append(got)
        lines.append(line)
    same = [a == b for a, b in zip(ids[True][0], ids[False][0])]
    repeat = [ids[w][0] == ids[w][1] for w in (True, False) if len(ids[w]) > 1]
    summary = (f"one write against index writes: the same ids for {sum(same)}/{len(same)} decodes (6 batched, 6 "
               f"alone)" + (f"; each way run twice gives the same ids: {repeat}" if repeat else ""))
    print(summary, flush=True)
    return "; ".join(lines) + "; " + summary


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


def load_engine(args: argparse.Namespace, tmp: Path = Path("/tmp/seekframe-random-4b")) -> tq.TransformersEngine:
    """The engine over the random Qwen3-VL-4B (built into --model-dir or `tmp` unless it is there), with no end of
    turn: a random model must not end a page by chance."""
    model_dir = args.model_dir or tmp
    started = time.perf_counter()
    if not (model_dir / "config.json").exists():
        build_random_4b(model_dir)
    engine = tq.TransformersEngine(load_settings({"engine": "transformers", "model": str(model_dir),
                                                  "device": "cuda"}, env={}))
    print(f"model built and loaded in {time.perf_counter() - started:.1f} s", flush=True)
    engine.eos_ids = []
    engine._net.generation_config.eos_token_id = None
    return engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the fp8 cache's accuracy on the model")
    parser.add_argument("--steps-only", action="store_true",
                        help="only the recorded step (bf16, fp8 by row and by column, one write a layer) and the "
                             "greedy-id check of fp8 values by column, fp8 converted as decode_attention.FP8_CONVERT "
                             "(no kernel table, no index writes, no accuracy)")
    parser.add_argument("--sweep", action="store_true", help="only the kernel table, over SWEEP's sizes")
    parser.add_argument("--small-programs", action="store_true", help="--sweep over SMALL_PROGRAMS' sizes instead")
    parser.add_argument("--ncu", action="store_true",
                        help="only run one layer's attention, bf16 and fp8, for Nsight Compute (ncu_target)")
    parser.add_argument("--write-check", action="store_true",
                        help="only the --check pages' ids with the step's one write against index writes")
    args = parser.parse_args()
    # Random weights loop: the loop guard would end pages early.
    tq.repeating_tail = lambda *a, **k: False  # type: ignore[attr-defined]
    if args.ncu:
        return ncu_target()
    if args.write_check:
        return publish("Decode step on GPU: one write against index writes", write_check(load_engine(args)),
                       args.out)
    kernel_header = ["attention of one layer", "lengths", "GB used", "ms", "GB/s of used bytes",
                     "rel. error vs fp64 (bf16 cache)", "row alone == batched"]
    if args.sweep:
        kernels = kernel_rows(sweep=SMALL_PROGRAMS if args.small_programs else SWEEP)[0]
        return publish("Decode attention on GPU: spans, blocks, warps and stages", markdown_table(kernel_header,
                       sorted(kernels, key=lambda r: r[3] if isinstance(r[3], float) else 1e9)), args.out)
    kernels, best = ([], spans.FP8_CONVERT) if args.steps_only else kernel_rows()
    print(markdown_table(kernel_header, kernels), f"\nfastest fp8 conversion: {best}", flush=True)
    accuracy: list[list] = []
    agreement = ""
    with tempfile.TemporaryDirectory() as tmp:
        engine = load_engine(args, Path(tmp))
        steps, notes, labels = step_rows(engine, best, index_writes=not args.steps_only)
        step_header = ["recorded decode step", *(f"ms, {label}" for label in labels), "bf16 / best fp8 (one write)"]
        print(markdown_table(step_header, steps), "\n" + "\n".join(notes), flush=True)
        checks = [] if args.steps_only else [batch_invariance(engine, cache, best)[0] for cache in ("bf16", "fp8")]
        kv_slab.FP8_VALUES_BY_COLUMN = True
        checks.append("values by column: " + batch_invariance(engine, "fp8", best)[0])
        kv_slab.FP8_VALUES_BY_COLUMN = False
        spans.FP8_CONVERT = best
        if not (args.no_accuracy or args.steps_only):
            accuracy, agreement = accuracy_rows(engine)
            print(markdown_table(ACCURACY_HEADER, accuracy), "\n" + agreement, flush=True)
    body = (f"`python -m bench.decode_step_gpu`: one layer's attention ({ROWS} rows, {KV_HEADS} key/value heads x "
            f"{GROUP} query heads, head size {DIM}, {COLUMNS}-column slab; real lengths: each row's prompt "
            f"{PROMPT[0]}-{PROMPT[1]} columns plus part of a page drawn from PAGE_TOKEN_QUANTILES; full: every row "
            f"at {COLUMNS - 1} columns; GB counts only the columns rows use, in the cache's format):\n\n"
            + (markdown_table(kernel_header, kernels) if kernels else "(not run: --steps-only)")
            + f"\n\nThe whole recorded decode step (Qwen3-VL-4B architecture, random bf16 weights, slab filled with "
              f"random keys and values; fp8 converted as `{best}`):\n\n" + markdown_table(step_header, steps)
            + "\n\n" + "; ".join(notes) + ".\n\nGreedy ids, bench.engine_gpu's --check pages: " + "; ".join(checks)
            + ".")
    if accuracy:
        body += ("\n\nThe fp8 cache on the random model's real cache (8 scanned pages, one eager step after decoding "
                 "them): each row's ||out - ref|| / ||ref||, ref = float64 attention over the bf16 cache:\n\n"
                 + markdown_table(ACCURACY_HEADER, accuracy) + f"\n\n{agreement}.")
    publish("Decode step on GPU: the fp8 cache's conversions and one write a layer", body, args.out)


ACCURACY_HEADER = ["layer", "row lengths", "largest key", "bf16 kernel: max rel. error", "mean",
                   "fp8 kernel: max rel. error", "mean"]


if __name__ == "__main__":
    main()
