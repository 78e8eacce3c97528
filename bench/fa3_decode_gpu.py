"""FlashAttention-3's decode against the KV slab's kernel, on one layer at 128 rows of real page lengths (Hopper).

Two builds of FlashAttention-3's forward kernels, neither a dependency of Seekframe, both linked against torch's
stable C ABI only (they load into the lent image's torch 2.11):
- vLLM's (`vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so` and `flash_attn_interface.py` from the vllm 0.34.0 wheel,
  carried gzipped, 25 MB): decode as vLLM runs it, a varlen call of one query token a row over a paged cache
  (pages of 16 and 256 columns; the slab's keys copied into vLLM's (pages, page, heads, dim) layout);
- fa3-fwd 0.0.3 (PyPI, 27.6 MB, built without the paged cache): `flash_attn_with_kvcache` over the slab's own
  (rows, heads, columns, dim) cache read as a (rows, columns, heads, dim) view, with each row's length.
Each over a bf16 cache and an fp8 one (query, keys and values in e4m3, a descale per row and key/value head: FA3's
fp8 path takes the query in fp8 too), with num_splits 0 (FA3's heuristic, which depends on the batch) and 1
(every row in one program: a row alone gives the bits it gives in a batch, as the slab's kernel does).

    python -m bench.fa3_decode_gpu [--vllm-fa3 DIR] [--out FILE]

DIR holds `flash_attn_interface.py` and `_vllm_fa3_C.abi3.so` (as the package `vfa`: DIR/vfa/...); fa3-fwd is
imported if installed. Either part is skipped, with its reason, where its build is absent.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Callable

import torch

import kb.engines.decode_attention as spans
from bench.decode_step_gpu import COLUMNS, DIM, GROUP, KV_HEADS, ROWS, median_ms, one_layer
from bench.report import markdown_table, publish

PAGES = (16, 256)  # columns a page in vLLM's layout


def fp8_inputs(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Query, keys and values in e4m3 (random ~N(0, 1) values: a descale of 1 for each row and head)."""
    one = torch.ones(ROWS, KV_HEADS, device="cuda", dtype=torch.float32)
    return (query.to(torch.float8_e4m3fn), keys.to(torch.float8_e4m3fn), values.to(torch.float8_e4m3fn),
            {"q_descale": one, "k_descale": one, "v_descale": one})


def vllm_calls(folder: Path, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor, scale: float
               ) -> dict[str, Callable[[slice], torch.Tensor]]:
    """vLLM's decode: one query token a row (varlen), the cache in pages; a call per (cache, page, num_splits)."""
    sys.path.insert(0, str(folder))
    interface: Any = importlib.import_module("vfa.flash_attn_interface")
    if not interface.FA3_AVAILABLE:
        raise ImportError(interface.FA3_UNAVAILABLE_REASON)
    query = q.reshape(ROWS, KV_HEADS * GROUP, DIM).contiguous()
    starts = torch.arange(ROWS + 1, dtype=torch.int32, device="cuda")
    calls = {}
    for page in PAGES:
        per_row = COLUMNS // page
        table = (torch.arange(ROWS, device="cuda", dtype=torch.int32)[:, None] * per_row
                 + torch.arange(per_row, device="cuda", dtype=torch.int32)[None])
        paged = [t.transpose(1, 2).contiguous().view(ROWS * per_row, page, KV_HEADS, DIM) for t in (k, v)]
        for cache in ("bf16", "fp8"):
            qq, kk, vv, descales = (query, *paged, {}) if cache == "bf16" else fp8_inputs(query, *paged)
            for splits in (0, 1):
                def call(rows: slice, qq: Any = qq, kk: Any = kk, vv: Any = vv, descales: Any = descales,
                         splits: int = splits, table: Any = table) -> torch.Tensor:
                    if rows != slice(None):  # one row: its own query, lengths, page table and descales
                        return interface.flash_attn_varlen_func(
                            qq[rows], kk, vv, 1, starts[: rows.stop - rows.start + 1], COLUMNS,
                            seqused_k=lens[rows], softmax_scale=scale, causal=True, block_table=table[rows],
                            fa_version=3, num_splits=splits, **{n: d[rows] for n, d in descales.items()})
                    return interface.flash_attn_varlen_func(
                        qq, kk, vv, 1, starts, COLUMNS, seqused_k=lens, softmax_scale=scale, causal=True,
                        block_table=table, fa_version=3, num_splits=splits, **descales)
                calls[f"vLLM's FA3, {cache} cache, pages of {page}, num_splits {splits}"] = call
    return calls


