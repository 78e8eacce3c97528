"""The one engine interface, the registry of engines and `auto` selection.

Every engine (built-in or third-party) registers a factory under a name, the way simonw/llm plugins do.
Only modules in this package import torch, transformers, openai or rapidocr.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import weakref
from concurrent.futures import Future
from importlib.metadata import entry_points
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

from kb.config import VISUAL_TOKEN_PIXELS, Settings
from kb.errors import ConfigError, EngineError
from kb.i18n import said
from kb.types import Request

log = logging.getLogger(__name__)


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers", "openai", "ocr"
    model: str  # model id or path the engine runs
    device: str  # where it runs, for display ("cuda:0 (NVIDIA H100)", "http://host:8000/v1", "cpu")
    can_caption: bool  # False: the engine reads text only (no captions, no video descriptions)
    generative: bool  # False: answers are extractive, written by kb.answer without a model
    # How it batches, which sets how much work ingest hands it per call (`batch_size_for`):
    slots: int  # > 0: it decodes this many rows at once and refills finished ones itself (continuous batching)
    # (such an engine may also take the next batch while one decodes: an optional `submit`, see `submitter`)
    server_batched: bool  # True: it keeps KB_CONCURRENCY requests in flight and a server batches them
    # The most pixels of a picture it reads (its visual-token budget; 0: all of them, as the ocr engine reads small
    # print): ingest renders pages no larger (a 200 dpi page is ~3x what Qwen3-VL reads at the default budget).
    picture_pixels: int

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
    """The engine `settings.engine` asks for, and a sentence that says why and how to change it.

    Only `load_engine` (which may still fall back) and `kb config` (which loads nothing) ask this; everything
    else shows `why_chosen` of the engine that was loaded."""
    if settings.engine != "auto":
        origin = settings.origins.get("engine", "settings")
        return settings.engine, said(f"engine '{settings.engine}' chosen by {origin}", "engine.why.chosen",
                                     engine=settings.engine, origin=origin)
    if cuda_available():
        return "transformers", said("engine auto -> 'transformers' (a CUDA GPU is present); set KB_ENGINE=ocr for "
                                    "the model-free reader or KB_ENGINE=openai for a server",
                                    "engine.why.auto.transformers")
    return "ocr", said("engine auto -> 'ocr' (no CUDA GPU: RapidOCR reads text, no captions, extractive answers); "
                       "set KB_ENGINE=transformers to run Qwen3-VL on the CPU (slow) or KB_ENGINE=openai "
                       "with KB_OPENAI_BASE_URL for a vLLM/SGLang server", "engine.why.auto.ocr")


DEFAULT_BATCH = 8
# The transformers engine decodes continuously: ingest hands it this many times its rows per call, so rows that
# finish are refilled from waiting pages instead of idling until the longest page of a batch is done.
UNITS_PER_ROW = 4
# On a GPU: rows decoded at once are sized from free memory: this share of it for the KV cache, each row sized for
# a full page (visual tokens + prompt + KB_MAX_PAGE_TOKENS), at most MAX_GPU_ROWS (docs/benchmarks.md).
KV_MEMORY_SHARE = 0.6
MAX_GPU_ROWS = 128
PROMPT_TOKENS = 256  # chat template and instructions around the picture


def gpu_rows(settings: Settings, free_bytes: int, kv_bytes_per_token: int) -> int:
    """Rows a GPU engine decodes at once: KB_BATCH_SIZE when set, else as many full pages as the free memory holds."""
    if settings.batch_size:
        return settings.batch_size
    row_tokens = settings.image_max_pixels // VISUAL_TOKEN_PIXELS + PROMPT_TOKENS + settings.max_page_tokens
    rows = int(free_bytes * KV_MEMORY_SHARE) // (kv_bytes_per_token * row_tokens)
    return max(1, min(MAX_GPU_ROWS, rows))


def submitter(engine: Engine) -> Callable[[Sequence[Request]], Future[list[str]]] | None:
    """The engine's `submit(requests) -> Future[list[str]]` where it has one and batches what it is handed (its own
    rows, `slots`, or a server's batch, `server_batched`): it takes the next batch while one decodes, whose
    requests join the running ones as they free, so a run of batches ends in one drained tail, not one per call.
    None for the others: they are called through `generate`."""
    submit = getattr(engine, "submit", None)
    return submit if (engine.slots or engine.server_batched) and callable(submit) else None


# Requests ingest hands a server at once. Its senders keep KB_CONCURRENCY in flight whatever the pieces, so a small
# piece only sends the first pages sooner: a first piece of 256 waited 6.4 s for its pictures (docs/benchmarks.md,
# run AB).
SERVER_PIECE = 16


def piece_size(engine: Engine, settings: Settings) -> int:
    """Requests ingest hands the engine at once, as soon as their pictures are loaded: a full set of its own rows
    (`slots`), so its batch starts full; a small piece for a server (`server_batched`); 1 for an engine that takes
    one batch at a time."""
    if engine.slots:
        return engine.slots
    return min(SERVER_PIECE, settings.concurrency) if engine.server_batched else 1


def picture_pixels(engine: Engine) -> int:
    """The engine's picture budget (`Engine.picture_pixels`); 0 (no limit) for a plugin engine written before it was
    part of the interface."""
    return int(getattr(engine, "picture_pixels", 0))


def batch_size_for(settings: Settings, engine: Engine) -> int:
    """Units per engine call: enough waiting work for the engine's own batching."""
    if engine.slots:  # it refills its own running batch from the call's requests
        return engine.slots * UNITS_PER_ROW
    if engine.server_batched:  # the server batches what is in flight (KB_CONCURRENCY); keep it fed
        return max(DEFAULT_BATCH, settings.concurrency * UNITS_PER_ROW)
    return settings.batch_size or DEFAULT_BATCH


