"""Decode attention over the KV slab that reads each row only up to its own length (a Triton kernel).

Why: torch's fused attention takes one key length for the whole batch, so a decode step over the slab read every
row up to the step's width, i.e. up to the longest live row: at 128 rows of real pages about 40 % of the keys and
values read per step were columns past a row's own end, masked away (docs/benchmarks.md). Here each row's keys
and values are cut into fixed spans of SPLIT columns from column 0; one program attends one (row, key/value head,
span) with the row's query heads of that key/value head together (grouped-query attention reads the cache once),
and spans at or past the row's length return at once. A second kernel merges the spans' partial results
(flash-decoding's log-sum-exp merge).

The launch has the same shape whatever the rows' lengths (rows x heads x spans of the slab's full length), so the
step that calls it stays one recorded CUDA graph, and the row lengths live in the slab's own state tensor.
The spans start at fixed columns, so a row's result does not depend on the other rows of the batch or on the batch
size: greedy output is the same alone and batched.

An fp8 cache (kv_slab.py: float8_e4m3fn keys and values with one scale per row, key/value head and column) is read
as it is stored: the kernel loads the fp8 block and its scales and dequantises in registers. The key's scale is
per column, so it multiplies the block's scores (q . (s k) = s (q . k)), and the value's scale multiplies the
block's probabilities before they meet the values (sum p s v = sum (p s) v): no (columns x head size) multiply.
"""
from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch

try:  # Triton ships with torch's CUDA wheels; without it the slab keeps torch's masked attention
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - a torch build without Triton
    triton = None

SPLIT = 256  # columns per span: one program's share of a row (a multiple of BLOCK)
BLOCK = 64  # columns loaded at once by a program
GROUP_PAD = 16  # the query heads of one key/value head, padded to the smallest matrix-unit tile
WARPS = 4  # per program (bench/decode_step_gpu.py times the alternatives)
# An fp8 cache is converted to the query's dtype (bf16) before the matrix products. On Hopper e4m3 -> bf16 takes
# several instructions an element (through fp16 and fp32), e4m3 -> fp16 one per pair: the suspect for the fp8
# kernel's 1.7 TB/s (docs/benchmarks.md). True: query, keys, values and probabilities meet in fp16 instead; not yet
# timed on a GPU (bench/decode_step_gpu.py times both), so off.
FP8_VIA_FP16 = False


