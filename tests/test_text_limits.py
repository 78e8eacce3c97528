"""Text files: encodings read as what they are, binary data with a text name refused, the size limit said as a
limit, and chunking that stays linear and sensible on pathological one-line files."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from ingest.chunk import TABLE_WHOLE, split_text
from ingest.pipeline import Ingestor
from ingest.text import read_text
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.errors import InputError
from kb.search import search
from kb.types import Source

MENU = "Café crème, señor: the MOOSE menu costs 12 € — naïve prices.\nSecond line.\n"


def read(path: Path, **overrides):
    settings = load_settings({"engine": "ocr", "embed_model": BUNDLED_EMBED_MODEL, **overrides}, env={})
    return read_text(path, Source(path.name, str(path), "0" * 64), settings)


@pytest.mark.parametrize(("encoding", "prefix", "named"), [
    ("utf-8", b"", ""), ("utf-8", b"\xef\xbb\xbf", ""), ("cp1252", b"", "Windows-1252"),
    ("utf-16-le", b"\xff\xfe", "UTF-16"), ("utf-16-be", b"\xfe\xff", "UTF-16"), ("utf-16-le", b"", "UTF-16"),
    ("utf-32-le", b"\xff\xfe\x00\x00", "UTF-32")])
def test_encodings_are_read_as_what_they_are(tmp_path, encoding, prefix, named):
    path = tmp_path / "menu.txt"
    path.write_bytes(prefix + MENU.encode(encoding))
    result = read(path)
    assert result.units[0].text == MENU
    assert (named in result.notes[0]) if named else not result.notes


def test_latin1_without_the_euro_sign_is_read(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Caf\xe9 cr\xe8me \xa9 1998, \xbd price".encode("latin-1"))
    assert read(path).units[0].text == "Café crème © 1998, ½ price"


@pytest.mark.parametrize("data", [random.Random(8).randbytes(4096), b"PK\x03\x04" + bytes(range(256)) * 8,
                                  ("plain words " * 50).encode() + b"\x00\x01\x02" + bytes(300)],
                         ids=["random", "control-bytes", "text-then-nul"])
def test_binary_data_named_txt_is_not_text(tmp_path, data):
    path = tmp_path / "junk.txt"
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        read(path)
    assert str(err.value).startswith("junk.txt: not text") and err.value.fix


def test_a_text_file_above_the_size_limit_is_refused_with_the_setting(tmp_path):
    path = tmp_path / "dump.md"
    path.write_text("word " * 1000)
    with pytest.raises(InputError) as err:
        read(path, text_max_bytes=4000)
    assert "5.0 KB" not in str(err.value) and "above the limit" in str(err.value)
    assert "KB_TEXT_MAX_BYTES=5000" in err.value.fix
    assert read(path, text_max_bytes=5000).units[0].text.startswith("word word")


def test_a_5mb_one_line_file_gives_chunks_of_the_natural_count_and_size():
    """5 MB without a line break: ~5 MB / 1200 chunks, each within the limit, words kept whole."""
    rng = random.Random(1)
    words = ["seekframe", "invoice", "delta", "harbour", "x"]
    text = " ".join(rng.choice(words) for _ in range(700_000))[:5_000_000]
    pieces = split_text(text, 1200)
    assert all(len(p) <= 1200 for p in pieces)
    assert len(text) / 1200 <= len(pieces) <= len(text) / 1200 * 1.02
    assert " ".join(pieces).split() == text.split()


def test_a_5mb_word_without_spaces_is_cut_at_the_limit():
    pieces = split_text("x" * 5_000_000, 1200)
    assert len(pieces) == 4167 and {len(p) for p in pieces[:-1]} == {1200}


def test_a_huge_table_is_cut_between_rows_with_its_header_on_every_piece():
    header = "| item | price |\n|---|---|"
    table = header + "\n" + "\n".join(f"| part {n} | {n}.00 |" for n in range(5000))
    pieces = split_text(table, 300)
    assert len(table) > TABLE_WHOLE * 300 and len(pieces) > 10
    assert all(p.startswith(header + "\n| part") and len(p) <= 300 for p in pieces)
    rows = [line for p in pieces for line in p.split("\n")[2:]]
    assert rows == table.split("\n")[2:]


def test_a_table_on_one_5mb_line_is_cut_into_sized_pieces():
    line = "| " + " | ".join(f"cell {n}" for n in range(600_000)) + " |"
    pieces = split_text(line, 1200)
    assert all(len(p) <= 1200 for p in pieces) and len(pieces) >= len(line) / 1200


def test_odd_encodings_go_in_and_are_searchable_and_junk_fails_alone(open_kb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me: the MOOSE menu.\n".encode("latin-1"))
    (folder / "windows.txt").write_bytes(b"\xff\xfe" + "Quarterly WALRUS census.\r\n".encode("utf-16-le"))
    (folder / "junk.txt").write_bytes(random.Random(3).randbytes(2048))
    store = open_kb()
    report = Ingestor(store.settings, store).run([folder])
    status = {r.rel: r.status for r in report.results}
    assert status == {"latin1.txt": "added", "windows.txt": "added", "junk.txt": "failed"}
    latin = next(r for r in report.results if r.rel == "latin1.txt")
    assert any("Windows-1252" in n for n in latin.notes)
    assert search(store, "MOOSE", k=1)[0].chunk.text.startswith("Café crème")
    assert search(store, "WALRUS", k=1)[0].chunk.rel == "windows.txt"
