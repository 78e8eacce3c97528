"""Retrieval: a question and filters -> hits, best first.

Hybrid by default: dense (Chroma) and lexical (BM25 over FTS5) candidates fused by reciprocal-rank fusion,
optionally re-ordered by a cross-encoder. Dense finds paraphrase and other languages; lexical finds the exact
strings users type (invoice numbers, error codes, names). docs/benchmarks.md has the measurements.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from kb.errors import ConfigError
from kb.store import Store
from kb.timeexpr import time_window
from kb.types import Hit

log = logging.getLogger(__name__)
DOCUMENT_MODALITIES = ("pdf_text", "pdf_ocr", "pdf_figure", "text")
IMAGE_MODALITIES = ("image_ocr", "image_caption")
VIDEO_MODALITIES = ("video_segment",)
MODALITY_GROUPS = {"documents": DOCUMENT_MODALITIES, "images": IMAGE_MODALITIES, "video": VIDEO_MODALITIES}
SEARCH_MODES = ("hybrid", "dense", "lexical")
# Defaults for the settings search reads (Settings fields search_mode, rrf_k, dense_weight, lexical_weight,
# rerank, rerank_model, rerank_candidates once they exist; these apply until then).
DEFAULT_MODE = "hybrid"
DEFAULT_RRF_K = 60
DEFAULT_CANDIDATES = 50


@dataclass
class Filters:
    """Restrictions on what a search may return; empty means everything."""

    sources: list[str] = field(default_factory=list)  # absolute paths, relative paths or file names
    modalities: list[str] = field(default_factory=list)  # modality names or groups (documents, images, video)
    pages: tuple[int, int] | None = None
    seconds: tuple[float, float] | None = None  # video time range; keeps segments that overlap it
    ingested_after: float | None = None  # Unix time: only sources (re)ingested at or after it
    # A window parsed from the question ("at 12:30"): narrows video segments only, other chunks stay eligible.
    video_window: tuple[float, float] | None = None

    def where(self, store: Store) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = []
        paths = self._paths(store)
        if paths is not None:
            clauses.append({"source_abs": {"$in": paths or ["\0no such source"]}})
        if self.modalities:
            names = sorted({m for g in self.modalities for m in MODALITY_GROUPS.get(g, (g,))})
            clauses.append({"modality": {"$in": names}})
        if self.pages:
            clauses += [{"page": {"$gte": self.pages[0]}}, {"page": {"$lte": self.pages[1]}}]
        if self.seconds:
            clauses += [{"t_end": {"$gte": float(self.seconds[0])}}, {"t_start": {"$lte": float(self.seconds[1])}}]
        if self.video_window:
            start, end = map(float, self.video_window)
            clauses.append({"$or": [{"modality": {"$nin": list(VIDEO_MODALITIES)}},
                                    {"$and": [{"t_end": {"$gte": start}}, {"t_start": {"$lte": end}}]}]})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def _paths(self, store: Store) -> list[str] | None:
        """Source paths allowed by `sources` and `ingested_after` (None: no restriction by source)."""
        allowed: set[str] | None = None
        if self.sources:
            allowed = {r.path for name in self.sources for r in store.manifest.find(name)}
        if self.ingested_after is not None:
            recent = {r.path for r in store.manifest.all() if r.ingested_at >= self.ingested_after}
            allowed = recent if allowed is None else allowed & recent
        return None if allowed is None else sorted(allowed)


def _setting(store: Store, name: str, default: Any) -> Any:
    return getattr(store.settings, name, default)


def rrf(rankings: Sequence[Sequence[Hit]], weights: Sequence[float], k: int = DEFAULT_RRF_K) -> list[Hit]:
    """Reciprocal-rank fusion: score = sum of weight / (k + rank); a hit's fields come from its first list."""
    fused: dict[str, tuple[float, int, Hit]] = {}
    for hits, weight in zip(rankings, weights):
        for rank, hit in enumerate(hits, 1):
            score, best, first = fused.get(hit.id, (0.0, rank, hit))
            fused[hit.id] = (score + weight / (k + rank), min(best, rank), first)
    ordered = sorted(fused.values(), key=lambda v: (-v[0], v[1]))  # ties: the better single rank first
    out = []
    for score, _, hit in ordered:
        out.append(Hit(**{**hit.__dict__, "score": score}))
    return out


