"""fp8 weights for the language model (settings' `quant = "fp8"`, KB_QUANT=fp8).

Each projection of every decoder layer (query/key/value, output, gate/up, down) keeps its weight as float8_e4m3fn
with one float32 scale per output channel, computed from that channel's largest weight when the model loads; each
token's input is scaled the same way when the product runs (one scale per row, from its largest value), and the two
meet in one fp8 matrix product (`torch._scaled_mm` with row-wise scales, which rescales in the product's epilogue).
This is the scheme vLLM calls dynamic fp8 ("--quantization fp8" on a bf16 checkpoint): no calibration data, and a
row's result does not depend on the other rows of its batch. It halves the weights' bytes and runs the products on
the card's fp8 units. Measured on an H200 (docs/benchmarks.md, run X): 3.6 GB less for the 4B model and a page's
prefill 15 % faster, but a decode step 4 % slower at 128 rows and 15 % at one row (torch's row-wise fp8 product
reads the weights more slowly at a few rows than cuBLAS's bf16 products do), so it is a memory setting.

The vision tower, the embeddings and the output head stay in the model's dtype: they are a small share of the
work and lose the most accuracy quantized (as with nf4). Outputs change (greedy ids differ from bf16 ones after a
while), which is why it is a setting and not the default.
"""
from __future__ import annotations

from typing import Any

import torch

from kb.errors import ConfigError

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
TINY = 1e-12  # the scale of an all-zero channel or row: zeros stay zeros instead of 0/0
# A decoder layer's projections, in `plain_weights`' order: (part of the layer, attribute).
PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def projections(layer: Any) -> list[Any]:
    """A decoder layer's projection modules, in PROJECTIONS' order."""
    return [getattr(getattr(layer, part), name) for part, name in PROJECTIONS]


def check_fp8_weights(device: str) -> None:
    """A ConfigError unless this device multiplies fp8 matrices fast: a CUDA GPU of compute capability 8.9 (Ada)
    or newer. On a CPU torch's fp8 products are a slow reference (one token through a 2560 x 9728 projection, 2
    cores: 249 ms against 8.4 ms in float32)."""
    if not device.startswith("cuda"):
        raise ConfigError("quant 'fp8' needs a GPU with fp8 matrix units (Ada, Hopper or newer); on a CPU fp8 "
                          "products run ~30x slower than float32", "set KB_QUANT=none on this machine")
    if torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
        name = torch.cuda.get_device_name(torch.device(device))
        raise ConfigError(f"quant 'fp8' needs fp8 matrix units (an Ada, Hopper or newer GPU); {name} has none",
                          "set KB_QUANT=nf4 (4-bit weights) or KB_QUANT=none")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) as float8_e4m3fn and one float32 scale per output channel: weight ~ fp8 * scale[:, None]."""
    scale = (weight.abs().amax(dim=1).float() / FP8_MAX).clamp_min(TINY)
    stored = (weight.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return stored, scale


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (weight * scale[:, None]).T with x scaled to fp8 per row: the product in fp8, the result in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    row_scale = (rows.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp_min(TINY)
    stored = (rows.float() / row_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    out = torch._scaled_mm(stored, weight.t(), scale_a=row_scale, scale_b=scale[None, :], out_dtype=x.dtype)
    return out.view(*x.shape[:-1], weight.shape[0])


def project(x: torch.Tensor, weight: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A bias-free projection by a weight in the model's dtype, or by an fp8 weight and its scales."""
    if isinstance(weight, tuple):
        return fp8_linear(x, *weight)
    return torch.nn.functional.linear(x, weight)


class Fp8Linear(torch.nn.Module):
    """A bias-free projection with an fp8 weight and per-output-channel scales (buffers, not parameters: the
    model's `dtype` stays the one its other weights have)."""

    weight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Fp8Linear:
        return cls(*quantize_weight(linear.weight.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.scale)


def quantize_language_model(lm: Any) -> int:
    """Replace the projections of every decoder layer of `lm` by `Fp8Linear`s, freeing their weights in the model's
    dtype; bytes of weight saved. Layers with a biased projection are left as they are."""
    saved = 0
    with torch.no_grad():
        for layer in lm.layers:
            for part, name in PROJECTIONS:
                owner = getattr(layer, part)
                linear = getattr(owner, name)
                if type(linear) is not torch.nn.Linear or linear.bias is not None:
                    continue
                saved += linear.weight.numel() * (linear.weight.element_size() - 1)
                setattr(owner, name, Fp8Linear.from_linear(linear))
    return saved
