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
Its values may be stored column-major (kv_slab.FP8_VALUES_BY_COLUMN): the second product wants them transposed, and
Triton transposes 8-bit operands in shared memory a byte at a time.
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
STAGES = 0  # software-pipelining stages of the span's loop; 0: Triton's default
# A span's loop stops at the row's last block (False: every span runs all its blocks, masked). Same bits; measured
# 0.227 against 0.230 ms a layer (bf16 cache), 0.223 against 0.240 (fp8).
STOP_AT_END = True
# How the kernel turns an fp8 cache into matrix operands: "bf16", Triton's e4m3 -> bf16 conversion (through fp16,
# three conversion instructions a pair on Hopper); "fp16", e4m3 -> fp16 (one a pair), query and probabilities meeting
# the cache in fp16; "fp16-bits", the same fp16 operands from integer operations (e4m3's sign, exponent and mantissa
# moved into fp16's places: the value times 2**-8, folded into the scales); "fp16-asm", those integer operations
# four bytes at a time in PTX (GPU only; the interpreter runs "fp16-bits", which gives the same bits). Measured on
# the H200 (docs/benchmarks.md, "fp8 KV cache: the conversion is not the limit"): 0.234 / 0.234 / 0.283 / 0.223 ms
# a layer at 128 rows, the bf16 cache's kernel 0.227: the conversion is not what holds the fp8 kernel back (its
# values, transposed for the second product, are read from shared memory a byte at a time).
FP8_CONVERTS = ("bf16", "fp16", "fp16-bits", "fp16-asm")
FP8_CONVERT = "fp16-asm"


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
    kv_heads, columns, head_dim), keys with unit stride in the last dimension, values in the last dimension or,
    for an fp8 cache, in the columns (`by_column`, kv_slab.FP8_VALUES_BY_COLUMN); seen (rows,) integers in
    [1, columns].
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
    convert = FP8_CONVERTS.index(FP8_CONVERT) if quantized else 0
    if interpret and FP8_CONVERTS[convert] == "fp16-asm":
        convert = FP8_CONVERTS.index("fp16-bits")  # no PTX in the interpreter: the same bits from Triton's own ops
    if convert >= FP8_CONVERTS.index("fp16-bits"):  # bytes, taken apart by integer operations
        keys, values = keys.view(torch.uint8), values.view(torch.uint8)
    span[(rows * kv_heads, splits)](
        query, keys, values, k_scales, v_scales, seen, partial, top, total,
        query.stride(0), query.stride(1), query.stride(2),
        keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), values.stride(3),
        *k_scale_strides, *v_scale_strides,
        scale, kv_heads, splits, columns,
        GROUP=group, GROUP_PAD=GROUP_PAD, DIM=head_dim, SPLIT=SPLIT, BLOCK=BLOCK, IEEE=ieee, QUANT=quantized,
        CONVERT=convert, STOP_AT_END=STOP_AT_END, BY_COLUMN=by_column(values), num_warps=WARPS,
        **({"num_stages": STAGES} if STAGES else {}))
    merge[(rows * kv_heads,)](
        partial, top, total, seen, out, kv_heads, splits,
        GROUP=group, DIM=head_dim, SPLIT=SPLIT, SPLITS_PAD=triton.next_power_of_2(splits))
    return out


def write_step(keys: torch.Tensor, values: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               write: torch.Tensor, key_scales: torch.Tensor | None = None, value_scales: torch.Tensor | None = None,
               key_scale: torch.Tensor | None = None, value_scale: torch.Tensor | None = None,
               interpret: bool = False) -> None:
    """Each row's new key and value (rows, kv_heads, head_dim), and an fp8 cache's scales (rows, kv_heads), into
    column write[row] of that row of the cache: one launch where index writes took two a layer (an fp8 cache:
    four), each a few microseconds of a recorded step that is otherwise ~0.3 ms a layer. The bytes written are
    those of the index writes (an fp8 cache is copied as bytes)."""
    quantized = key_scales is not None
    if quantized and (value_scales is None or key_scale is None or value_scale is None):
        raise ValueError("an fp8 cache needs its scales and the new columns' scales")
    if keys.dtype != key.dtype or values.dtype != value.dtype:
        raise ValueError(f"the new columns ({key.dtype}, {value.dtype}) are not the cache's ({keys.dtype})")
    if keys.element_size() == 1:  # fp8: moved as bytes (the interpreter has no fp8 stores)
        keys, values, key, value = (t.view(torch.uint8) for t in (keys, values, key, value))
    # The kernel steps through the new columns' head_dim with unit stride (a compiled step may hand over other
    # layouts); the cache's values may be stored either way (by_column).
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))
    # Without scales the kernel never touches them: any tensor and zero strides fill the arguments.
    scales = [t if t is not None else write for t in (key_scales, value_scales, key_scale, value_scale)]
    scale_strides = [s for t in (key_scales, value_scales, key_scale, value_scale)
                     for s in (t.stride()[:2] if t is not None else (0, 0))]
    rows, kv_heads, head_dim = key.shape
    _writer(interpret)[(rows,)](
        keys, values, key, value, *scales, write,
        *keys.stride()[:3], *values.stride(), *key.stride()[:2], *value.stride()[:2], *scale_strides,
        kv_heads, HEADS=triton.next_power_of_2(kv_heads), DIM=head_dim, QUANT=quantized)


