"""Retrieval: a question and filters -> hits, best first.

Three modes: dense (Chroma), lexical (BM25 over Tantivy) and hybrid (both, fused by reciprocal-rank fusion),
optionally re-ordered by a cross-encoder. The default is whichever won the evaluation (Settings.search_mode).
Dense finds paraphrase and other languages; lexical finds the exact strings users type (invoice numbers, error
codes, names). docs/benchmarks.md has the measurements.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kb.config import SEARCH_MODES
from kb.errors import ConfigError
from kb.lexical import identifiers, tokenize
from kb.store import Store, Where
from kb.timeexpr import moments, time_window
from kb.types import Hit, Modality

if TYPE_CHECKING:
    from kb.rerank import Reranker  # imported when a search uses one: it loads sentence-transformers

log = logging.getLogger(__name__)
DOCUMENT_MODALITIES = (Modality.PDF_TEXT, Modality.PDF_OCR, Modality.PDF_FIGURE, Modality.TEXT)
IMAGE_MODALITIES = (Modality.IMAGE_OCR, Modality.IMAGE_CAPTION)
VIDEO_MODALITIES = (Modality.VIDEO_SEGMENT,)
AUDIO_MODALITIES = (Modality.SPEECH,)  # an audio file's passages; a video's speech is stored in its segments
MODALITY_GROUPS = {"documents": DOCUMENT_MODALITIES, "images": IMAGE_MODALITIES, "video": VIDEO_MODALITIES,
                   "audio": AUDIO_MODALITIES}
# The defaults (Settings.search_mode, dense_weight, ...) were measured with bench/retrieval.py
# (docs/benchmarks.md): with the bundled English embedder, BM25 alone beat dense and 1:1 fusion on both
# datasets, and fusion only came close when dense counted 0.3. Hybrid (leaning lexical) is the default all the
# same: it keeps finding paraphrases and other languages, which BM25 cannot (the reasons are in the benchmark
# doc); re-run the benchmark when the embedder changes (Qwen3-Embedding is stronger).


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
            names = sorted({str(m) for g in self.modalities for m in MODALITY_GROUPS.get(g, (g,))})
            clauses.append({"modality": {"$in": names}})
        if self.pages:
            clauses += [{"page": {"$gte": self.pages[0]}}, {"page": {"$lte": self.pages[1]}}]
        if self.seconds:
            clauses += [{"t_end": {"$gte": float(self.seconds[0])}}, {"t_start": {"$lte": float(self.seconds[1])}}]
        if self.video_window:
            start, end = map(float, self.video_window)
            clauses.append({"$or": [{"modality": {"$nin": [str(m) for m in VIDEO_MODALITIES]}},
                                    {"$and": [{"t_end": {"$gt": start}}, {"t_start": {"$lt": end}}]}]})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def admits(self, hit: Hit) -> bool:
        """The chunk-level restrictions, checked in Python (for neighbours pulled in as context)."""
        chunk = hit.chunk
        names = {m for g in self.modalities for m in MODALITY_GROUPS.get(g, (g,))}
        if names and chunk.modality not in names:
            return False
        if self.pages and not (chunk.page is not None and self.pages[0] <= chunk.page <= self.pages[1]):
            return False
        start, end = chunk.t_start, chunk.t_end if chunk.t_end is not None else chunk.t_start
        if self.seconds and not (start is not None and end is not None and end >= self.seconds[0]
                                 and start <= self.seconds[1]):
            return False  # as in where(): a time range keeps only segments that overlap it
        if self.video_window and chunk.modality in VIDEO_MODALITIES and not (
                start is not None and end is not None and end > self.video_window[0] and start < self.video_window[1]):
            return False
        return True

    def source_paths(self, store: Store) -> list[str] | None:
        """The sources these filters allow (None: all of them)."""
        return self._paths(store)

    def _paths(self, store: Store) -> list[str] | None:
        """Source paths allowed by `sources` and `ingested_after` (None: no restriction by source)."""
        allowed: set[str] | None = None
        if self.sources:
            allowed = {r.path for name in self.sources for r in store.manifest.find(name)}
        if self.ingested_after is not None:
            recent = {r.path for r in store.manifest.all() if r.ingested_at >= self.ingested_after}
            allowed = recent if allowed is None else allowed & recent
        return None if allowed is None else sorted(allowed)


def rrf(rankings: Sequence[Sequence[Hit]], weights: Sequence[float], k: int = 60) -> list[Hit]:
    """Reciprocal-rank fusion: score = sum of weight / (k + rank); a hit's fields come from its first list."""
    fused: dict[str, tuple[float, int, Hit]] = {}
    for hits, weight in zip(rankings, weights):
        for rank, hit in enumerate(hits, 1):
            score, best, first = fused.get(hit.chunk.id, (0.0, rank, hit))
            fused[hit.chunk.id] = (score + weight / (k + rank), min(best, rank), first)
    ordered = sorted(fused.values(), key=lambda v: (-v[0], v[1]))  # ties: the better single rank first
    return [Hit(hit.chunk, score) for score, _, hit in ordered]


