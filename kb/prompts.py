"""Every prompt Seekframe sends to a model, in one place."""
from __future__ import annotations

from typing import Sequence

from kb import i18n
from kb.types import Hit

OCR_PAGE = (
    "Read this document page and transcribe all of its text as Markdown, in reading order and in the "
    "original language. Use # headings for headings, keep lists as lists, and write every table as a "
    "Markdown table with all its rows. Do not describe the page, do not translate, do not add anything "
    "that is not written on it. If the page has no text, answer with nothing."
)

OCR_IMAGE = (
    "Transcribe all text visible in this image (signs, labels, screens, documents) in the original "
    "language, as Markdown, in reading order. Write tables as Markdown tables. If there is no text, "
    "answer with nothing."
)

CAPTION = (
    "Describe this image for a search index in 2-4 sentences: what it shows, the kind of picture "
    "(photo, chart, diagram, screenshot, scan), notable people, objects, places and actions, and what "
    "any chart or diagram says. Do not transcribe long text."
)

VIDEO_WINDOW = (
    "These frames are a segment of a video, with their timestamps. For a search index, write:\n"
    "Summary: what happens in this segment, in 1-3 sentences, with <t seconds> times for changes.\n"
    "On-screen text: every slide line, subtitle, sign, label or code visible, verbatim.\n"
    "Entities: people, objects and actions worth searching for, comma-separated."
)

ANSWER_SYSTEM = (
    "You answer questions from a personal knowledge base. Use only the numbered sources given. "
    "After each claim cite its source as [n] (several as [1][3]). If the sources do not contain the "
    "answer, say so plainly: do not answer with a source about something else (another name, year, "
    "product or figure than the one asked about), and do not guess. Answer in the language of the question. "
    "Be concise."
)


def answer_prompt(question: str, hits: Sequence[Hit], pictured: Sequence[int] = (), absent: Sequence[str] = ()) -> str:
    """The user turn of an answer: numbered sources with where each came from, then the question.

    `pictured` are the source numbers whose key frame is attached, in the order of the attached images; `absent`
    the question's names that no source in the knowledge base mentions (the model is told, so it can decline).
    """
    blocks = [f"[{n}] ({hit.where})\n{hit.chunk.text.strip()}" for n, hit in enumerate(hits, 1)]
    note = ""
    if pictured:
        note = ("\n\nThe attached pictures are key frames of sources " + ", ".join(f"[{n}]" for n in pictured)
                + ", in that order.")
    if absent:
        note += ("\n\nNote: the knowledge base has no passage that mentions " + ", ".join(f"“{a}”" for a in absent)
                 + "; if the question depends on it, say that the sources do not cover it.")
    return "Sources:\n\n" + "\n\n".join(blocks) + note + f"\n\nQuestion: {question}"


OUTLINE_VIDEO = (
    "Below are timestamped descriptions of consecutive segments of one video. Write its chapters: one line "
    "per topic, in order, exactly in the form `[hh:mm:ss] Short title` using the timestamps given (the start "
    "of the first segment of the topic). Write the titles in the language of the video. No other text.\n\n"
)

OUTLINE_MERGE = (
    "Below are chapter lists of consecutive parts of one video. Merge them into one table of contents of at "
    "most {limit} chapters, keeping the form `[hh:mm:ss] Short title` and the earliest timestamp of each "
    "merged chapter. No other text.\n\n"
)

OUTLINE_PDF = (
    "Below is the text of a document, page by page. Write its outline: one line per section, in order, "
    "exactly in the form `p. N  Section title` with the page where the section starts. No other text.\n\n"
)

def no_sources(question: str) -> str:
    """The answer when nothing matches, in the question's language (kb/i18n.py) like a model's answer."""
    return i18n.text("answer.no_sources", i18n.language_of_text(question))


def not_in_sources(absent: Sequence[str], nearest: Hit, question: str = "") -> str:
    """The extractive answer to a question about something no source mentions: say so, quote nothing."""
    names = ", ".join(f"“{a}”" for a in absent)
    return i18n.text("answer.not_in_sources", i18n.language_of_text(question), names=names, where=nearest.where)
