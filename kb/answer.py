"""Answers: retrieve, build the numbered context, and stream a cited answer (or quote passages, without a model)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from PIL import Image

from kb import i18n, prompts
from kb.answer_cache import AnswerCache, answer_key, content_version
from kb.config import Settings
from kb.engines import Engine
from kb.lexical import STOPWORDS, tokenize
from kb.paths import fs_path
from kb.search import Filters, expand_context, search
from kb.store import Store
from kb.types import Hit, Request

MAX_KEY_FRAMES = 4  # small JPEGs (320 px): a few hundred visual tokens in all
_WORD = re.compile(r"[\w']+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])|\n\s*[-•*]\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
# Names in a question: a capitalised word inside the sentence, an acronym, a number of 3+ digits (a year, a code).
_NAME = re.compile(r"(?<=[\w,;:)] )[A-Z][\w&.-]*[A-Za-z0-9]|\b[A-Z]{2,}[\w-]*|\b\d[\d.,]{2,}\d\b")
# A citation marker as the prompt asks for it ([3], several as [1][3]) or as models also write it ([1, 3]).
_MARKER = re.compile(r"([ \t]*)\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]")
# A word long enough that one letter off is a typing slip, not another word ("Boeing" is one letter from "being").
_TYPO_WORD = re.compile(r"[A-Z][a-z]{6,}")
_FISCAL_YEAR = re.compile(r"FY(\d{4})")  # "FY2018": a report says "2018" or "fiscal 2018"
_TITLE_RUN = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b")  # "College Board Search Platform": one name
_FORMAT_SENTENCE = re.compile(r"(?i)\banswer\b.*\bformat(?:ted)?\b")  # "Please write the answer in int format"


@dataclass(frozen=True)
class Generation:
    """How an answer is decoded: the user's choice in the Ask page or the CLI flags; greedy by default."""

    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0: greedy, the same answer every time
    top_p: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Generation:
        return cls(settings.max_answer_tokens, settings.temperature, settings.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Prepared:
    """A question ready to answer: its retrieved hits and the request for the engine."""

    question: str
    hits: list[Hit]  # the numbered sources, [1] first, in document order (neighbouring chunks included)
    request: Request
    retrieval_seconds: float
    ranked: list[Hit] = field(default_factory=list)  # what search returned, best first
    absent: list[str] = field(default_factory=list)  # names in the question that no searched source contains


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Hit]
    engine: str
    model: str
    retrieval_seconds: float = 0.0
    generation_seconds: float = 0.0
    cached: bool = False  # served from the answer cache (kb/answer_cache.py)

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.text, "citations": [h.to_json() for h in self.citations], "cached": self.cached}


def prepare(question: str, store: Store, k: int = 5, filters: Filters | None = None,
            history: Sequence[tuple[str, str]] = (), max_tokens: int = 1024,
            generation: Generation | None = None) -> Prepared:
    """Retrieve and build the request; `generation` (else greedy with `max_tokens`) says how it is decoded."""
    generation = generation or Generation(max_tokens)
    started = time.monotonic()
    # A follow-up ("and in 2023?") is searched together with the previous question, which names the subject.
    last_user = next((text for role, text in reversed(history) if role == "user"), "")
    ranked = search(store, f"{last_user}\n{question}".strip(), k, filters)
    hits = expand_context(store, ranked, store.settings.context_chars, admit=(filters or Filters()).admits)
    absent = absent_names(question, store, filters) if hits else []
    pictured, images = key_frames(hits)
    request = Request(task="answer", prompt=prompts.answer_prompt(question, hits, pictured, absent), images=images,
                      system=prompts.ANSWER_SYSTEM, history=list(history), max_new_tokens=generation.max_new_tokens,
                      temperature=generation.temperature, top_p=generation.top_p)
    return Prepared(question, hits, request, time.monotonic() - started, ranked, absent)