# Why each loaded engine runs, decided once by `load_engine` (weak: forgotten with the engine).
_WHY: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def load_engine(settings: Settings) -> Engine:
    """The engine the settings ask for; under `auto`, the ocr engine when the GPU model cannot load here."""
    name, why = resolve_engine_name(settings)
    log.info(why)
    try:
        engine = _build(name, settings)
    except EngineError as err:
        if settings.engine != "auto" or name == "ocr":
            raise
        # The offline profile: `auto` picked the GPU model, but its weights cannot be had here.
        why = said(f"OFFLINE PROFILE: engine auto -> 'ocr': the {name} engine could not load ({err.message}); "
                   f"RapidOCR reads text, no captions, extractive answers. Fix: {err.fix}", "engine.why.offline",
                   engine=name, problem=err.message, fix=err.fix)
        log.warning(why)
        engine = _build("ocr", settings)
    _WHY[engine] = why
    return engine


# The process's engine loading in the background: (the settings it was asked for, its future).
_loading: tuple[Settings, Future[Engine]] | None = None
_loading_lock = threading.Lock()


def load_in_background(settings: Settings) -> Future[Engine]:
    """The process's one engine, loading on its own thread from the first call on; later calls with the same
    settings share it, and a failed load is tried again. The app calls this when it starts, before any visitor,
    so that a model has loaded (and a GPU engine warmed its answer path: `prepare_to_answer`) by the first
    question."""
    global _loading
    same = dataclasses.replace(settings, origins={})  # where a value came from does not change the engine
    with _loading_lock:
        if _loading is not None and _loading[0] == same:
            future = _loading[1]
            if not (future.done() and future.exception() is not None):
                return future
        future = Future()
        _loading = (same, future)
    threading.Thread(target=_load_into, args=(settings, future), name="seekframe-engine", daemon=True).start()
    return future


def _load_into(settings: Settings, future: Future[Engine]) -> None:
    try:
        engine = load_engine(settings)
        # Only this (the app's) loader readies the answer path: a command-line ingest or a worker process loads
        # through load_engine and warms nothing it will not use (an engine with no such step needs none).
        prepare = getattr(engine, "prepare_to_answer", None)
        if callable(prepare):
            prepare()
        future.set_result(engine)
    except BaseException as err:  # the waiting page shows it; the next call loads again
        future.set_exception(err)


def why_chosen(engine: Engine) -> str:
    """The sentence that says why `engine` runs and how to change it, as `load_engine` decided it."""
    return _WHY.get(engine, f"engine '{engine.name}' given directly (not chosen by the settings)")


def _build(name: str, settings: Settings) -> Engine:
    _load_plugins()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown engine {name!r}", f"use one of {', '.join(sorted(_FACTORIES))} or 'auto'")
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(settings)
