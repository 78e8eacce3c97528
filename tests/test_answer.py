"""Extractive answers (the ocr engine): the quoted sentence is the informative one, cited by its number."""
from kb.answer import best_sentence, extractive_answer
from kb.types import Chunk, Hit

OCR_TEXT = ("The LinnSequencer\n32 Track MIDI Sequence Recorder\n\nThe LinnSequencer is a state-of-the-art\n"
            "composition and performance tool for the professional musician. It is extremely powerful.")


def test_the_quote_is_a_whole_sentence_not_a_heading_or_a_broken_line():
    assert best_sentence("What is the LinnSequencer?", OCR_TEXT) == (
        "The LinnSequencer is a state-of-the-art composition and performance tool for the professional musician.")


def test_quotes_follow_relevance_but_cite_the_source_numbers():
    first = Hit(Chunk(id="a", text="Returns are free within 30 days.", rel="a.md", path="/a.md", sha256="s",
                      modality="text", position=0), 0.2)
    second = Hit(Chunk(id="b", text="The warranty lasts 24 months from purchase.", rel="a.md", path="/a.md",
                       sha256="s", modality="text", position=1), 0.9)
    text = extractive_answer("How long is the warranty?", sources=[first, second], ranked=[second, first])
    quotes = [line for line in text.splitlines() if line.startswith(">")]
    assert quotes[0] == "> The warranty lasts 24 months from purchase. [2]"
    assert quotes[1] == "> Returns are free within 30 days. [1]"


def test_a_hit_kept_by_an_earlier_version_reads_back():
    """Answer caches and conversations hold hits as flat rows, written before a hit held its chunk."""
    old = {"id": "c1", "text": "The heron waits.", "score": 0.9, "source": "birds.pdf", "page": 3, "t_start": None,
           "t_end": None, "modality": "pdf_text", "keyframe": None, "source_abs": "/srv/birds.pdf", "sha256": "ab",
           "position": 2}
    hit = Hit.from_record(old)
    assert (hit.chunk.rel, hit.chunk.path, hit.chunk.page, hit.chunk.position, hit.score) == (
        "birds.pdf", "/srv/birds.pdf", 3, 2, 0.9)
    assert hit.where == "birds.pdf p. 3"
    assert {k: hit.to_record()[k] for k in old} == old  # and is kept in the same form