def question_names(question: str) -> list[str]:
    """The names, acronyms and long numbers a question asks about ("Shopee", "BERT", "2019"), in order, once.

    A sentence about the answer's format ("Save your answer as a list of dates formatted as 'YYYY-MM-DD'") asks
    about nothing in the sources: its words are not names."""
    asked = " ".join(s for s in _SENTENCE.split(question) if not _FORMAT_SENTENCE.search(s))
    names = (m.group().rstrip(".").removesuffix("'s").removesuffix("’s") for m in _NAME.finditer(asked))
    return list(dict.fromkeys(n for n in names if len(n) > 1 and n.lower() not in STOPWORDS))


def absent_names(question: str, store: Store, filters: Filters | None = None) -> list[str]:
    """The question's names that occur nowhere in what it searches (the whole knowledge base, or the filtered part).

    A question about something the sources never mention cannot be answered from them, however close the nearest
    passage looks: "how many Shopee datasets?" on a paper that only has Amazon ones. Looked up in the lexical index,
    so a name is absent only if no chunk holds it at all, not merely the retrieved ones. Two slips of a person
    asking do not count as absence: a long word typed with one letter too many or two letters swapped
    ("Demoncratic", "Reasone"), one word of a longer name the sources give in other words ("Platform" in
    "College Board Search Platform", when College, Board and Search are there), and a fiscal year written
    "FY2018" where the report says 2018.
    """
    where = (filters or Filters()).where(store)

    def held(text: str) -> bool:  # a stopword alone ("II") proves nothing: counted as held
        return not tokenize(text) or bool(store.lexical_query(text, 1, where))

    names = question_names(question)
    missing = [name for name in names if not held(name)]
    missing = [name for name in missing if not (_TYPO_WORD.fullmatch(name) and held(" ".join(_slips(name))))]
    missing = [name for name in missing if not ((year := _FISCAL_YEAR.fullmatch(name)) and held(year.group(1)))]
    for run in _TITLE_RUN.finditer(question):
        words = [word for word in run.group().split() if word in names]  # not the sentence's first word
        if 2 * sum(word in missing for word in words) < len(words):  # most of the name is there
            missing = [name for name in missing if name not in words]
    return missing


def _slips(word: str) -> list[str]:
    """The words `word` may have been meant as: one letter fewer, or two neighbouring letters swapped."""
    deleted = (word[:n] + word[n + 1:] for n in range(len(word)))
    swapped = (word[:n] + word[n + 1] + word[n] + word[n + 2:] for n in range(len(word) - 1))
    return list(dict.fromkeys(w for w in (*deleted, *swapped) if w != word))


def key_frames(hits: Sequence[Hit], limit: int = MAX_KEY_FRAMES) -> tuple[list[int], list[Image.Image]]:
    """Key frames of the cited video segments (source numbers, images): the model sees what was on screen."""
    numbers: list[int] = []
    images: list[Image.Image] = []
    for n, hit in enumerate(hits, 1):
        frame_path = fs_path(hit.chunk.keyframe) if hit.chunk.keyframe else None  # stored form -> the name that opens
        if frame_path and len(images) < limit and frame_path.is_file():
            with Image.open(frame_path) as frame:
                images.append(frame.convert("RGB"))
            numbers.append(n)
    return numbers, images


def keep_real_citations(text: str, sources: int) -> str:
    """`text` with only the markers of real sources (1..sources): a document (or a model repeating one) can
    print [9], which must not read as a citation. A marker with no real number goes, with the space before it."""
    def keep(match: re.Match[str]) -> str:
        real = [n for n in map(int, re.findall(r"\d+", match.group(2))) if 1 <= n <= sources]
        return match.group(1) + "".join(f"[{n}]" for n in real) if real else ""

    return _MARKER.sub(keep, text)


