"""The fp8 KV cache of the bulk decode slab (kb/engines/kv_slab.py: float8_e4m3fn keys and values, one scale per
row, key/value head and column) and the decode kernel reading it (kb/engines/decode_attention.py).

CI has no GPU: the kernel runs in Triton's interpreter (a fresh process, see tests/test_decode_attention.py), which
loads float8_e4m3fn tensors as they are, so the kernel's own fp8 path (load, convert, scale) is what is tested.
"""
from __future__ import annotations

import pytest
import torch

from kb.config import load_settings
from kb.engines.kv_slab import FP8, FP8_MAX, dequantize, quantize, use_fp8
from kb.errors import ConfigError
from tests.test_decode_attention import interpreted

# e4m3 keeps 3 mantissa bits: rounding moves a normal value by at most half a step, 2**-4 of it.
E4M3_STEP = 2 ** -4


def outlier_keys(seed: int = 0) -> torch.Tensor:
    """Keys as Qwen's look: (rows, kv_heads, columns, head_dim), one channel 50x larger than the rest."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(3, 2, 40, 128, generator=generator)
    keys[..., 17] *= 50
    return keys


def test_round_trip_keeps_every_vector_within_e4m3_rounding_despite_an_outlier_channel():
    keys = outlier_keys()
    stored, scale = quantize(keys)
    assert stored.dtype == FP8 and scale.shape == keys.shape[:-1]
    back = dequantize(stored, scale, torch.float32)
    # Each vector's largest element lands inside e4m3's range, so nothing is clipped ...
    assert float(stored.float().abs().amax()) <= FP8_MAX
    assert float((stored.float().abs().amax(-1) / FP8_MAX).min()) > 0.95
    # ... and every element, the outlier's neighbours included, is off by at most e4m3's rounding (plus the
    # subnormal floor for elements 2**-9 below their vector's largest).
    floor = scale.float()[..., None] * 2 ** -9
    assert bool(((back - keys).abs() <= E4M3_STEP * keys.abs() + floor).all())
    relative = (back - keys).norm(dim=-1) / keys.norm(dim=-1)
    assert float(relative.max()) < 0.04
    # The outlier costs the other channels nothing: e4m3 is a float, so they keep the precision they have in vectors
    # without it (an integer code with one step per vector, int8-style, would lose ~50x here).
    plain = keys.clone()
    plain[..., 17] /= 50
    plain_back = dequantize(*quantize(plain), torch.float32)
    others = [c for c in range(128) if c != 17]
    error_with = ((back - keys)[..., others].norm() / keys[..., others].norm()).item()
    error_without = ((plain_back - plain)[..., others].norm() / plain[..., others].norm()).item()
    assert error_with < 2.5 * error_without


def test_quantizing_is_per_vector_zeros_stay_zero_and_large_values_stay_finite():
    keys = outlier_keys(1)
    keys[1] *= 1e4  # far past e4m3's 448: the scale absorbs it
    keys[2, 0, 5:9] = 0.0  # empty columns, as the slab starts
    stored, scale = quantize(keys)
    back = dequantize(stored, scale, torch.float32)
    assert bool(torch.isfinite(back).all())
    assert bool((back[2, 0, 5:9] == 0).all())
    # A row's bytes do not depend on the other rows (the batch-invariance the greedy check relies on).
    alone, alone_scale = quantize(keys[0:1])
    assert torch.equal(alone.view(torch.uint8), stored[0:1].view(torch.uint8))
    assert torch.equal(alone_scale, scale[0:1])


def test_kv_cache_setting_names_its_values_and_fp8_needs_a_gpu_that_has_it():
    assert load_settings({"kv_cache": "fp8"}, env={}).kv_cache == "fp8"
    assert load_settings({}, env={"KB_KV_CACHE": "bf16"}).kv_cache == "bf16"
    with pytest.raises(ConfigError, match="kv_cache"):
        load_settings({"kv_cache": "int4"}, env={})
    cpu = torch.device("cpu")
    assert not use_fp8("auto", cpu, kernel=True)  # auto: never fp8 where the device lacks it
    assert not use_fp8("bf16", cpu, kernel=True)
    with pytest.raises(ConfigError) as err:
        use_fp8("fp8", cpu, kernel=True)
    assert "KB_KV_CACHE" in err.value.fix and "8.9" in err.value.message


def test_kernel_on_an_fp8_cache_matches_its_dequantised_reference_and_rows_are_independent():
    pytest.importorskip("triton")
    result = interpreted("""
        import json, torch
        from kb.engines import decode_attention as d
        from kb.engines.kv_slab import dequantize, quantize
        torch.manual_seed(0)
        rows, kv_heads, group, dim, columns = 4, 2, 4, 32, 600
        query = torch.randn(rows, kv_heads + 1, group, dim)[:, :kv_heads]  # a view, as the slab makes it
        keys, values = torch.randn(rows, kv_heads, columns, dim), torch.randn(rows, kv_heads, columns, dim)
        keys[..., 3] *= 50  # an outlier key channel
        # The unquantised cache as the GPU holds it (bf16), and its fp8 copy.
        keys, values = keys.bfloat16().float(), values.bfloat16().float()
        (k8, ks), (v8, vs) = quantize(keys), quantize(values)
        seen = torch.tensor([1, d.SPLIT, d.SPLIT + 1, columns])

        def fp8(q, k, v, kscale, vscale, s):
            return d.decode_attention(q, k, v, s, 0.2, interpret=True, key_scales=kscale, value_scales=vscale)

        d.FP8_CONVERT = "bf16"  # operands in the query's dtype (float32 here): exactly the dequantised attention
        out = fp8(query, k8, v8, ks, vs, seen)
        mask = d.visible_columns(seen, columns)
        ref = d.masked_attention(query.double(), dequantize(k8, ks, torch.float64), dequantize(v8, vs, torch.float64),
                                 mask, 0.2)
        exact = d.masked_attention(query.double(), keys.double(), values.double(), mask, 0.2)
        rel = ((out.double() - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)).tolist()
        # Rows are independent: a row alone gives the bits it gives in the batch, and whatever the other rows hold
        # (here: other random keys and values, scales included) does not change it.
        alone = [torch.equal(fp8(query[r:r + 1], k8[r:r + 1], v8[r:r + 1], ks[r:r + 1], vs[r:r + 1], seen[r:r + 1]),
                             out[r:r + 1]) for r in range(rows)]
        other_k, other_v = quantize(torch.randn_like(keys)), quantize(torch.randn_like(values))
        mixed_k, mixed_v = other_k[0].clone(), other_v[0].clone()
        mixed_ks, mixed_vs = other_k[1].clone(), other_v[1].clone()
        for t, s in ((mixed_k, k8), (mixed_v, v8), (mixed_ks, ks), (mixed_vs, vs)):
            t[2] = s[2]
        row_2 = torch.equal(fp8(query, mixed_k, mixed_v, mixed_ks, mixed_vs, seen)[2], out[2])
        # The variants that meet the cache in fp16 (query and probabilities rounded to fp16), on the same cache and
        # on values 1e-4 as large (their scales alone would be fp16 subnormals: the kernel rescales each block's).
        (small_v8, small_vs) = quantize(values * 1e-4)
        small_ref = d.masked_attention(query.double(), dequantize(k8, ks, torch.float64),
                                       dequantize(small_v8, small_vs, torch.float64), mask, 0.2)
        half = {}
        for convert in ("fp16", "fp16-bits", "fp16-asm"):
            d.FP8_CONVERT = convert
            out_half = fp8(query, k8, v8, ks, vs, seen)
            small = fp8(query, k8, small_v8, ks, small_vs, seen)
            v8_by_column = v8.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, stored column-major
            assert d.by_column(v8_by_column) and not d.by_column(v8)
            half[convert] = {
                "to_reference": float((out_half.double() - ref).norm() / ref.norm()),
                "small_values": float((small.double() - small_ref).norm() / small_ref.norm()),
                "alone": [torch.equal(fp8(query[r:r + 1], k8[r:r + 1], v8[r:r + 1], ks[r:r + 1], vs[r:r + 1],
                                          seen[r:r + 1]), out_half[r:r + 1]) for r in range(rows)],
                "same_as_fp16": torch.equal(out_half, half["fp16"]["out"]) if half else True, "out": out_half,
                "by_column": torch.equal(fp8(query, k8, v8_by_column, ks, vs, seen), out_half)}
        for variant in half.values():
            del variant["out"]
        print(json.dumps({"to_reference": float((out.double() - ref).abs().max()), "to_unquantised": rel,
                          "alone": alone, "row_2_among_others": row_2, "half": half}))
    """)
    assert result["to_reference"] < 5e-5  # float32 rounding: exactly the dequantised cache's attention
    assert max(result["to_unquantised"]) < 0.06  # e4m3 rounding of keys and values, an outlier channel included
    assert result["alone"] == [True] * 4
    assert result["row_2_among_others"]
    for variant in result["half"].values():
        assert variant["to_reference"] < 1e-3  # fp16 rounding of the query and the probabilities
        assert variant["small_values"] < 1e-3
        assert variant["alone"] == [True] * 4
        # The integer route gives fp16 operands of the same values (times 2**-8, folded into the scales): the
        # same output to the bit.
        assert variant["same_as_fp16"]
        assert variant["by_column"]  # values stored column-major: the same output to the bit


def test_fp8_slab_decodes_what_its_dequantised_cache_gives(tiny_model_dir):
    # The engine's whole decode over an fp8 slab (prompt caches quantized in `load`, each step's key/value in the
    # step, rows moved in the tail), kernel against torch's attention over the dequantised columns: the same ids.
    result = interpreted("""
        import json, sys, numpy as np, torch
        from PIL import Image
        from kb.config import VISUAL_TOKEN_PIXELS, load_settings
        from kb.engines import kv_slab
        from kb.engines.transformers_qwen import TransformersEngine
        from kb.types import Request

        kv_slab.fp8_supported = lambda device: True  # this CPU stands in for an fp8 GPU
        budget = {"image_min_pixels": 4 * VISUAL_TOKEN_PIXELS, "image_max_pixels": 16 * VISUAL_TOKEN_PIXELS}
        engine = TransformersEngine(load_settings({"engine": "transformers", "model": sys.argv[1], "device": "cpu",
                                                   "batch_size": 2, **budget}, env={}))
        torch.manual_seed(0)
        for weight in engine._net.parameters():
            weight.data.normal_(0, 0.3)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
        requests = [Request(task="ocr", prompt="Read.", images=[image], max_new_tokens=7),
                    Request(task="answer", prompt="A short question?", max_new_tokens=4),
                    Request(task="answer", prompt="Another, longer question about the page?", max_new_tokens=6)]
        with torch.inference_mode():  # the engine's bulk slab, remade with an fp8 cache under the same rules
            plain = engine._slab("bulk", 2, max(engine.columns_bound(r) for r in requests))
            slab = kv_slab.KvSlab(engine._net, plain.rows, plain.length, banned=plain.banned, eos=engine.eos_ids,
                                  min_new=plain.min_new, graphs=False, kv_cache="fp8")
        slab.rules = plain.rules
        engine._slabs["bulk"] = slab
        masked = engine.generate_ids(requests)
        stored = [str(slab.keys[0].dtype), str(slab.values[0].dtype), str(slab.key_scales[0].dtype)]
        share = slab.bytes / plain.bytes  # of the float32 slab's bytes
        scales_share = (1 + 2 / slab.head_dim) / 4  # 1 byte an element plus a 2-byte scale per head_dim elements
        slab.spans = slab.interpret = True
        kernel = engine.generate_ids(requests)
        assert engine._slabs["bulk"] is slab
        # The same with the values stored column-major (kv_slab.FP8_VALUES_BY_COLUMN): the masked path and the kernel
        # (prompt loads, one write a step, moved rows) read them through the same (rows, heads, columns, head_dim) view.
        kv_slab.FP8_VALUES_BY_COLUMN = True
        by_column = {}
        for spans_on in (False, True):
            with torch.inference_mode():
                slab = kv_slab.KvSlab(engine._net, plain.rows, plain.length, banned=plain.banned,
                                      eos=engine.eos_ids, min_new=plain.min_new, graphs=False, kv_cache="fp8")
            assert slab.values[0].stride(2) == 1 and slab.values[0].shape == slab.keys[0].shape
            slab.rules, slab.spans, slab.interpret = plain.rules, spans_on, spans_on
            engine._slabs["bulk"] = slab
            by_column["kernel" if spans_on else "masked"] = engine.generate_ids(requests)
        kv_slab.FP8_VALUES_BY_COLUMN = False
        # The setting reaches the engine's slabs: the bulk one follows it, answers keep the model's dtype.
        chosen = {}
        for setting in ("fp8", "auto", "bf16"):
            engine.settings = engine.settings.replace(kv_cache=setting)
            engine._slabs.clear()
            with torch.inference_mode():
                chosen[setting] = [engine._slab("bulk", 2, 64).fp8, engine._slab("answer", 1, 64).fp8]
        print(json.dumps({"masked": masked, "kernel": kernel, "stored": stored, "share": share / scales_share,
                          "chosen": chosen, "by_column": by_column}))
    """, str(tiny_model_dir))
    assert result["stored"] == ["torch.float8_e4m3fn", "torch.float8_e4m3fn", "torch.bfloat16"]
    assert result["share"] == pytest.approx(1.0)  # a quarter of float32 (half of bf16), plus the scales
    assert [len(ids) for ids in result["masked"]] == [7, 4, 6]
    assert result["kernel"] == result["masked"]
    assert result["by_column"] == {"masked": result["masked"], "kernel": result["masked"]}
    # fp8 when asked (answers never); auto is bf16 here (no kernel on a CPU, and FP8_BY_DEFAULT is off)
    assert result["chosen"] == {"fp8": [True, False], "auto": [False, False], "bf16": [False, False]}


def test_step_write_puts_each_rows_new_column_where_index_writes_did_and_nothing_else():
    # The recorded step's one write per layer (decode_attention.write_step) against the index writes it replaced,
    # for a plain cache and an fp8 one with its scales: the same caches to the bit, every other column untouched.
    pytest.importorskip("triton")
    result = interpreted("""
        import json, torch
        from kb.engines import decode_attention as d
        from kb.engines.kv_slab import quantize
        torch.manual_seed(0)
        rows, kv_heads, columns, dim = 3, 2, 20, 32
        write = torch.tensor([0, 7, columns - 1])
        at = (torch.arange(rows), slice(None), write)
        mixed = torch.randn(rows, 3 * kv_heads, dim)  # the new key and value as the step makes them: views
        key, value = mixed[:, kv_heads:2 * kv_heads], mixed[:, 2 * kv_heads:]
        keys, values = torch.randn(rows, kv_heads, columns, dim), torch.randn(rows, kv_heads, columns, dim)
        expected_k, expected_v = keys.clone(), values.clone()
        expected_k[at], expected_v[at] = key, value
        d.write_step(keys, values, key, value, write, interpret=True)
        plain = torch.equal(keys, expected_k) and torch.equal(values, expected_v)
        (k8, ks), (v8, vs) = quantize(torch.randn(rows, kv_heads, columns, dim)), quantize(torch.randn_like(keys))
        (new_k8, new_ks), (new_v8, new_vs) = quantize(key), quantize(value)
        expected = [t.clone() for t in (k8.view(torch.uint8), ks, v8.view(torch.uint8), vs)]
        for cache, new in zip(expected, (new_k8.view(torch.uint8), new_ks, new_v8.view(torch.uint8), new_vs)):
            cache[at] = new
        v8_by_column = v8.transpose(2, 3).contiguous().transpose(2, 3)  # values stored column-major
        d.write_step(k8, v8, new_k8, new_v8, write, ks, vs, key_scale=new_ks, value_scale=new_vs, interpret=True)
        fp8 = all(torch.equal(a, b) for a, b in zip((k8.view(torch.uint8), ks, v8.view(torch.uint8), vs), expected))
        d.write_step(k8, v8_by_column, new_k8, new_v8, write, ks, vs, key_scale=new_ks, value_scale=new_vs,
                     interpret=True)
        by_column = torch.equal(v8_by_column.view(torch.uint8), expected[2])
        print(json.dumps({"plain": plain, "fp8": fp8, "by_column": by_column}))
    """)
    assert result == {"plain": True, "fp8": True, "by_column": True}
