"""Delete and every lookup by name match exactly; a delete cut short is finished by deleting again."""
from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pytest

from ingest.chunk import chunk_id
from kb.errors import NotFound
from kb.manifest import SourceRecord
from kb.paths import stored_path, to_stored
from kb.store import Store
from kb.types import Chunk


def add(store, root: Path, rel: str, texts: list[str]) -> str:
    """Store one source the way ingest does (replace_source); returns its stored absolute path."""
    path, rel = stored_path(root / rel), to_stored(rel)
    sha = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    chunks = [Chunk(id=chunk_id(path, sha, n), text=t, rel=rel, path=path, sha256=sha, modality="text",
                    position=n) for n, t in enumerate(texts)]
    store.replace_source(SourceRecord(path=path, rel=rel, sha256=sha, size=9, kind="text", status="ok", chunks=0,
                                      engine="none", model=""), chunks)
    return path


def index_ids(store) -> tuple[set[str], set[str], set[str]]:
    """Chunk ids as Chroma holds them, as the lexical index holds them, and as the manifest says they should be."""
    chroma = set(store._collection.get(include=[])["ids"])
    lexical = set(store.lexical.ids())
    expected = {chunk_id(r.path, r.sha256, n) for r in store.manifest.all() for n in range(r.chunks)}
    return chroma, lexical, expected


def kb(monkeypatch, capsys, store, *argv: str, stdin: str | None = "") -> tuple[int, str, str]:
    """`python -m kb ARGV` in this process (the store lock is shared within a process)."""
    from kb.__main__ import main

    monkeypatch.setattr(sys, "argv", ["kb", *argv, "--home", str(store.settings.home),
                                      "--embed-model", store.embedder.name])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin) if stdin is not None else None)
    try:
        code = main()
    except NotFound as err:
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def library(open_kb, tmp_path):
    store = open_kb()
    root = tmp_path / "library"
    paths = {rel: add(store, root, rel, [f"text of {rel}", f"more of {rel}"])
             for rel in ("a_b.pdf", "axb.pdf", "inner.pdf", "sub/report.pdf", "sub/deeper/report.pdf",
                         "100%.pdf")}
    return store, root, paths


def test_names_are_exact_no_wildcards_no_case_folding(library):
    store, root, paths = library
    find = store.manifest.find
    assert [r.rel for r in find("a_b.pdf")] == ["a_b.pdf"]  # not axb.pdf
    assert [r.rel for r in find("100%.pdf")] == ["100%.pdf"]
    assert find("%") == [] and find("_xb.pdf") == [] and find("sub/%") == [] and find("%.pdf") == []
    assert find("INNER.PDF") == [] and find("Inner.pdf") == []
    assert [r.rel for r in find("sub/report.pdf")] == ["sub/report.pdf"]  # relative to the ingest root
    assert [r.rel for r in find("./sub/report.pdf")] == ["sub/report.pdf"]
    assert [r.rel for r in find(str(root / "sub/deeper/report.pdf"))] == ["sub/deeper/report.pdf"]
    assert find("deeper/report.pdf") == []  # a path suffix is not a name
    assert {r.rel for r in find("report.pdf")} == {"sub/report.pdf", "sub/deeper/report.pdf"}  # ambiguous


def test_delete_percent_deletes_nothing(library, monkeypatch, capsys):
    store, _, paths = library
    before = index_ids(store)
    for name in ("%", "_xb.pdf", "INNER.PDF", "sub/%"):
        code, _, err = kb(monkeypatch, capsys, store, "delete", name)
        assert code == 1 and "no source is named" in err, (name, err)
    assert index_ids(store) == before and len(store.manifest.all()) == len(paths)


def test_an_ambiguous_name_lists_the_candidates_and_deletes_nothing(library, monkeypatch, capsys):
    store, root, paths = library
    code, _, err = kb(monkeypatch, capsys, store, "delete", "report.pdf")
    assert code == 1 and "names 2 sources" in err
    assert str(root / "sub/report.pdf") in err and str(root / "sub/deeper/report.pdf") in err
    assert len(store.manifest.all()) == len(paths)
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "sub/report.pdf")
    assert code == 0 and out.startswith("deleted sub/report.pdf (2 chunks)")
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "report.pdf")  # unique now
    assert code == 0 and "deleted sub/deeper/report.pdf" in out
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "a_b.pdf")
    assert code == 0 and [r.rel for r in store.manifest.find("axb.pdf")] == ["axb.pdf"]
    chroma, lexical, expected = index_ids(store)
    assert chroma == lexical == expected and len(expected) == 2 * (len(paths) - 3)


def test_a_name_that_is_not_utf8_is_deleted_by_the_name_the_shell_gives(open_kb, tmp_path, monkeypatch, capsys):
    store = open_kb()
    latin1 = b"caf\xe9 menu.pdf".decode("utf-8", "surrogateescape")  # what sys.argv holds for that name
    path = add(store, tmp_path / "old", latin1, ["the lunch menu"])
    assert store.manifest.find_one(latin1).path == path
    code, out, _ = kb(monkeypatch, capsys, store, "delete", str(tmp_path / "old" / latin1))
    assert code == 0 and "caf\ufffd menu.pdf" in out and store.count() == 0