def stream_answer(prepared: Prepared, engine: Engine) -> Iterator[str]:
    """The answer text, piece by piece; extractive quotes when the engine has no language model."""
    if not prepared.hits:
        yield prompts.no_sources(prepared.question)
    elif not engine.generative and prepared.absent:
        # Quoting the nearest page would answer another question; the model-less engine says what is missing.
        yield prompts.not_in_sources(prepared.absent, prepared.ranked[0] if prepared.ranked else prepared.hits[0],
                                     prepared.question)
    elif not engine.generative:
        yield extractive_answer(prepared.question, prepared.hits, prepared.ranked or prepared.hits)
    else:
        yield from engine.stream(prepared.request)


def cache_key(question: str, store: Store, engine: Engine, k: int, filters: Filters | None = None,
              generation: Generation | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
    """The answer cache's key: the question, how it is answered, and the content of the sources in its scope."""
    records = store.manifest.all()
    allowed = (filters or Filters()).source_paths(store)
    if allowed is not None:
        wanted = set(allowed)
        records = [r for r in records if r.path in wanted]
    return answer_key(question, content_version(records), store.settings, engine.name, engine.model, k, filters,
                      generation or Generation(store.settings.max_answer_tokens), history)


def ask(question: str, store: Store, engine: Engine, k: int = 5, filters: Filters | None = None,
        history: Sequence[tuple[str, str]] = (), max_tokens: int = 1024,
        generation: Generation | None = None, cache: AnswerCache | None = None, regenerate: bool = False) -> Answer:
    """A cited answer; with `cache`, a repeated question is answered from it (unless `regenerate`)."""
    generation = generation or Generation(max_tokens)
    key = cache_key(question, store, engine, k, filters, generation, history) if cache else ""
    found = cache.get(key) if cache and not regenerate else None
    if found:
        return Answer(question, found.text, found.hits, engine.name, engine.model, cached=True)
    prepared = prepare(question, store, k, filters, history, max_tokens, generation)
    started = time.monotonic()
    text = keep_real_citations("".join(stream_answer(prepared, engine)), len(prepared.hits))
    if cache and prepared.hits:
        cache.put(key, question, text, prepared.hits)
    return Answer(question, text, prepared.hits, engine.name, engine.model, prepared.retrieval_seconds,
                  time.monotonic() - started)


def _terms(text: str) -> set[str]:
    words = {w.lower() for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in STOPWORDS}
    return words | set(_CJK.findall(text))  # CJK has no spaces: single characters carry the overlap


def best_sentence(question: str, text: str, max_chars: int = 300) -> str:
    """The sentence of `text` that shares most terms with the question (ties: the earliest)."""
    wanted = _terms(question)
    # OCR and PDF text break lines inside sentences: join each paragraph's lines before splitting sentences.
    paragraphs = (" ".join(p.split()) for p in _PARAGRAPH.split(text))
    sentences = [s.strip() for p in paragraphs for s in _SENTENCE.split(p) if s and s.strip()]
    if not sentences:
        return ""
    # Most shared terms; among equals the fuller sentence (a heading says little), then the earliest.
    best = max(sentences, key=lambda s: (len(wanted & _terms(s)), min(len(s.split()), 20), -sentences.index(s)))
    return best if len(best) <= max_chars else best[:max_chars].rsplit(" ", 1)[0] + " …"


def extractive_answer(question: str, sources: Sequence[Hit], ranked: Sequence[Hit], quotes: int = 3) -> str:
    """The best sentence of each of the `quotes` best hits, cited by its number among `sources`."""
    number = {hit.chunk.id: n for n, hit in enumerate(sources, 1)}
    # The one sentence of its own the model-less engine writes, in the question's language like a model's answer.
    lines = [i18n.text("answer.extractive_heading", i18n.language_of_text(question)), ""]
    for hit in [h for h in ranked if h.chunk.id in number][:quotes]:
        quote = keep_real_citations(best_sentence(question, hit.chunk.text), 0)  # the document's own [n] are not ours
        lines.append(f"> {quote} [{number[hit.chunk.id]}]")
        lines.append("")
    return "\n".join(lines).rstrip()
