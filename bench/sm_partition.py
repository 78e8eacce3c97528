"""CUDA green contexts through the driver API (ctypes): streams whose kernels run on a fixed share of the card's SMs.

Why: two streams of one process do not run a memory-bound decode and a compute-bound prefill side by side on the
card (run R: each kernel fills every SM, so the second stream waits). A green context owns a partition of the
SMs; kernels launched on its streams run only there, so the two partitions work at once (FlashInfer's green_ctx
and SGLang's prefill/decode multiplexing do the same with cuda-python; ctypes needs nothing the image lacks).

usage: streams, counts = split_streams(decode_sms)  # [decode stream, rest stream], their SM counts
"""
from __future__ import annotations

import ctypes

import torch

RESOURCE_BYTES = 512  # CUdevResource is 144 bytes in CUDA 12.4 (more in 13); one zeroed buffer a resource
SM_COUNT_OFFSET = 96  # CUdevResource.sm.smCount: after the type (4 bytes) and 92 bytes of padding
RESOURCE_SM = 1  # CU_DEV_RESOURCE_TYPE_SM
GREEN_DEFAULT_STREAM = 1  # CU_GREEN_CTX_DEFAULT_STREAM
STREAM_NON_BLOCKING = 1


def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check(result: int, call: str) -> None:
    if result != 0:
        raise RuntimeError(f"{call} failed with CUresult {result}")


def _sm_count(resource: ctypes.Array) -> int:
    return int.from_bytes(bytes(resource[SM_COUNT_OFFSET:SM_COUNT_OFFSET + 4]), "little")


def _stream_of(cuda: ctypes.CDLL, device: ctypes.c_int, resource: ctypes.Array) -> torch.cuda.ExternalStream:
    desc = ctypes.c_void_p()
    _check(cuda.cuDevResourceGenerateDesc(ctypes.byref(desc), resource, 1), "cuDevResourceGenerateDesc")
    context = ctypes.c_void_p()
    _check(cuda.cuGreenCtxCreate(ctypes.byref(context), desc, device, GREEN_DEFAULT_STREAM), "cuGreenCtxCreate")
    stream = ctypes.c_void_p()
    _check(cuda.cuGreenCtxStreamCreate(ctypes.byref(stream), context, STREAM_NON_BLOCKING, 0),
           "cuGreenCtxStreamCreate")
    return torch.cuda.ExternalStream(stream.value)


def split_streams(first_sms: int, index: int = 0) -> tuple[list[torch.cuda.ExternalStream], list[int]]:
    """Two streams of green contexts over device `index`: the first on at least `first_sms` SMs (rounded up to the
    card's granularity, 8 on Hopper), the second on the rest; and their SM counts."""
    torch.cuda.init()
    cuda = _driver()
    device = ctypes.c_int()
    _check(cuda.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    whole = ctypes.create_string_buffer(RESOURCE_BYTES)
    _check(cuda.cuDeviceGetDevResource(device, whole, RESOURCE_SM), "cuDeviceGetDevResource")
    first, rest = ctypes.create_string_buffer(RESOURCE_BYTES), ctypes.create_string_buffer(RESOURCE_BYTES)
    groups = ctypes.c_uint(1)
    _check(cuda.cuDevSmResourceSplitByCount(first, ctypes.byref(groups), whole, rest, 0, first_sms),
           "cuDevSmResourceSplitByCount")
    streams = [_stream_of(cuda, device, part) for part in (first, rest)]
    return streams, [_sm_count(first), _sm_count(rest)]
