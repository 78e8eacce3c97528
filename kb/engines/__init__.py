"""The one engine interface, the registry of engines and `auto` selection.

Every engine (built-in or third-party) registers a factory under a name, the way simonw/llm plugins do.
Only modules in this package import torch, transformers, openai or rapidocr.
"""
from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

from kb.config import Settings
from kb.errors import ConfigError, EngineError
from kb.types import Request

log = logging.getLogger(__name__)


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers", "openai", "ocr"
    model: str  # model id or path the engine runs
    device: str  # where it runs, for display ("cuda:0 (NVIDIA H100)", "http://host:8000/v1", "cpu")
    can_caption: bool  # False: the engine reads text only (no captions, no video descriptions)
    generative: bool  # False: answers are extractive, written by kb.answer without a model

    def generate(self, requests: Sequence[Request]) -> list[str]:
        """Answer a batch of requests, one text each, in order."""

    def stream(self, request: Request) -> Iterator[str]:
        """Yield the text of one answer piece by piece."""


EngineFactory = Callable[[Settings], Engine]
_FACTORIES: dict[str, str | EngineFactory] = {
    "transformers": "kb.engines.transformers_qwen:TransformersEngine",
    "openai": "kb.engines.openai_compat:OpenAIEngine",
    "ocr": "kb.engines.ocr:OCREngine",
}


def register_engine(name: str, factory: str | EngineFactory) -> None:
    """Add an engine: a callable Settings -> Engine, or its 'module:attr' path (imported on first use)."""
    _FACTORIES[name] = factory


def _load_plugins() -> None:
    for ep in entry_points(group="seekframe.engines"):
        _FACTORIES.setdefault(ep.name, ep.value)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_engine_name(settings: Settings) -> tuple[str, str]:
    """The engine `settings.engine` means, and a sentence that says why and how to change it."""
    if settings.engine != "auto":
        return settings.engine, f"engine '{settings.engine}' chosen by {settings.sources.get('engine', 'settings')}"
    if cuda_available():
        return "transformers", ("engine auto -> 'transformers' (a CUDA GPU is present); "
                                "set KB_ENGINE=ocr for the model-free reader or KB_ENGINE=openai for a server")
    return "ocr", ("engine auto -> 'ocr' (no CUDA GPU: RapidOCR reads text, no captions, extractive answers); "
                   "set KB_ENGINE=transformers to run Qwen3-VL on the CPU (slow) or KB_ENGINE=openai "
                   "with KB_OPENAI_BASE_URL for a vLLM/SGLang server")


# Measured in bench/engine_gpu.py (docs/benchmarks.md): on an H100/H200 a 4B model reads 11 pages/min at
# batch 8 and 90 at batch 64 in about 35 GB; 32 (22 GB) suits a 40 GB card. Elsewhere, small batches.
GPU_BATCH = 32
DEFAULT_BATCH = 8


def batch_size_for(settings: Settings, engine: Engine) -> int:
    """Units per engine call: KB_BATCH_SIZE when set, else what suits the engine and its device."""
    if settings.batch_size:
        return settings.batch_size
    if engine.name == "transformers" and engine.device.startswith("cuda"):
        return GPU_BATCH
    if engine.name == "openai":
        return max(DEFAULT_BATCH, settings.concurrency * 2)
    return DEFAULT_BATCH


def load_engine(settings: Settings) -> Engine:
    name, why = resolve_engine_name(settings)
    log.info(why)
    try:
        return _build(name, settings)
    except EngineError as err:
        if settings.engine != "auto" or name == "ocr":
            raise
        # The offline profile: `auto` picked the GPU model, but its weights cannot be had here.
        log.warning("OFFLINE PROFILE: the %s engine could not load (%s); falling back to the ocr engine "
                    "(RapidOCR, no captions, extractive answers). Fix: %s", name, str(err).splitlines()[0], err.fix)
        return _build("ocr", settings)


def _build(name: str, settings: Settings) -> Engine:
    _load_plugins()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown engine {name!r}", f"use one of {', '.join(sorted(_FACTORIES))} or 'auto'")
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(settings)
