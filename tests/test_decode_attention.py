"""The decode attention that reads each row only to its own length (kb/engines/decode_attention.py), and the
engine's process kinds (a process that answers gives its bulk cache back when idle; an ingest keeps it).

The kernel is Triton's; CI has no GPU, so it runs here in Triton's interpreter, which must be switched on before
Triton is imported: those checks run in a fresh interpreter process (CPU, float32).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kb.types import Request
from tests.engine_inputs import BUDGET

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parent.parent


def interpreted(script: str, *args: str) -> dict:
    """Run `script` in a fresh Python with Triton's interpreter on; it prints one JSON line last."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_reads_each_row_to_its_own_length_and_matches_masked_attention():
    result = interpreted("""
        import json, torch
        from kb.engines import decode_attention as d
        torch.manual_seed(0)
        rows, kv_heads, group, dim, columns = 4, 2, 4, 32, 600
        # The query as the slab makes it: a view into the projections' output, not contiguous.
        query = torch.randn(rows, kv_heads + 1, group, dim)[:, :kv_heads]
        keys, values = torch.randn(rows, kv_heads, columns, dim), torch.randn(rows, kv_heads, columns, dim)
        seen = torch.tensor([1, d.SPLIT, d.SPLIT + 1, columns])  # one column, a span's edge, past it, all
        out = d.decode_attention(query, keys, values, seen, 0.2, interpret=True)
        ref = d.masked_attention(query, keys, values, d.visible_columns(seen, columns), 0.2)
        # Columns past a row's length are never read: poisoning them changes nothing.
        poisoned_keys, poisoned_values = keys.clone(), values.clone()
        for row, n in enumerate(seen.tolist()):
            poisoned_keys[row, :, n:] = float("nan")
            poisoned_values[row, :, n:] = float("nan")
        poisoned = d.decode_attention(query, poisoned_keys, poisoned_values, seen, 0.2, interpret=True)
        alone = [torch.equal(d.decode_attention(query[r:r + 1], keys[r:r + 1], values[r:r + 1], seen[r:r + 1], 0.2,
                                                interpret=True), out[r:r + 1]) for r in range(rows)]
        print(json.dumps({"error": float((out - ref).abs().max()), "poisoned": torch.equal(poisoned, out),
                          "alone": alone}))
    """)
    assert result["error"] < 1e-5
    assert result["poisoned"]
    assert result["alone"] == [True] * 4  # a row's result does not depend on its batch


def test_slab_with_the_kernel_gives_the_ids_of_masked_attention(tiny_model_dir):
    # The engine's whole decode (continuous batching, refills) with the kernel in the step, against torch's masked
    # attention: the same greedy ids for every request.
    result = interpreted("""
        import json, sys, numpy as np, torch
        from PIL import Image
        from kb.config import VISUAL_TOKEN_PIXELS, load_settings
        from kb.engines.transformers_qwen import TransformersEngine
        from kb.types import Request

        budget = {"image_min_pixels": 4 * VISUAL_TOKEN_PIXELS, "image_max_pixels": 16 * VISUAL_TOKEN_PIXELS}
        engine = TransformersEngine(load_settings({"engine": "transformers", "model": sys.argv[1], "device": "cpu",
                                                   "batch_size": 2, **budget}, env={}))
        torch.manual_seed(0)
        for weight in engine._net.parameters():  # larger random weights: ids that depend on every column
            weight.data.normal_(0, 0.3)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
        requests = [Request(task="ocr", prompt="Read.", images=[image], max_new_tokens=7),
                    Request(task="answer", prompt="A short question?", max_new_tokens=4),
                    Request(task="answer", prompt="Another, longer question about the page?", max_new_tokens=6)]
        masked = engine.generate_ids(requests)
        with torch.inference_mode():
            slab = engine._slab("bulk", 2, max(engine.columns_bound(r) for r in requests))
        assert not slab.spans
        slab.spans = slab.interpret = True
        kernel = engine.generate_ids(requests)
        assert engine._slabs["bulk"] is slab
        print(json.dumps({"masked": masked, "kernel": kernel}))
    """, str(tiny_model_dir))
    assert [len(ids) for ids in result["masked"]] == [7, 4, 6]
    assert result["kernel"] == result["masked"]


def test_bulk_cache_is_given_back_when_idle_only_in_a_process_that_answers(make_settings, tiny_model_dir,
                                                                           monkeypatch):
    import kb.engines.transformers_qwen as tq
    from kb.engines import load_engine, load_in_background

    monkeypatch.setattr(tq, "BULK_IDLE_S", 0.3)
    settings = make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu", batch_size=2,
                             **BUDGET)
    ingest = load_engine(settings)  # how `python -m ingest` and workers load it
    app = load_in_background(settings).result(timeout=300)  # how the app loads it
    requests = [Request(task="answer", prompt="Short?", max_new_tokens=3)] * 3
    for engine in (ingest, app):
        engine.generate_ids(requests)
        assert "bulk" in engine._slabs  # kept while calls follow each other
    for _ in range(50):
        if "bulk" not in app._slabs:
            break
        time.sleep(0.1)
    assert "bulk" not in app._slabs and "bulk" in ingest._slabs
    assert app.generate_ids(requests) == ingest.generate_ids(requests)  # made again when bulk work comes back