def by_column(values: torch.Tensor) -> bool:
    """Whether a cache's values are stored column-major (head_dim x columns per row and head): the layout in which
    an fp8 cache's values reach the second product without their bytes being transposed in shared memory."""
    return values.stride(2) == 1 and values.stride(3) != 1


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


@cache
def _writer(interpret: bool) -> Any:
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_write_step)
    return triton.jit(_write_step)


def _write_step(k_ptr, v_ptr, nk_ptr, nv_ptr, ks_ptr, vs_ptr, nks_ptr, nvs_ptr,  # type: ignore[no-untyped-def]
                write_ptr, k_row, k_head, k_col, v_row, v_head, v_col, v_dim, nk_row, nk_head, nv_row, nv_head,
                ks_row, ks_head, vs_row, vs_head, nks_row, nks_head, nvs_row, nvs_head, kv_heads,
                HEADS: tl.constexpr, DIM: tl.constexpr, QUANT: tl.constexpr):
    """One row: its new key and value of every key/value head into its column `write`; QUANT: their scales too."""
    row = tl.program_id(0).to(tl.int64)
    column = tl.load(write_ptr + row).to(tl.int64)
    h = tl.arange(0, HEADS)
    d = tl.arange(0, DIM)
    heads = h < kv_heads
    key = tl.load(nk_ptr + row * nk_row + h[:, None] * nk_head + d[None, :], mask=heads[:, None])
    tl.store(k_ptr + row * k_row + h[:, None] * k_head + column * k_col + d[None, :], key, mask=heads[:, None])
    value = tl.load(nv_ptr + row * nv_row + h[:, None] * nv_head + d[None, :], mask=heads[:, None])
    tl.store(v_ptr + row * v_row + h[:, None] * v_head + column * v_col + d[None, :] * v_dim, value,
             mask=heads[:, None])
    if QUANT:  # the scales' columns have unit stride
        key_scale = tl.load(nks_ptr + row * nks_row + h * nks_head, mask=heads)
        tl.store(ks_ptr + row * ks_row + h * ks_head + column, key_scale, mask=heads)
        value_scale = tl.load(nvs_ptr + row * nvs_row + h * nvs_head, mask=heads)
        tl.store(vs_ptr + row * vs_row + h * vs_head + column, value_scale, mask=heads)