def test_glob_shows_the_matches_and_deletes_only_when_confirmed(library, monkeypatch, capsys):
    store, _, paths = library
    code, out, err = kb(monkeypatch, capsys, store, "delete", "--glob", "sub/*", stdin=None)
    assert code == 1 and "sub/report.pdf" in out and "sub/deeper/report.pdf" in out and "--yes" in err
    code, _, err = kb(monkeypatch, capsys, store, "delete", "--glob", "sub/*", stdin="")  # stdin at its end
    assert code == 1 and "--yes" in err
    code, _, _ = kb(monkeypatch, capsys, store, "delete", "--glob", "sub/*", stdin="n\n")
    assert code == 1 and len(store.manifest.all()) == len(paths)
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "--glob", "sub/*", stdin="y\n")
    assert code == 0 and out.count("deleted ") == 2
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "--glob", "?x?.pdf", "--yes")
    assert code == 0 and "deleted axb.pdf" in out and "a_b" not in out.split("deleted")[-1]
    assert {r.rel for r in store.manifest.all()} == {"a_b.pdf", "inner.pdf", "100%.pdf"}
    code, _, err = kb(monkeypatch, capsys, store, "delete", "--glob", "*.PDF", "--yes")
    assert code == 1 and "no source matches" in err  # patterns are case-sensitive too


def test_outline_and_search_filters_use_the_same_exact_names(library):
    from kb.outline import outline
    from kb.search import Filters, search

    store, _, _ = library
    with pytest.raises(NotFound, match="names 2 sources"):
        outline(store, None, "report.pdf")
    with pytest.raises(NotFound, match="no source is named"):
        outline(store, None, "%")
    hits = search(store, "text of", k=10, filters=Filters(sources=["a_b.pdf"]))
    assert hits and {h.chunk.rel for h in hits} == {"a_b.pdf"}


class Crash(BaseException):
    """Stands for the process dying: nothing after the raise point runs, no handler cleans up."""


def test_deleting_again_finishes_a_delete_cut_short(library, monkeypatch, capsys):
    store, _, paths = library
    real = Store._delete_where

    def crash_before_chroma(self, where):
        raise Crash

    inner = set(store._collection.get(where={"source_abs": paths["inner.pdf"]}, include=[])["ids"])
    monkeypatch.setattr(Store, "_delete_where", crash_before_chroma)
    with pytest.raises(Crash):
        store.delete_source(paths["inner.pdf"])
    monkeypatch.setattr(Store, "_delete_where", real)
    assert store.manifest.find("inner.pdf") == []  # gone from listings and searches at once
    chroma, lexical, expected = index_ids(store)
    assert len(inner) == 2 and chroma - expected == inner  # what the old order left unreachable
    code, _, err = kb(monkeypatch, capsys, store, "delete", "inner.pdf")
    assert code == 1 and "no source is named" in err  # its process (this one) may still be at it
    with store.manifest._db:  # now it is gone, as after a kill
        store.manifest._db.execute("UPDATE cleanups SET owner = 'elsewhere:1:gone'")
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "inner.pdf")
    assert code == 0 and "finished an interrupted delete: 2 leftover chunks" in out
    chroma, lexical, expected = index_ids(store)
    assert chroma == lexical == expected and store.manifest.cleanups() == []


def test_a_replace_that_fails_before_its_commit_keeps_the_old_version(library, monkeypatch):
    store, root, paths = library
    before = index_ids(store)

    def fail(self, record):
        raise OSError("disk full")

    monkeypatch.setattr(type(store.manifest), "put", fail)
    with pytest.raises(OSError):
        add(store, root, "inner.pdf", ["a new version", "that never commits", "three chunks"])
    monkeypatch.undo()
    assert index_ids(store) == before and store.manifest.cleanups() == []


def test_chunks_of_a_source_are_its_manifest_version_only(library, monkeypatch):
    """A half-written new version (a crash before its commit) never shows in a source's pages or a copy."""
    store, root, paths = library

    def crash(self, record):
        raise Crash

    monkeypatch.setattr(type(store.manifest), "put", crash)
    with pytest.raises(Crash):
        add(store, root, "inner.pdf", ["a new version", "that never commits", "three chunks"])
    monkeypatch.undo()
    assert [c.text for c in store.chunks_of(paths["inner.pdf"])[0]] == ["text of inner.pdf", "more of inner.pdf"]


def test_chunks_an_old_version_left_without_a_source_can_be_deleted_by_name(library, monkeypatch, capsys):
    """Before the journal, a delete killed after removing the manifest row left chunks no command could reach."""
    store, root, paths = library
    store.manifest.remove(paths["inner.pdf"])  # killed there: chunks in both indexes
    store.manifest.remove(paths["axb.pdf"])
    store.lexical.delete_source(paths["axb.pdf"])  # killed there: chunks in Chroma only
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "inner.pdf")
    assert code == 0 and "deleted inner.pdf (finished an interrupted delete: 2 leftover chunks)" in out
    code, out, _ = kb(monkeypatch, capsys, store, "delete", str(root / "axb.pdf"))
    assert code == 0 and "2 leftover chunks" in out
    chroma, lexical, expected = index_ids(store)
    assert chroma == lexical == expected and len(expected) == 2 * (len(paths) - 2)


def test_a_path_names_its_own_file_even_when_another_source_shares_its_name(open_kb, tmp_path, monkeypatch, capsys):
    """Two folders ingested separately both hold `notes.pdf` (rel `notes.pdf` each): from elsewhere the bare name
    is ambiguous; from inside folder b, `notes.pdf` is a path to b's file and deletes exactly that one."""
    store = open_kb()
    first = add(store, tmp_path / "a", "notes.pdf", ["the first notes"])
    second = add(store, tmp_path / "b", "notes.pdf", ["the second notes"])
    monkeypatch.chdir(tmp_path)
    code, _, err = kb(monkeypatch, capsys, store, "delete", "notes.pdf")
    assert code == 1 and "names 2 sources" in err
    (tmp_path / "b").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "b")
    code, out, _ = kb(monkeypatch, capsys, store, "delete", "notes.pdf")
    assert code == 0 and [r.path for r in store.manifest.all()] == [first]
    assert store.manifest.get(second) is None
