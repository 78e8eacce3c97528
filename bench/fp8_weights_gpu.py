"""fp8 weights against bf16 weights on a GPU (settings' quant = "fp8": kb/engines/fp8_weights.py), on the
Qwen3-VL-4B architecture with random weights (bench/engine_gpu.py builds it), in one run:
- the recorded decode step of the bulk slab (bf16 cache filled with random keys and values, real lengths) at 128
  rows and at 1 row (what an answer's step reads: the weights);
- one prefill group of 16 scanned pages (bench.engine_gpu's pages), whole and in pieces;
- how far fp8 moves the outputs: the prefill's last-token logits of 16 pages (relative error, same top token) and
  the greedy ids of 8 pages x 192 tokens, against bf16 (random weights make near-ties common: one flipped pick
  changes the rest of a page, so this bounds what a real model would see from below, not from above).

usage: python -m bench.fp8_weights_gpu [--model-dir DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from bench.decode_step_gpu import COLUMNS, ROWS, fill_random, live_lengths, replay_ms
from bench.engine_gpu import build_random_4b, pages, prefill_pieces
from bench.report import markdown_table, publish
from kb.config import load_settings
from kb.engines import transformers_qwen as tq
from kb.engines.kv_slab import width_for

STEP_ROWS = (ROWS, 1)
GROUP = 16  # pages in a prefill group (the engine's groups at 128 rows)


def load(model_dir: Path, quant: str) -> tuple[tq.TransformersEngine, float]:
    """The engine with `quant` weights and no end of turn (a random model must not end a page by chance)."""
    started = time.perf_counter()
    engine = tq.TransformersEngine(load_settings({"engine": "transformers", "model": str(model_dir),
                                                  "device": "cuda", "quant": quant}, env={}))
    engine.eos_ids = []
    engine._net.generation_config.eos_token_id = None
    return engine, time.perf_counter() - started


def weight_gb(engine: tq.TransformersEngine) -> float:
    net = engine._net
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]) / 1e9


def step_ms(engine: tq.TransformersEngine) -> list[float]:
    """The recorded bulk step at STEP_ROWS rows (median of replays)."""
    seen = live_lengths(ROWS)
    with torch.inference_mode():
        bulk = engine._slab("bulk", ROWS, COLUMNS)
        fill_random(bulk)
        bulk.lens.copy_(seen - 1)
        width = width_for(int(seen.max()), bulk.length)
        for rows in STEP_ROWS:
            bulk.record_all(bulk.length, rows)
        times = [replay_ms(bulk, rows, width) for rows in STEP_ROWS]
    del bulk
    engine._slabs.clear()
    torch.cuda.empty_cache()
    return times


def prefill_line(engine: tq.TransformersEngine) -> str:
    requests = pages([8] * GROUP)
    prepared = engine.prepare(requests)
    with torch.inference_mode():
        slab = engine._slab("bulk", GROUP, max(engine.columns_bound(r) for r in requests))
        line = prefill_pieces(engine, prepared, slab, GROUP, old=False)
    engine._slabs.clear()
    torch.cuda.empty_cache()
    return line


def outputs(engine: tq.TransformersEngine) -> tuple[torch.Tensor, list[list[int]]]:
    """The prefill's last-token logits of GROUP pages (float32, on the CPU) and greedy ids of 8 pages."""
    prepared = engine.prepare(pages([8] * GROUP))
    with torch.inference_mode():
        logits = engine._prompt_forward(prepared.packed)[0].float().cpu()
    engine.settings = engine.settings.replace(batch_size=8)
    ids = engine.generate_ids(pages([192] * 8))
    engine._slabs.clear()
    return logits, ids


def measure(model_dir: Path, quant: str) -> dict:
    engine, load_s = load(model_dir, quant)
    result = {"load_s": load_s, "gb": weight_gb(engine)}
    print(f"{quant}: loaded in {load_s:.1f} s, weights {result['gb']:.2f} GB", flush=True)
    started = time.perf_counter()
    result["steps"] = step_ms(engine)
    print(f"{quant}: steps {result['steps']} ms ({time.perf_counter() - started:.1f} s with recording)", flush=True)
    result["prefill"] = prefill_line(engine)
    print(f"{quant}: {result['prefill']}", flush=True)
    result["logits"], result["ids"] = outputs(engine)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    same = sum(x == y for p, q in zip(a, b) for x, y in zip(p, q))
    total = sum(max(len(p), len(q)) for p, q in zip(a, b))
    firsts = [next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q))) for p, q in zip(a, b)]
    return f"{same}/{total} tokens equal ({same / total:.1%}); tokens before each page's first difference: {firsts}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tq.repeating_tail = lambda *a, **k: False  # type: ignore[attr-defined]  # random weights loop
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp) / "model"
        if not (model_dir / "config.json").exists():
            build_random_4b(model_dir)
        bf16, fp8 = measure(model_dir, "none"), measure(model_dir, "fp8")
    names = [f"decode step, {rows} rows{' (real lengths, bf16 cache)' if rows > 1 else ''}, ms" for rows in STEP_ROWS]
    rows = [[name, f"{bf16['steps'][n]:.2f}", f"{fp8['steps'][n]:.2f}", f"{bf16['steps'][n] / fp8['steps'][n]:.2f}"]
            for n, name in enumerate(names)]
    rows.append(["weights on the GPU, GB", f"{bf16['gb']:.2f}", f"{fp8['gb']:.2f}", f"{bf16['gb'] / fp8['gb']:.2f}"])
    error = (fp8["logits"] - bf16["logits"]).norm(dim=-1) / bf16["logits"].norm(dim=-1)
    top = (fp8["logits"].argmax(-1) == bf16["logits"].argmax(-1)).sum().item()
    body = ("`python -m bench.fp8_weights_gpu`: random Qwen3-VL-4B, bf16 weights (KB_QUANT=none) against fp8 "
            "weights (KB_QUANT=fp8: the decoder layers' projections, one scale per output channel and per token; "
            "vision tower and output head bf16).\n\n"
            + markdown_table(["", "bf16 weights", "fp8 weights", "bf16 / fp8"], rows)
            + f"\n\nOne prefill group of {GROUP} scanned pages: bf16 {bf16['prefill']}; fp8 {fp8['prefill']}."
            + f"\n\nOutputs, fp8 against bf16: the prefill's last-token logits of {GROUP} pages, ||fp8 - bf16|| / "
              f"||bf16|| max {error.max():.4f}, mean {error.mean():.4f}; same top token {top}/{GROUP}; greedy ids "
              f"of 8 pages x 192 tokens: {agreement(fp8['ids'], bf16['ids'])}.")
    publish("fp8 weights on GPU", body, args.out)


if __name__ == "__main__":
    main()
