"""Generation settings reach the engine (the tiny Qwen3-VL: its words mean nothing, its lengths and choices do),
the CLI takes them as flags, and OCR-first ingests text without captions."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from ingest.pipeline import Ingestor
from kb.answer import Generation, prepare, stream_answer
from kb.cli import settings_from_args
from tests.conftest import write_pdf


@pytest.fixture(scope="module")
def writer_engine(tiny_model_writer):
    from kb.config import load_settings
    from kb.engines.transformers_qwen import TransformersEngine

    return TransformersEngine(load_settings({"engine": "transformers", "model": str(tiny_model_writer),
                                             "device": "cpu", "home": "/nonexistent"}, env={}))


@pytest.fixture
def library(open_kb, tmp_path):
    store = open_kb()
    write_pdf(tmp_path / "notes.pdf", ["The harbour crane lifts forty tonnes on a calm day."])
    Ingestor(store.settings, store).run([tmp_path / "notes.pdf"])
    return store


def answer(store, engine, generation: Generation) -> str:
    prepared = prepare("How much does the harbour crane lift?", store, k=2, generation=generation)
    return "".join(stream_answer(prepared, engine))


def test_max_new_tokens_cuts_the_answer_where_the_user_said(library, writer_engine):
    tokens = writer_engine.tokenizer
    short = answer(library, writer_engine, Generation(max_new_tokens=5))
    longer = answer(library, writer_engine, Generation(max_new_tokens=24))
    assert 4 <= len(tokens.encode(short, add_special_tokens=False)) <= 5
    assert len(tokens.encode(longer, add_special_tokens=False)) > 5
    assert longer.startswith(short)  # greedy by default: the short answer is the long one cut off


def test_greedy_by_default_and_sampling_when_asked(library, writer_engine):
    import torch

    greedy = {answer(library, writer_engine, Generation(max_new_tokens=12)) for _ in range(2)}
    assert len(greedy) == 1  # the same question twice: the same answer
    sampled = set()
    for seed in range(3):
        torch.manual_seed(seed)
        sampled.add(answer(library, writer_engine, Generation(max_new_tokens=12, temperature=1.5, top_p=1.0)))
    assert sampled - greedy, "temperature 1.5 samples other tokens than greedy decoding"


def test_the_cli_takes_generation_flags_and_checks_them(tmp_path, monkeypatch):
    from kb.__main__ import _parser

    monkeypatch.setenv("KB_CONFIG", str(tmp_path / "none.toml"))
    args = _parser().parse_args(["ask", "why?", "--max-tokens", "64", "--temperature", "0.7", "--top-p", "0.9"])
    assert Generation.from_settings(settings_from_args(args)) == Generation(64, 0.7, 0.9)
    assert Generation.from_settings(settings_from_args(_parser().parse_args(["ask", "why?"]))).greedy
    from kb.errors import ConfigError

    with pytest.raises(ConfigError, match="KB_TOP_P"):
        settings_from_args(_parser().parse_args(["ask", "why?", "--top-p", "0"]))


def test_ocr_first_reads_the_text_of_a_photo_without_captioning_it(open_kb, tiny_model_writer, tmp_path):
    photo = Image.new("RGB", (320, 120), "white")
    ImageDraw.Draw(photo).text((20, 40), "HARBOUR", fill="black")
    photo.save(tmp_path / "sign.png")
    kinds = {}
    for ocr_first in (False, True):
        store = open_kb(engine="transformers", model=str(tiny_model_writer), device="cpu", ocr_first=ocr_first,
                        home=tmp_path / f"kb-{ocr_first}", max_page_tokens=8, max_caption_tokens=8)
        report = Ingestor(store.settings, store).run([tmp_path / "sign.png"])
        assert report.exit_code == 0
        kinds[ocr_first] = {c.modality for c in store.chunks_of(str((tmp_path / "sign.png").resolve()))[0]}
    assert kinds[False] == {"image_ocr", "image_caption"}
    assert kinds[True] == {"image_ocr"}