def search(store: Store, question: str, k: int = 5, filters: Filters | None = None, *, mode: str | None = None,
           rrf_k: int | None = None, dense_weight: float | None = None, lexical_weight: float | None = None,
           rerank: Any = None, candidates: int | None = None, parse_times: bool = True) -> list[Hit]:
    """The best `k` chunks for `question`.

    Keyword arguments override the settings (search_mode, rrf_k, dense_weight, lexical_weight, rerank). `rerank`
    is True/False, a `kb.rerank.Reranker`, or None for the setting (default "auto": on with a CUDA GPU only).
    A moment named in the question ("at 12:30") narrows video segments to ±30 s around it.
    """
    if not question.strip():
        return []
    filters = filters or Filters()
    if parse_times and filters.seconds is None and filters.video_window is None:
        window = time_window(question)
        if window:
            filters = Filters(**{**filters.__dict__, "video_window": window})
    mode = mode or _setting(store, "search_mode", DEFAULT_MODE)
    if mode not in SEARCH_MODES:
        raise ConfigError(f"search mode {mode!r} is not one of {', '.join(SEARCH_MODES)}",
                          "set KB_SEARCH_MODE to hybrid, dense or lexical")
    reranker = _reranker(store, rerank)
    if candidates is None:  # each retriever's list: deep enough for fusion, or for the cross-encoder to re-order
        candidates = _setting(store, "rerank_candidates", DEFAULT_CANDIDATES) if reranker else k * 4
    pool = max(k, candidates, 20)
    where = filters.where(store)
    hits = _retrieve(store, question, mode, pool, where, rrf_k, dense_weight, lexical_weight)
    if reranker:
        return reranker.rerank(question, hits, k)
    return hits[:k]


def _retrieve(store: Store, question: str, mode: str, pool: int, where: dict | None, rrf_k: int | None,
              dense_weight: float | None, lexical_weight: float | None) -> list[Hit]:
    if mode == "lexical":
        return store.lexical_query(question, pool, where)
    dense = store.query(store.embedder.embed_query(question), pool, where)
    if mode == "dense":
        return dense
    lexical = store.lexical_query(question, pool, where)
    weights = (float(dense_weight if dense_weight is not None else _setting(store, "dense_weight", 1.0)),
               float(lexical_weight if lexical_weight is not None else _setting(store, "lexical_weight", 1.0)))
    return rrf([dense, lexical], weights, int(rrf_k or _setting(store, "rrf_k", DEFAULT_RRF_K)))


def _reranker(store: Store, rerank: Any):
    """The cross-encoder to use, or None. Imported lazily: most searches never load one."""
    if rerank is False:
        return None
    if rerank is not None and rerank is not True:
        return rerank  # a Reranker the caller built (the benchmark, a test)
    from kb.rerank import reranker_for

    return reranker_for(store.settings, force=rerank is True)


# context assembly ---------------------------------------------------------------------------------------------
def expand_context(store: Store, hits: Sequence[Hit], budget_chars: int, radius: int = 1) -> list[Hit]:
    """Hits plus their neighbouring chunks (previous/next page or segment), within a character budget.

    Best hits claim the budget first, each followed by its neighbours; a chunk reached twice is kept once; the
    result is ordered by source and position so numbered citations read in document order.
    """
    chosen: dict[str, Hit] = {}
    used = 0
    for hit in hits:
        group = [hit] + [n for n in store.neighbours(hit, radius) if n.id != hit.id]
        for chunk in group:
            if chunk.id in chosen:
                continue
            if used + len(chunk.text) > budget_chars:
                if chosen or chunk is not hit:
                    continue  # does not fit; a smaller later chunk still may
                chunk = Hit(**{**chunk.__dict__, "text": chunk.text[:budget_chars]})  # the best hit, cut to fit
            chosen[chunk.id] = chunk
            used += len(chunk.text)
    return sorted(chosen.values(), key=lambda h: (h.source, h.source_abs, h.position))
