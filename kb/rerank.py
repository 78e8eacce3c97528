"""Optional second stage: a cross-encoder reads (question, passage) pairs and re-orders the fused candidates.

Off by default on CPU (a 568M-parameter cross-encoder over 50 passages takes seconds there); "auto" turns it
on when a CUDA GPU is present. Settings (once they exist): rerank = auto|on|off, rerank_model, and
rerank_candidates (how many fused hits it reads).
"""
from __future__ import annotations

import logging
import threading
import time
from functools import cached_property
from typing import Any, Sequence

from kb.config import Settings
from kb.errors import ConfigError
from kb.types import Hit

log = logging.getLogger(__name__)
DEFAULT_RERANK_MODEL = "BAAI/bge-reranker-v2-m3"
RERANK_MODES = ("auto", "on", "off")
_CACHE: dict[tuple[str, str], Reranker] = {}
_GUARD = threading.Lock()
_FAILED: set[str] = set()


class Reranker:
    """One sentence-transformers CrossEncoder; `last_seconds` is the latency of the last call (for reports)."""

    def __init__(self, model: str = DEFAULT_RERANK_MODEL, device: str | None = None, max_length: int = 512) -> None:
        self.name = model
        self._device = None if device in (None, "auto") else device
        self._max_length = max_length
        self.last_seconds = 0.0

    @cached_property
    def model(self) -> Any:  # sentence_transformers.CrossEncoder (imported on first use)
        from sentence_transformers import CrossEncoder

        return CrossEncoder(self.name, device=self._device, max_length=self._max_length)

    def scores(self, question: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(s) for s in self.model.predict([(question, t) for t in texts], batch_size=16,
                                                     show_progress_bar=False)]

    def rerank(self, question: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The best `k` of `hits` by the cross-encoder's score (which becomes `Hit.score`)."""
        started = time.perf_counter()
        scored = sorted(zip(self.scores(question, [h.chunk.text for h in hits]), range(len(hits)), hits),
                        key=lambda t: (-t[0], t[1]))  # ties keep the fused order
        self.last_seconds = time.perf_counter() - started
        return [Hit(h.chunk, s) for s, _, h in scored[:k]]


def reranker_for(settings: Settings, force: bool = False) -> Reranker | None:
    """The reranker the settings ask for, loaded once per process; None when off.

    "auto" means on with a CUDA GPU; if the model then cannot load (offline, not downloaded) search goes on
    without it and says so once. "on" (or force) makes a failure to load an error with a fix.
    """
    mode = "on" if force else settings.rerank
    if mode not in RERANK_MODES:
        raise ConfigError(f"rerank = {mode!r} is not one of {', '.join(RERANK_MODES)}",
                          "set KB_RERANK to auto, on or off")
    if mode == "off":
        return None
    if mode == "auto":
        from kb.engines import cuda_available

        if not cuda_available():
            return None
    name = settings.rerank_model
    key = (name, str(settings.device))
    with _GUARD:
        if key in _CACHE:
            return _CACHE[key]
        if mode == "auto" and name in _FAILED:
            return None
        reranker = Reranker(name, settings.device)
        try:
            reranker.model  # noqa: B018 - load now, so a failure is reported here and not per query
        except Exception as err:  # sentence-transformers raises OSError, ValueError, hub errors...
            if mode == "on":
                raise ConfigError(f"reranker {name!r} could not be loaded: {err}",
                                  f"download it once with network access (hf download {name}), point "
                                  "KB_RERANK_MODEL at a local folder, or set KB_RERANK=off") from err
            _FAILED.add(name)
            log.warning("reranker %s could not be loaded (%s); searching without it (set KB_RERANK=off to "
                        "silence this)", name, str(err).splitlines()[0][:160])
            return None
        _CACHE[key] = reranker
        return reranker