def search(store: Store, question: str, k: int = 5, filters: Filters | None = None, *, mode: str | None = None,
           rrf_k: int | None = None, dense_weight: float | None = None, lexical_weight: float | None = None,
           rerank: bool | Reranker | None = None, candidates: int | None = None, parse_times: bool = True,
           exact_boost: bool = True) -> list[Hit]:
    """The best `k` chunks for `question`.

    Keyword arguments override the settings (search_mode, rrf_k, dense_weight, lexical_weight, rerank). `rerank`
    is True/False, a `kb.rerank.Reranker`, or None for the setting (default "auto": on with a CUDA GPU only).
    A moment named in the question ("at 12:30") narrows video segments to ±30 s around it.
    """
    if not question.strip():
        return []
    filters = filters or Filters()
    named = moments(question) if parse_times else []
    if named and filters.seconds is None and filters.video_window is None:
        filters = Filters(**{**filters.__dict__, "video_window": time_window(question)})
    mode = mode or store.settings.search_mode
    if mode not in SEARCH_MODES:
        raise ConfigError(f"search mode {mode!r} is not one of {', '.join(SEARCH_MODES)}",
                          "set KB_SEARCH_MODE to hybrid, dense or lexical")
    reranker = _reranker(store, rerank)
    if candidates is None:  # each retriever's list: deep enough for fusion, or for the cross-encoder to re-order
        candidates = store.settings.rerank_candidates if reranker else k * 4
    pool = max(k, candidates, 20)
    where = filters.where(store)
    hits = _retrieve(store, question, mode, pool, where, rrf_k, dense_weight, lexical_weight)
    if mode == "hybrid" and exact_boost:
        hits = exact_first(question, hits)
    if named:
        hits = moment_first(hits, named[0])
    if reranker:
        return reranker.rerank(question, hits[:pool], k)
    return hits[:k]


# Tantivy's search and ONNX Runtime release the GIL, so a hybrid query's lexical half runs on another core while the
# question is embedded and the vector index searched: it takes about the longer of the two, not their sum.
_LEXICAL_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lexical-search")


def _retrieve(store: Store, question: str, mode: str, pool: int, where: Where | None, rrf_k: int | None,
              dense_weight: float | None, lexical_weight: float | None) -> list[Hit]:
    if mode == "lexical":
        return store.lexical_query(question, pool, where)
    lexical_search = _LEXICAL_THREADS.submit(store.lexical_query, question, pool, where) if mode == "hybrid" else None
    dense = store.query(store.embedder.embed_query(question), pool, where)
    if lexical_search is None:
        return dense
    lexical = lexical_search.result()
    s = store.settings
    weights = (s.dense_weight if dense_weight is None else dense_weight,
               s.lexical_weight if lexical_weight is None else lexical_weight)
    return rrf([dense, lexical], weights, rrf_k or s.rrf_k)


def exact_first(question: str, hits: list[Hit]) -> list[Hit]:
    """Hits containing more of the question's codes (INV-2024-0117, E_ACCESS_4711) first; otherwise fused order.

    Rank fusion alone lets a passage that both retrievers find loosely beat the one passage that holds the
    exact code the user typed; for codes that is never what they want.
    """
    wanted = identifiers(question)
    if not wanted:
        return hits
    matched = [len(wanted & set(tokenize(h.chunk.text))) for h in hits]
    order = sorted(range(len(hits)), key=lambda n: (-matched[n], n))
    return [hits[n] for n in order]


def moment_first(hits: list[Hit], moment: float) -> list[Hit]:
    """Video segments that contain the moment the question names come first, nearest start first among them."""
    def start(hit: Hit) -> float | None:
        return hit.chunk.t_start

    def contains(hit: Hit) -> bool:
        begin = start(hit)
        return begin is not None and begin <= moment <= (hit.chunk.t_end or begin)

    inside = sorted((h for h in hits if contains(h)), key=lambda h: moment - (start(h) or 0.0))
    return inside + [h for h in hits if not contains(h)]


def _reranker(store: Store, rerank: bool | Reranker | None) -> Reranker | None:
    """The cross-encoder to use, or None. Imported lazily: most searches never load one."""
    if rerank is False:
        return None
    if rerank is not None and rerank is not True:
        return rerank  # a Reranker the caller built (the benchmark, a test)
    from kb.rerank import reranker_for

    return reranker_for(store.settings, force=rerank is True)


# context assembly ---------------------------------------------------------------------------------------------
def expand_context(store: Store, hits: Sequence[Hit], budget_chars: int, radius: int = 1,
                   admit: Callable[[Hit], bool] = lambda hit: True) -> list[Hit]:
    """Hits plus their neighbouring chunks (previous/next page or segment), within a character budget.

    The hits claim the budget first (best first), then their neighbours (in the same order); a chunk reached
    twice is kept once. Sources keep the order of their best hit (the most relevant source is cited first), and
    within a source chunks follow their position, so citations read in document order.
    """
    chosen: dict[str, Hit] = {}
    used = 0

    def take(hit: Hit) -> None:
        nonlocal used
        chunk = hit.chunk
        if chunk.id in chosen:
            return
        if used + len(chunk.text) > budget_chars:
            if chosen:
                return  # does not fit; a smaller later chunk still may
            hit = Hit(replace(chunk, text=chunk.text[:budget_chars]), hit.score)  # the best hit alone, cut to fit
        chosen[chunk.id] = hit
        used += len(hit.chunk.text)

    for hit in hits:
        take(hit)
    for hit in hits:
        for neighbour in store.neighbours(hit, radius):
            if admit(neighbour):  # context never brings in what the filters keep out
                take(neighbour)
    source_rank: dict[str, int] = {}
    for hit in hits:
        source_rank.setdefault(hit.chunk.path, len(source_rank))
    return sorted(chosen.values(), key=lambda h: (source_rank.get(h.chunk.path, len(source_rank)), h.chunk.position))