def fa3_fwd_calls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor, scale: float
                  ) -> dict[str, Callable[[slice], torch.Tensor]]:
    """fa3-fwd's `flash_attn_with_kvcache` over the slab's cache as a (rows, columns, heads, dim) view."""
    from fa3_fwd_interface import flash_attn_with_kvcache

    query = q.reshape(ROWS, 1, KV_HEADS * GROUP, DIM)
    calls = {}
    for cache in ("bf16", "fp8"):
        qq, kk, vv, descales = (query, k, v, {}) if cache == "bf16" else fp8_inputs(query, k, v)
        for splits in (1, 0):
            def call(rows: slice, qq: Any = qq, kk: Any = kk, vv: Any = vv, descales: Any = descales,
                     splits: int = splits) -> torch.Tensor:
                return flash_attn_with_kvcache(qq[rows], kk.transpose(1, 2)[rows], vv.transpose(1, 2)[rows],
                                               cache_seqlens=lens[rows], softmax_scale=scale, causal=True,
                                               num_splits=splits, **{n: d[rows] for n, d in descales.items()})
            calls[f"fa3-fwd, {cache} cache, the slab's view, num_splits {splits}"] = call
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-fa3", type=Path, help="folder holding vfa/ (vLLM's FA3 build)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    q, k, v, (k8, k_scales), (v8, v_scales), seen = one_layer()
    scale = DIM ** -0.5
    lens = seen.to(torch.int32)
    elements = int(seen.sum()) * KV_HEADS * 2 * DIM
    reference = spans.decode_attention(q, k, v, seen, scale)
    calls: dict[str, Callable[[slice], torch.Tensor]] = {
        "slab kernel, bf16 cache (kept)": lambda rows: spans.decode_attention(q[rows], k[rows], v[rows], seen[rows],
                                                                              scale),
        "slab kernel, fp8 cache, a scale per token": lambda rows: spans.decode_attention(
            q[rows], k8[rows], v8[rows], seen[rows], scale, key_scales=k_scales[rows], value_scales=v_scales[rows])}
    skipped = []
    for name, make in (("vLLM's FA3", lambda: vllm_calls(args.vllm_fa3, q, k, v, lens, scale) if args.vllm_fa3
                        else {}), ("fa3-fwd", lambda: fa3_fwd_calls(q, k, v, lens, scale))):
        try:
            calls.update(make())
        except ImportError as err:
            skipped.append(f"{name}: {err}")
    rows = []
    for label, call in calls.items():
        out = call(slice(None))
        alone = all(torch.equal(call(slice(r, r + 1)), out[r:r + 1]) for r in (0, 17, 101))
        ms = median_ms(lambda: call(slice(None)))  # noqa: B023
        per_element = 2 if "bf16" in label else 1
        difference = float((out.float().reshape(reference.shape) - reference.float()).norm()
                           / reference.float().norm())
        rows.append([label, ms, elements * per_element / ms / 1e6, difference, alone])
        print(rows[-1], flush=True)
    header = ["attention of one layer (128 rows, real lengths)", "ms", "GB/s of used bytes",
              "rel. difference to the slab kernel's bf16 output", "row alone == batched"]
    body = ("`python -m bench.fa3_decode_gpu`:\n\n" + markdown_table(header, rows)
            + ("\n\nSkipped: " + "; ".join(skipped) if skipped else ""))
    publish("FlashAttention-3's decode against the slab's kernel", body, args.out)


if __name__ == "__main__":
    main()
