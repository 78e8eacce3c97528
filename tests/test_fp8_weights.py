"""fp8 weights for the language model (settings' quant = "fp8"): the product's error, its independence from the
other rows of a batch, and the engine that loads with them (CPU: torch's reference fp8 products)."""
from __future__ import annotations

import pytest
import torch

from kb.engines import transformers_qwen as tq
from kb.engines.fp8_weights import Fp8Linear, check_fp8_weights, fp8_linear, quantize_weight
from kb.engines.transformers_qwen import TransformersEngine
from kb.errors import ConfigError
from kb.types import Request
from tests.engine_inputs import BUDGET, noise_image


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_fp8_product_is_within_e4m3_rounding_of_the_float_product():
    torch.manual_seed(0)
    x, weight = torch.randn(24, 256), torch.randn(96, 256) * 0.02
    error = relative_error(fp8_linear(x, *quantize_weight(weight)), x @ weight.T)
    assert 0.005 < error < 0.06  # quantized (not a float product), and by e4m3's ~3 mantissa bits only


def test_an_outlier_channel_or_row_spoils_only_itself():
    # Scales per output channel and per row: a 50x channel (Qwen has such) or a 1000x row costs the others nothing.
    torch.manual_seed(1)
    x, weight = torch.randn(8, 128), torch.randn(64, 128) * 0.02
    weight[5] *= 50
    x[3] *= 1000
    out = fp8_linear(x, *quantize_weight(weight))
    want = x @ weight.T
    keep = [c for c in range(64) if c != 5]
    assert relative_error(out[:, keep], want[:, keep]) < 0.06
    for row in range(8):  # a row's result does not depend on its batch-mates (one scale for all would: row 3)
        alone = fp8_linear(x[row:row + 1], *quantize_weight(weight))[0]
        assert torch.allclose(out[row], alone, rtol=1e-5, atol=1e-5), row  # float32 sums' order only


def test_a_gpu_without_fp8_units_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(ConfigError) as err:
        check_fp8_weights("cuda:0")
    assert "RTX 3090" in str(err.value) and "KB_QUANT=nf4" in err.value.fix
    with pytest.raises(ConfigError) as err:
        check_fp8_weights("cpu")  # torch's reference products: ~30x slower than float32
    assert "KB_QUANT=none" in err.value.fix


def test_engine_on_a_cpu_refuses_fp8_weights(make_settings, tiny_model_dir):
    with pytest.raises(ConfigError, match="fp8"):
        TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu", quant="fp8"))


def test_engine_with_fp8_weights_quarters_the_projections_and_decodes_each_page_as_alone(make_settings,
                                                                                       tiny_model_dir, monkeypatch):
    monkeypatch.setattr(tq, "check_fp8_weights", lambda device: None)  # the CPU runs fp8 here, slowly
    def engine(quant: str) -> TransformersEngine:
        return TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                                quant=quant, batch_size=4, **BUDGET))

    def projections(e: TransformersEngine) -> list[torch.nn.Module]:
        return [m for layer in e._net.model.language_model.layers for m in layer.modules()
                if isinstance(m, (torch.nn.Linear, Fp8Linear))]

    def projection_bytes(e: TransformersEngine) -> int:
        tensors = [t for m in projections(e) for t in (m.weight, getattr(m, "scale", None)) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    fp8, full = engine("fp8"), engine("none")
    assert len(projections(fp8)) == 7 * len(fp8._net.model.language_model.layers)
    assert all(isinstance(m, Fp8Linear) and m.weight.dtype == torch.float8_e4m3fn for m in projections(fp8))
    assert fp8._net.dtype == torch.float32 and fp8._net.lm_head.weight.dtype == torch.float32  # head stays
    assert projection_bytes(fp8) < 0.3 * projection_bytes(full)  # float32 here: 4 bytes a weight -> 1 + scales
    requests = [Request(task="ocr", prompt=f"Read page {n}.", images=[noise_image(20 + n, (64 + 16 * n, 80))],
                        max_new_tokens=8 + 3 * n) for n in range(5)]
    batched = fp8.generate_ids(requests)
    assert batched == [fp8.generate_ids([r])[0] for r in requests]
    assert [len(ids) for ids in batched] == [8, 11, 14, 17, 20]