def available(device: torch.device, dtype: torch.dtype, head_dim: int, group: int) -> bool:
    """Whether the kernel runs here: Triton present, a CUDA device, a half-precision cache, a power-of-two head
    size and at most GROUP_PAD query heads per key/value head."""
    return (triton is not None and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and head_dim >= 16 and head_dim & (head_dim - 1) == 0 and group <= GROUP_PAD)


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, seen: torch.Tensor,
                     scale: float, interpret: bool = False, key_scales: torch.Tensor | None = None,
                     value_scales: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query token per row over the first `seen[row]` columns of that row.

    query (rows, kv_heads, group, head_dim), its group query heads per key/value head; keys and values (rows,
    kv_heads, columns, head_dim) with unit stride in the last dimension; seen (rows,) integers in [1, columns].
    An fp8 cache passes its scales, key_scales and value_scales (rows, kv_heads, columns) with unit stride in the
    last dimension: column c of a row's head holds keys[c] * key_scales[c]. Returns (rows, kv_heads, group,
    head_dim) in the query's dtype. `interpret` runs Triton's interpreter (CPU tensors; the tests)."""
    quantized = key_scales is not None
    if quantized != (value_scales is not None):
        raise ValueError("an fp8 cache needs both key_scales and value_scales")
    # Without scales the kernel never reads them: any pointer and zero strides fill the arguments.
    k_scales = key_scales if key_scales is not None else seen
    v_scales = value_scales if value_scales is not None else seen
    k_scale_strides = key_scales.stride()[:2] if key_scales is not None else (0, 0)
    v_scale_strides = value_scales.stride()[:2] if value_scales is not None else (0, 0)
    rows, kv_heads, group, head_dim = query.shape
    columns = keys.shape[2]
    splits = math.ceil(columns / SPLIT)
    partial = torch.empty(rows * kv_heads, splits, group, head_dim, dtype=torch.float32, device=query.device)
    top = torch.empty(rows * kv_heads, splits, group, dtype=torch.float32, device=query.device)
    total = torch.empty_like(top)
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    span, merge = _kernels(interpret)
    ieee = query.dtype == torch.float32  # the interpreter's tests run in float32: no tf32 rounding there
    span[(rows * kv_heads, splits)](
        query, keys, values, k_scales, v_scales, seen, partial, top, total,
        query.stride(0), query.stride(1), query.stride(2),
        keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2),
        *k_scale_strides, *v_scale_strides,
        scale, kv_heads, splits,
        GROUP=group, GROUP_PAD=GROUP_PAD, DIM=head_dim, SPLIT=SPLIT, BLOCK=BLOCK, IEEE=ieee, QUANT=quantized,
        HALF=quantized and FP8_VIA_FP16, num_warps=WARPS)
    merge[(rows * kv_heads,)](
        partial, top, total, seen, out, kv_heads, splits,
        GROUP=group, DIM=head_dim, SPLIT=SPLIT, SPLITS_PAD=triton.next_power_of_2(splits))
    return out


def visible_columns(seen: torch.Tensor, width: int) -> torch.Tensor:
    """`masked_attention`'s mask: (rows, 1, 1, width), true on each row's first `seen[row]` columns."""
    columns = torch.arange(width, device=seen.device)
    return (columns[None] < seen[:, None])[:, None, None]


def masked_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """The same result through torch's fused attention with a padding mask (`visible_columns`), reading every row
    to `keys`' width: the path where the kernel does not run (a CPU), and the tests' reference."""
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scale)


@cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The two kernels, compiled for the GPU, or run by Triton's interpreter (chosen when they are made)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_span_attention), InterpretedFunction(_merge_spans)
    return triton.jit(_span_attention), triton.jit(_merge_spans)


def _span_attention(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, seen_ptr,  # type: ignore[no-untyped-def]
                    partial_ptr, top_ptr, total_ptr,
                    q_row, q_head, q_group, k_row, k_head, k_col, v_row, v_head, v_col,
                    ks_row, ks_head, vs_row, vs_head,
                    scale, kv_heads, splits,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr, SPLIT: tl.constexpr,
                    BLOCK: tl.constexpr, IEEE: tl.constexpr, QUANT: tl.constexpr, HALF: tl.constexpr):
    """One (row, key/value head, span): the span's unnormalised output, its running maximum and its sum. QUANT:
    keys and values are fp8 with a scale per column (ks_ptr, vs_ptr), dequantised here; HALF: in fp16."""
    row_head = tl.program_id(0)
    span = tl.program_id(1)
    row = row_head // kv_heads
    head = row_head % kv_heads
    seen = tl.load(seen_ptr + row).to(tl.int32)
    start = span * SPLIT
    if start < seen:
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, DIM)
        q = tl.load(q_ptr + row * q_row + head * q_head + g[:, None] * q_group + d[None, :],
                    mask=g[:, None] < GROUP, other=0.0)
        if HALF:
            q = q.to(tl.float16)
        k_base = k_ptr + row.to(tl.int64) * k_row + head.to(tl.int64) * k_head
        v_base = v_ptr + row.to(tl.int64) * v_row + head.to(tl.int64) * v_head
        ks_base = ks_ptr + row.to(tl.int64) * ks_row + head.to(tl.int64) * ks_head
        vs_base = vs_ptr + row.to(tl.int64) * vs_row + head.to(tl.int64) * vs_head
        top = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        total = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
        end = tl.minimum(start + SPLIT, seen)
        for block in range(0, SPLIT // BLOCK):
            c = start + block * BLOCK + tl.arange(0, BLOCK)
            inside = c < end
            k = tl.load(k_base + c[:, None] * k_col + d[None, :], mask=inside[:, None], other=0.0)
            if QUANT:
                k = k.to(q.dtype)  # exact: every e4m3 value is an fp16, a bf16 and an fp32 value
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            if QUANT:
                s = s * tl.load(ks_base + c, mask=inside, other=0.0).to(tl.float32)[None, :]
            s = tl.where(inside[None, :], s * scale, float("-inf"))
            new_top = tl.maximum(top, tl.max(s, 1))
            p = tl.exp(s - new_top[:, None])
            keep = tl.exp(top - new_top)
            total = total * keep + tl.sum(p, 1)
            v = tl.load(v_base + c[:, None] * v_col + d[None, :], mask=inside[:, None], other=0.0)
            if QUANT:
                v = v.to(q.dtype)
                weighted = p * tl.load(vs_base + c, mask=inside, other=0.0).to(tl.float32)[None, :]
            else:
                weighted = p
            if IEEE:
                acc = acc * keep[:, None] + tl.dot(weighted.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * keep[:, None] + tl.dot(weighted.to(v.dtype), v)
            top = new_top
        at = (row_head * splits + span) * GROUP + g
        tl.store(partial_ptr + at[:, None] * DIM + d[None, :], acc, mask=g[:, None] < GROUP)
        tl.store(top_ptr + at, top, mask=g < GROUP)
        tl.store(total_ptr + at, total, mask=g < GROUP)


def _merge_spans(partial_ptr, top_ptr, total_ptr, seen_ptr, out_ptr,  # type: ignore[no-untyped-def]
                 kv_heads, splits,
                 GROUP: tl.constexpr, DIM: tl.constexpr, SPLIT: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """One (row, key/value head): the spans the row reaches, merged by their maxima; written in out's dtype."""
    row_head = tl.program_id(0)
    seen = tl.load(seen_ptr + row_head // kv_heads).to(tl.int32)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, DIM)
    used = (s < splits) & (s * SPLIT < seen)
    for g in tl.static_range(GROUP):
        at = (row_head * splits + s) * GROUP + g
        top = tl.load(top_ptr + at, mask=used, other=float("-inf"))
        weight = tl.where(used, tl.exp(top - tl.max(top, 0)), 0.0)
        total = tl.sum(tl.load(total_ptr + at, mask=used, other=0.0) * weight, 0)
        partial = tl.load(partial_ptr + at[:, None] * DIM + d[None, :], mask=used[:, None], other=0.0)
        out = tl.sum(partial * weight[:, None], 0) / total
        tl.store(out_ptr + (row_head * GROUP + g) * DIM + d, out.to(out_ptr.dtype.element_ty))
