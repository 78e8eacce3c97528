"""Retrieval: a question and filters -> hits, best first."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kb.store import Store
from kb.types import Hit

DOCUMENT_MODALITIES = ("pdf_text", "pdf_ocr", "pdf_figure", "text")
IMAGE_MODALITIES = ("image_ocr", "image_caption")
VIDEO_MODALITIES = ("video_segment",)
MODALITY_GROUPS = {"documents": DOCUMENT_MODALITIES, "images": IMAGE_MODALITIES, "video": VIDEO_MODALITIES}


@dataclass
class Filters:
    """Restrictions on what a search may return; empty means everything."""

    sources: list[str] = field(default_factory=list)  # absolute paths, relative paths or file names
    modalities: list[str] = field(default_factory=list)  # modality names or groups (documents, images, video)
    pages: tuple[int, int] | None = None
    seconds: tuple[float, float] | None = None  # video time range; keeps segments that overlap it

    def where(self, store: Store) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = []
        if self.sources:
            paths = sorted({r.path for name in self.sources for r in store.manifest.find(name)})
            clauses.append({"source_abs": {"$in": paths or ["\0no such source"]}})
        if self.modalities:
            names = sorted({m for g in self.modalities for m in MODALITY_GROUPS.get(g, (g,))})
            clauses.append({"modality": {"$in": names}})
        if self.pages:
            clauses += [{"page": {"$gte": self.pages[0]}}, {"page": {"$lte": self.pages[1]}}]
        if self.seconds:
            clauses += [{"t_end": {"$gte": float(self.seconds[0])}}, {"t_start": {"$lte": float(self.seconds[1])}}]
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def search(store: Store, question: str, k: int = 5, filters: Filters | None = None) -> list[Hit]:
    if not question.strip():
        return []
    where = (filters or Filters()).where(store)
    return store.query(store.embedder.embed_query(question), k, where)
