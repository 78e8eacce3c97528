"""Prefill beside decode on one GPU: does a group's prefill, run on a second stream while the bulk slab decodes,
finish in less time than the two one after the other?

The bulk loop today stops decoding while it prefills a group of new rows (~37 ms a page, a third of a scanned
page's engine time, docs/benchmarks.md). A decode step at 128 rows is bound by memory (the KV cache's bytes) and
its matrix products use part of the card's SMs; a prefill is bound by matrix-product compute. This measures, on
the Qwen3-VL-4B architecture with random weights (bench/engine_gpu.py builds it), in one process:
- the recorded 128-row decode step replayed N times alone (rows at real page lengths);
- K prefill groups of 16 scanned pages alone (`TransformersEngine._prompt_forward` and the first token);
- both at once: the steps replayed on one stream by the main thread while a second thread prefills on another,
  the decode stream at the same priority and at a higher one (CUDA stream priorities: pending blocks of the higher
  stream are scheduled first; running blocks are not pre-empted); then both queued from one thread;
- with `--green N,...`: the card cut into two green contexts (bench/sm_partition.py), the decode on N SMs and the
  prefill on the rest: each alone on its partition, then both at once.

usage: python -m bench.prefill_overlap_gpu [--model-dir DIR] [--steps N] [--groups K] [--green N,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import threading
import time
from functools import partial
from pathlib import Path

import torch

from bench.decode_step_gpu import ROWS, fill_random, live_lengths, load_engine
from bench.engine_gpu import page_lengths, pages
from bench.report import markdown_table, publish
from bench.sm_partition import split_streams
from kb.engines import transformers_qwen as tq

GROUP = 16
COLUMNS = 3584


HOST = {"replay": 0.0, "look": 0.0}  # host seconds inside the replays and the looks of the last decode()


def decode(slab, steps: int, stream: torch.cuda.Stream, seen: torch.Tensor) -> float:
    """Seconds for `steps` replays of the 128-row step on `stream`, from rows at `seen` columns."""
    HOST.update(replay=0.0, look=0.0)
    with torch.cuda.stream(stream):
        slab.lens.copy_(seen)
        stream.synchronize()
        started = time.perf_counter()
        for n in range(steps):
            before = time.perf_counter()
            slab.step(COLUMNS, ROWS)
            HOST["replay"] += time.perf_counter() - before
            if n % 16 == 15:  # the loop's one look from the host a chunk
                before = time.perf_counter()
                slab.tokens[:1].tolist()
                HOST["look"] += time.perf_counter() - before
        stream.synchronize()
    return time.perf_counter() - started


DONE: list[float] = []  # when each group of the last prefill() was done (perf_counter)


def launch_prefill(engine: tq.TransformersEngine, packed) -> torch.Tensor:
    """One group's prompt forward and first tokens queued on the current stream (the vision tower's picture bounds
    are its one host sync)."""
    return engine._prompt_forward(packed)[0].argmax(-1)


def prefill(engine: tq.TransformersEngine, prepared, groups: int, stream: torch.cuda.Stream) -> float:
    """Seconds for `groups` prefills of the prepared group on `stream` (prompt forward and first tokens)."""
    packed = prepared.packed
    DONE.clear()
    with torch.cuda.stream(stream):
        for tensor in packed.tensors():
            tensor.record_stream(stream)
        stream.synchronize()
        started = time.perf_counter()
        for _ in range(groups):
            launch_prefill(engine, packed).tolist()
            DONE.append(time.perf_counter())
        stream.synchronize()
    return time.perf_counter() - started


def one_thread(engine, slab, prepared, steps: int, groups: int, decode_stream, prefill_stream, seen) -> float:
    """Wall seconds with both queued from one thread: each group's prefill on its stream, then its share of the
    decode steps on the other; the host waits only in the vision tower's one sync a group and at the end (no
    second thread: the GIL plays no part)."""
    packed = prepared.packed
    torch.cuda.synchronize()
    with torch.cuda.stream(decode_stream):
        slab.lens.copy_(seen)
    torch.cuda.synchronize()
    started = time.perf_counter()
    per_group = steps // groups
    for _ in range(groups):
        with torch.cuda.stream(prefill_stream):
            launch_prefill(engine, packed)
        with torch.cuda.stream(decode_stream):
            for _ in range(per_group):
                slab.step(COLUMNS, ROWS)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def together(engine, slab, prepared, steps: int, groups: int, decode_stream, prefill_stream, seen
             ) -> tuple[float, float, float]:
    """(decode s, prefill s, wall s) with the prefill on a thread beside the decode."""
    result: dict[str, float] = {}

    def side() -> None:
        with torch.inference_mode():
            result["prefill"] = prefill(engine, prepared, groups, prefill_stream)

    torch.cuda.synchronize()
    started = time.perf_counter()
    thread = threading.Thread(target=side)
    thread.start()
    result["decode"] = decode(slab, steps, decode_stream, seen)
    decoded = time.perf_counter()
    thread.join()
    during = sum(done <= decoded for done in DONE)
    print(f"groups done while decoding: {during} of {groups}; host s in replays {HOST['replay']:.2f}, in looks "
          f"{HOST['look']:.2f}", flush=True)
    return result["decode"], result["prefill"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--green", default="", help="decode SM counts to try, comma-separated (the prefill gets "
                        "the rest of the card)")
    parser.add_argument("--skip-streams", action="store_true", help="only the green-context rows")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    engine = load_engine(args)
    with torch.inference_mode():
        slab = engine._slab("bulk", ROWS, COLUMNS)
        fill_random(slab)
        seen = live_lengths(ROWS)
        slab.lens.copy_(seen)
        slab.step(COLUMNS, ROWS)  # records the step
        prepared = engine.prepare(pages(page_lengths(GROUP, 1.0)))
        normal = torch.cuda.Stream()
        high = torch.cuda.Stream(priority=-5)
        side = torch.cuda.Stream()
        prefill(engine, prepared, 2, side)  # compiles the prefill's layer halves and vision functions
        decode(slab, 32, normal, seen)
        alone_decode = decode(slab, args.steps, normal, seen)
        print(f"decode alone: host s in replays {HOST['replay']:.2f}, in looks {HOST['look']:.2f}", flush=True)
        alone_prefill = prefill(engine, prepared, args.groups, side)
        rows = [["decode alone", f"{alone_decode * 1e3 / args.steps:.2f}", "", f"{alone_decode:.2f}"],
                ["prefill alone", "", f"{alone_prefill * 1e3 / args.groups:.0f}", f"{alone_prefill:.2f}"],
                ["one after the other (sum)", "", "", f"{alone_decode + alone_prefill:.2f}"]]
        for count in [int(n) for n in args.green.split(",") if n]:
            (green_decode, green_prefill), sms = split_streams(count)
            # A step recorded on the whole card replays on the whole card: it is recorded again on the partition.
            slab._graphs.clear()
            slab._pool = None
            graph = torch.cuda.graph
            torch.cuda.graph = partial(graph, stream=green_decode)
            try:
                with torch.cuda.stream(green_decode):
                    slab.step(COLUMNS, ROWS)
            finally:
                torch.cuda.graph = graph
            dec = decode(slab, args.steps, green_decode, seen)
            pre = prefill(engine, prepared, args.groups, green_prefill)
            rows.append([f"decode alone on {sms[0]} SMs / prefill alone on {sms[1]}",
                         f"{dec * 1e3 / args.steps:.2f}", f"{pre * 1e3 / args.groups:.0f}", f"{dec + pre:.2f}"])
            for _ in range(2):
                dec, pre, wall = together(engine, slab, prepared, args.steps, args.groups, green_decode,
                                          green_prefill, seen)
                rows.append([f"at once, decode on {sms[0]} SMs, prefill on {sms[1]}", f"{dec * 1e3 / args.steps:.2f}",
                             f"{pre * 1e3 / args.groups:.0f}", f"{wall:.2f}"])
            print(rows[-3:], flush=True)
        for label, stream in (() if args.skip_streams else
                              (("both at once, same priority", normal), ("both at once, decode first", high))):
            for _ in range(2):
                dec, pre, wall = together(engine, slab, prepared, args.steps, args.groups, stream, side, seen)
                rows.append([label, f"{dec * 1e3 / args.steps:.2f}", f"{pre * 1e3 / args.groups:.0f}", f"{wall:.2f}"])
        for label, stream in (() if args.skip_streams else
                              (("one thread, same priority", normal), ("one thread, decode first", high))):
            wall = one_thread(engine, slab, prepared, args.steps, args.groups, stream, side, seen)
            rows.append([label, "", "", f"{wall:.2f}"])
    header = ["run", "ms a decode step (128 rows)", "ms a prefill group (16 pages)", "wall s"]
    body = (f"`python -m bench.prefill_overlap_gpu --steps {args.steps} --groups {args.groups}`: {args.steps} "
            f"recorded 128-row decode steps (rows at real page lengths, mean {seen.float().mean():.0f} columns) and "
            f"{args.groups} prefill groups of {GROUP} scanned pages ({sum(prepared.widths)} prompt tokens a group), "
            f"alone and at once on two streams.\n\n" + markdown_table(header, rows))
    publish("Prefill beside decode (GPU)", body, args.out)


if __name__ == "__main__":
    main()