def _span_attention(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, seen_ptr,  # type: ignore[no-untyped-def]
                    partial_ptr, top_ptr, total_ptr,
                    q_row, q_head, q_group, k_row, k_head, k_col, v_row, v_head, v_col, v_dim,
                    ks_row, ks_head, vs_row, vs_head,
                    scale, kv_heads, splits, columns,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr, SPLIT: tl.constexpr,
                    BLOCK: tl.constexpr, IEEE: tl.constexpr, QUANT: tl.constexpr, CONVERT: tl.constexpr,
                    STOP_AT_END: tl.constexpr, BY_COLUMN: tl.constexpr):
    """One (row, key/value head, span): the span's unnormalised output, its running maximum and its sum. QUANT:
    keys and values are fp8 with a scale per column (ks_ptr, vs_ptr), dequantised here as CONVERT says (the index
    of FP8_CONVERT in FP8_CONVERTS; 2 and 3 get the cache as bytes)."""
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
        if QUANT and CONVERT > 0:
            q = q.to(tl.float16)
        k_base = k_ptr + row.to(tl.int64) * k_row + head.to(tl.int64) * k_head
        v_base = v_ptr + row.to(tl.int64) * v_row + head.to(tl.int64) * v_head
        ks_base = ks_ptr + row.to(tl.int64) * ks_row + head.to(tl.int64) * ks_head
        vs_base = vs_ptr + row.to(tl.int64) * vs_row + head.to(tl.int64) * vs_head
        top = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        total = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
        end = tl.minimum(start + SPLIT, seen)
        wide_end = tl.minimum(tl.cdiv(end, 16) * 16, columns)  # inside the span (SPLIT is a multiple of 16)
        # Only the blocks that hold columns of the row: a block past its end added p = 0 and kept acc as it was,
        # so stopping early gives the same bits.
        blocks = SPLIT // BLOCK
        if STOP_AT_END:
            blocks = tl.cdiv(end - start, BLOCK)
        for block in range(0, blocks):
            c = start + block * BLOCK + tl.arange(0, BLOCK)
            inside = c < end
            k = tl.load(k_base + c[:, None] * k_col + d[None, :], mask=inside[:, None], other=0.0)
            if QUANT and CONVERT == 0:
                k = k.to(q.dtype)  # exact: every e4m3 value is an fp16, a bf16 and an fp32 value
            elif QUANT:
                k = _fp8_as_fp16(k, CONVERT)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            if QUANT:
                key_scale = tl.load(ks_base + c, mask=inside, other=0.0).to(tl.float32)
                if CONVERT >= 2:
                    key_scale = key_scale * 256.0  # the operand held the value times 2**-8
                s = s * key_scale[None, :]
            s = tl.where(inside[None, :], s * scale, float("-inf"))
            new_top = tl.maximum(top, tl.max(s, 1))
            p = tl.exp(s - new_top[:, None])
            keep = tl.exp(top - new_top)
            total = total * keep + tl.sum(p, 1)
            if BY_COLUMN:
                # Columns are the unit stride: a mask in steps of 16 columns keeps the loads wide. The columns read
                # past the row's end hold finite values (zeros or an earlier row's) and meet p = 0.
                v = tl.load(v_base + c[:, None] * v_col + d[None, :] * v_dim, mask=(c < wide_end)[:, None],
                            other=0.0)
            else:
                v = tl.load(v_base + c[:, None] * v_col + d[None, :] * v_dim, mask=inside[:, None], other=0.0)
            if QUANT:
                v = v.to(q.dtype) if CONVERT == 0 else _fp8_as_fp16(v, CONVERT)
                value_scale = tl.load(vs_base + c, mask=inside, other=0.0).to(tl.float32)
                if CONVERT > 0:
                    # fp16's range: p times a small scale would fall into fp16's subnormals, so the block's scales
                    # are divided by their largest (p x scale / largest in [0, 1]) and the product multiplied back.
                    largest = tl.maximum(tl.max(value_scale, 0), 1e-30)
                    weighted = p * (value_scale / largest)[None, :]
                    if CONVERT >= 2:
                        largest = largest * 256.0
                else:
                    weighted = p * value_scale[None, :]
            else:
                weighted = p
            if IEEE:
                product = tl.dot(weighted.to(v.dtype), v, input_precision="ieee")
            else:
                product = tl.dot(weighted.to(v.dtype), v)
            if QUANT and CONVERT > 0:
                product = product * largest
            acc = acc * keep[:, None] + product
            top = new_top
        at = (row_head * splits + span) * GROUP + g
        tl.store(partial_ptr + at[:, None] * DIM + d[None, :], acc, mask=g[:, None] < GROUP)
        tl.store(top_ptr + at, top, mask=g < GROUP)
        tl.store(total_ptr + at, total, mask=g < GROUP)


def _fp8_as_fp16(x, CONVERT: tl.constexpr):  # type: ignore[no-untyped-def]
    """A block of the fp8 cache as an fp16 matrix operand (CONVERT as in _span_attention): 1 by conversion; 2 and 3
    (x as bytes) hold the value times 2**-8: e4m3's sign in fp16's, its 4 exponent and 3 mantissa bits below
    fp16's top exponent bit (biases 7 and 15; subnormals land on subnormals, so every value is exact)."""
    if CONVERT == 1:
        return x.to(tl.float16)
    if CONVERT == 2:
        b = x.to(tl.uint16)
        return (((b & 0x80) << 8) | ((b & 0x7F) << 7)).to(tl.uint16).to(tl.float16, bitcast=True)
    # Four bytes an instance: prmt puts bytes 0, 1 (2, 3) in the high byte of each half of a word, a shift by one
    # and a mask place exponent and mantissa, lop3 brings the sign back (two integer operations an element).
    return tl.inline_asm_elementwise(
        """{
        .reg .b32 a<2>, b<2>;
        prmt.b32 a0, 0, $2, 0x5140;
        prmt.b32 a1, 0, $2, 0x7362;
        shr.b32 b0, a0, 1;
        shr.b32 b1, a1, 1;
        and.b32 b0, b0, 0x3f803f80;
        and.b32 b1, b1, 0x3f803f80;
        lop3.b32 $0, b0, 0x80008000, a0, 0xf8;
        lop3.b32 $1, b1, 0x80008000, a1, 0xf8;
        }""", "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)


if triton is not None:  # called from the span kernel, which finds it by this name (compiled or interpreted)
    _fp8_as_fp16 = triton.jit(_fp8_as_fp16)


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
