from ingest.chunk import make_chunks, split_text
from kb.types import Source, Unit

TABLE = "| item | price |\n|---|---|\n" + "".join(f"| part {n} | {n}.00 |\n" for n in range(40))


def test_tables_stay_whole_even_when_long():
    text = "Intro paragraph.\n\n" + TABLE + "\nAfter the table."
    pieces = split_text(text, max_chars=200)
    tables = [p for p in pieces if "| part 0 |" in p]
    assert len(tables) == 1 and "| part 39 |" in tables[0]
    assert not any("| part" in p for p in pieces if p is not tables[0])


def test_long_text_is_split_at_sentences_within_limit():
    text = " ".join(f"Sentence number {n} says something." for n in range(100))
    pieces = split_text(text, max_chars=300)
    assert len(pieces) > 5 and all(len(p) <= 300 for p in pieces)
    assert " ".join(pieces).split() == text.split()


def test_chunks_never_span_pages_and_ids_are_stable():
    src = Source("a.pdf", "/abs/a.pdf", "f" * 64)
    units = [Unit(src, "pdf_text", page=1, text="Page one."), Unit(src, "pdf_text", page=2, text="Page two.")]
    first = make_chunks(units, "ocr", "m", 1000)
    assert [(c.page, c.text) for c in first] == [(1, "Page one."), (2, "Page two.")]
    assert [c.id for c in first] == [c.id for c in make_chunks(units, "ocr", "m", 1000)]
