"""FlashInfer's batch decode attention against the KV slab's kernel, on one layer at 128 rows of real page lengths.

Why: the slab's Triton kernel reads a bf16 cache at ~3.6 TB/s but an fp8 cache at only ~1.9 TB/s, so an fp8 cache
makes decoding no faster (docs/benchmarks.md, runs E-Z). This asks whether the kernels vLLM and SGLang decode with
do better at the same shapes: FlashInfer's decode on the vector units (`use_tensor_cores=False`) and on the matrix
unit (`True`), over a bf16 and an fp8 cache (e4m3, one scale for the tensor: FlashInfer's decode takes no scale per
token), with pages of 16 columns and with one page a row (the slab itself: a row's 3,584 columns as one page).

FlashInfer is not a dependency of Seekframe; the lent GPU image has no internet. Carry its source distribution
(flashinfer-python 0.2.8, which compiles its kernels with nvcc on first use) plus ninja, einops and nvidia-ml-py
wheels, then on the GPU machine:

    tar xzf flashinfer_python-0.2.8.tar.gz -C /root/fi && cd /root/fi/flashinfer_python-0.2.8
    mkdir -p flashinfer/data && for d in include csrc; do ln -sfn $PWD/$d flashinfer/data/$d; done
    ln -sfn $PWD/3rdparty/cutlass flashinfer/data/cutlass; ln -sfn $PWD/3rdparty/spdlog flashinfer/data/spdlog
    # CUDA 13's nvcc makes kernel template stubs static by default; FlashInfer 0.2.8 instantiates kernels in one
    # file and refers to them from another (FlashInfer 0.3 passes the same flag)
    PYTHONPATH=/root/fi/flashinfer_python-0.2.8:. TORCH_CUDA_ARCH_LIST=9.0 \
        PYTORCH_NVCC="$(which nvcc) -static-global-template-stub=false" python -m bench.flashinfer_decode_gpu

usage: python -m bench.flashinfer_decode_gpu [--out FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import flashinfer
import torch

import kb.engines.decode_attention as spans
from bench.decode_step_gpu import COLUMNS, DIM, GROUP, KV_HEADS, ROWS, median_ms, one_layer
from bench.report import markdown_table, publish

PAGES = (16, COLUMNS)  # columns a page: FlashInfer's usual size, and the slab's rows as pages


def page_table(seen: torch.Tensor, page: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashInfer's paged layout over the slab's rows cut into pages of `page` columns: each row's page offsets,
    its pages' indices, and the columns used in its last page."""
    pages_per_row = COLUMNS // page
    pages = (seen + page - 1) // page
    indptr = torch.zeros(ROWS + 1, dtype=torch.int32, device="cuda")
    indptr[1:] = torch.cumsum(pages, 0)
    indices = torch.cat([row * pages_per_row + torch.arange(int(pages[row]), device="cuda", dtype=torch.int32)
                         for row in range(ROWS)])
    return indptr, indices, (seen - (pages - 1) * page).to(torch.int32)


def as_pages(cache: torch.Tensor, page: int) -> torch.Tensor:
    """The slab's (rows, heads, columns, dim) cache as FlashInfer's HND pages (pages, heads, page, dim)."""
    if page == COLUMNS:
        return cache
    return (cache.view(ROWS, KV_HEADS, COLUMNS // page, page, DIM).permute(0, 2, 1, 3, 4)
            .reshape(-1, KV_HEADS, page, DIM))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    q, k, v, (k8, k_scales), (v8, v_scales), seen = one_layer()
    scale = DIM ** -0.5
    elements = int(seen.sum()) * KV_HEADS * 2 * DIM  # key and value elements the rows use
    reference = spans.decode_attention(q, k, v, seen, scale)
    rows = []

    def row(label: str, bytes_each: float, ms: float, out: torch.Tensor) -> None:
        difference = float((out.float().view_as(reference) - reference.float()).norm() / reference.float().norm())
        rows.append([label, ms, elements * bytes_each / ms / 1e6, difference])
        print(rows[-1], flush=True)

    row("slab kernel, bf16 cache (kept)", 2, median_ms(lambda: spans.decode_attention(q, k, v, seen, scale)), reference)
    row("slab kernel, fp8 cache, a scale per token (fp16-asm)", 1 + 2 / DIM,
        median_ms(lambda: spans.decode_attention(q, k8, v8, seen, scale, key_scales=k_scales, value_scales=v_scales)),
        spans.decode_attention(q, k8, v8, seen, scale, key_scales=k_scales, value_scales=v_scales))
    # Random keys and values are ~N(0, 1): e4m3 holds them with a scale of 1 for the whole tensor.
    caches = {"bf16": (k, v, 2), "fp8": (k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn), 1)}
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    query = q.reshape(ROWS, KV_HEADS * GROUP, DIM).contiguous()  # query head h reads key/value head h // GROUP
    notes = []
    for page in PAGES:
        for cores in (False, True):
            for name, (keys, values, bytes_each) in caches.items():
                label = (f"FlashInfer decode, {name} cache, pages of {page} columns, "
                         f"{'matrix unit' if cores else 'vector units'}")
                started = time.perf_counter()
                wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, kv_layout="HND",
                                                                        use_tensor_cores=cores)
                wrapper.plan(*page_table(seen, page), KV_HEADS * GROUP, KV_HEADS, DIM, page,
                             pos_encoding_mode="NONE", q_data_type=torch.bfloat16, kv_data_type=keys.dtype,
                             sm_scale=scale)
                paged = (as_pages(keys, page), as_pages(values, page))
                out = wrapper.run(query, paged)
                torch.cuda.synchronize()
                notes.append(f"{label}: first call (compiling) {time.perf_counter() - started:.1f} s")
                row(label, bytes_each, median_ms(lambda: wrapper.run(query, paged)), out)  # noqa: B023
    header = ["attention of one layer (128 rows, real lengths)", "ms", "GB/s of used bytes",
              "rel. difference to the slab kernel's bf16 output"]
    body = (f"`python -m bench.flashinfer_decode_gpu` (flashinfer-python {flashinfer.__version__}):\n\n"
            + markdown_table(header, rows) + "\n\n" + "; ".join(notes) + ".")
    publish("FlashInfer's decode against the slab's kernel", body, args.out)


if __name__ == "__main__":
    main()
