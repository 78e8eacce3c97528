import logging

import pytest

from kb.config import BUNDLED_EMBED_MODEL, DEFAULT_EMBED_MODEL, load_settings
from kb.embed import load_embedder
from kb.errors import ConfigError


def test_offline_profile_falls_back_to_the_bundled_model_loudly(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: the default model cannot be fetched
    settings = load_settings({"home": tmp_path}, env={})
    assert settings.embed_model == DEFAULT_EMBED_MODEL
    with caplog.at_level(logging.WARNING):
        embedder = load_embedder(settings)
    assert embedder.name == BUNDLED_EMBED_MODEL and embedder.fallback_reason
    assert "OFFLINE PROFILE" in caplog.text and DEFAULT_EMBED_MODEL in caplog.text
    first, second = embedder.embed_documents(["a cat sat on the mat", "stock market report"])
    query = embedder.embed_query("where did the cat sit?")
    assert sum(a * b for a, b in zip(query, first)) > sum(a * b for a, b in zip(query, second))


def test_an_explicitly_chosen_model_that_cannot_load_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        load_embedder(load_settings({"home": tmp_path, "embed_model": "no-such/model"}, env={}))
    assert "no-such/model" in str(err.value) and BUNDLED_EMBED_MODEL in str(err.value)


def test_an_existing_knowledge_base_keeps_its_recorded_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = load_embedder(load_settings({"home": tmp_path}, env={}), recorded=BUNDLED_EMBED_MODEL)
    assert embedder.name == BUNDLED_EMBED_MODEL and not embedder.fallback_reason
