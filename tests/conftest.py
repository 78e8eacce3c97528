"""Shared fixtures: the external test-data folder, a tiny Qwen3-VL, settings for a throwaway knowledge base."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite is offline: no hub look-ups, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from kb.config import BUNDLED_EMBED_MODEL, load_settings  # noqa: E402

pytest_plugins = ["tests.vllm_server"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real files in ../shared/data (or $SEEKFRAME_TEST_DATA); tests that need them skip without it."""
    folder = Path(os.environ.get("SEEKFRAME_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
    if not folder.is_dir():
        pytest.skip(f"test data folder {folder} is absent: set SEEKFRAME_TEST_DATA to the shared/data folder")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen3-VL with the real model and processor classes, built offline."""
    from tests.tiny_qwen3vl import build_tiny

    out = tmp_path_factory.mktemp("tiny-qwen3vl")
    build_tiny(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_writer(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, with a generation config that makes its noise visible: printable ASCII only and at
    least a few tokens, so ingest tests can see text flow into chunks (its words still mean nothing)."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    out = tmp_path_factory.mktemp("tiny-qwen3vl-writer")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    byte_of = {ch: b for b, ch in enumerate(_byte_alphabet())}
    hidden = [tokenizer.convert_tokens_to_ids(ch) for ch, b in byte_of.items() if not 0x21 <= b <= 0x7E]
    config = GenerationConfig.from_pretrained(out)
    config.suppress_tokens = hidden
    config.min_new_tokens = 4
    config.save_pretrained(out)
    return out


def _byte_alphabet() -> list[str]:
    """GPT-2 byte-level alphabet in byte order: the character that stands for byte b is at index b."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings for a fresh knowledge base under tmp_path; keyword arguments override (like CLI flags)."""

    def make(**overrides):
        base = {"home": tmp_path / "kb", "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"}
        base.update(overrides)
        return load_settings(base, env={})

    return make


@pytest.fixture(scope="session")
def embedder():
    """The bundled English embedder, loaded once for the whole suite."""
    from kb.embed import Embedder

    return Embedder(BUNDLED_EMBED_MODEL)


@pytest.fixture
def open_kb(make_settings, embedder):
    """Open a store (closing it after the test): open_kb(**setting_overrides) -> Store."""
    from kb.store import open_store

    opened = []

    def open_(**overrides):
        store = open_store(make_settings(**overrides), embedder)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def reader_pools(monkeypatch) -> list:
    """Every set of reader processes started (ingest/pdf.py process_pool), in order; long PDFs read by 2 processes
    in ranges of 4 pages, so a 30-page file is read by processes."""
    from ingest import pdf

    monkeypatch.setattr(pdf, "PAGES_PER_TASK", 4)
    monkeypatch.setattr(pdf, "_read_workers", lambda: 2)
    started: list = []
    real = pdf.process_pool
    monkeypatch.setattr(pdf, "process_pool", lambda workers: started.append(real(workers)) or started[-1])
    return started


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A born-digital PDF with one text block per page."""
    import pymupdf

    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), text, fontsize=11)
    doc.save(path)
    doc.close()
    return path
