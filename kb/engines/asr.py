"""Speech to text: faster-whisper (Whisper on CTranslate2) with its Silero VAD and word timestamps.

Why faster-whisper and not transformers' Whisper pipeline: docs/architecture.md ("Speech"). The engine takes
16 kHz mono samples of one block of a file and the block's offset, and returns words with absolute times. Weights
are never downloaded here: a model name must already be in the Hugging Face cache, or be a local folder.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kb.config import Settings
from kb.errors import EngineError

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
GPU_MODEL, CPU_MODEL = "large-v3-turbo", "small"
# Whisper's fallback: a window whose text looks like a loop (compression) or is unlikely (log-prob) is decoded
# again at a higher temperature. Each block is decoded without the previous block's text as a prompt: a
# hallucinated line cannot then repeat itself through the rest of a long recording.
TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEAM_SIZE = 5  # Whisper's beam search at temperature 0, as its paper's results (and faster-whisper's default)


@dataclass
class Word:
    start: float  # seconds from the start of the file
    end: float
    text: str  # as Whisper spells it: English words carry their leading space, Chinese characters none

    def to_json(self) -> list[float | str]:
        return [round(self.start, 3), round(self.end, 3), self.text]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> Word:  # a row parsed from JSON
        return cls(float(row[0]), float(row[1]), str(row[2]))


@dataclass
class Transcript:
    """What was said in one stretch of audio: words in order, and the language Whisper heard."""

    words: list[Word] = field(default_factory=list)
    language: str = ""
    language_probability: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"language": self.language, "p": round(self.language_probability, 3),
                "words": [w.to_json() for w in self.words]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transcript:  # parsed from JSON
        return cls([Word.from_json(w) for w in data.get("words", [])], data.get("language", ""),
                   float(data.get("p", 0.0)))


def main_language(parts: list[Transcript]) -> str:
    """A file's language: the one most of its words were heard in ('' when nothing was said)."""
    counts: Counter[str] = Counter()
    for part in parts:
        if part.words and part.language:
            counts[part.language] += len(part.words)
    return counts.most_common(1)[0][0] if counts else ""


def _cuda(settings: Settings) -> bool:
    if settings.device.startswith("cpu"):
        return False
    from kb.engines import cuda_available

    return cuda_available()


def model_name(settings: Settings) -> str:
    """KB_ASR_MODEL, with `auto` made concrete for this machine."""
    if settings.asr_model != "auto":
        return settings.asr_model
    return GPU_MODEL if _cuda(settings) else CPU_MODEL


def locate_model(settings: Settings) -> Path:
    """The local folder of the speech model; EngineError with the way to get it when it is not on this machine."""
    name = model_name(settings)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    try:
        from faster_whisper.utils import download_model
    except ImportError as err:
        raise EngineError("faster-whisper is not installed", "pip install -r requirements.txt",
                          code="asr.not_installed") from err
    try:
        return Path(download_model(name, local_files_only=True))
    except Exception as err:  # huggingface_hub says "not in the cache" in several ways
        raise EngineError(
            f"the speech model {name!r} is not on this machine (weights are never downloaded while ingesting)",
            f"fetch it once where the hub is reachable: python -c \"from faster_whisper import download_model; "
            f"download_model('{name}')\", or set KB_ASR_MODEL to a faster-whisper model folder; KB_ASR=off leaves "
            "speech out", code="asr.model_missing", params={"model": repr(name), "name": name}) from err


class SpeechEngine:
    """One faster-whisper model, loaded once per ingest run."""

    name = "faster-whisper"

    def __init__(self, settings: Settings) -> None:
        from faster_whisper import WhisperModel

        folder = locate_model(settings)
        self.model = model_name(settings)
        cuda = _cuda(settings)
        self.device = "cuda" if cuda else "cpu"
        index = int(settings.device.split(":")[1]) if settings.device.startswith("cuda:") else 0
        # int8 on a CPU: ~3x faster than float32 at the same word error rate (CTranslate2's own figures);
        # float16 on a GPU.
        compute = "float16" if cuda else "int8"
        try:
            self._whisper = WhisperModel(str(folder), device=self.device, device_index=index, compute_type=compute)
        except Exception as err:
            raise EngineError(f"cannot load the speech model {folder}: {err}",
                              "check that KB_ASR_MODEL names a faster-whisper (CTranslate2) model folder",
                              code="asr.load_failed", params={"folder": str(folder), "detail": str(err)}) from err
        log.info("speech: faster-whisper %s on %s (%s)", self.model, self.device, compute)

    def transcribe(self, samples: np.ndarray, offset: float) -> Transcript:
        """Words in `samples` (16 kHz mono float32) with times `offset` seconds into the file. Silence and music
        give no words: the VAD drops them before Whisper sees them."""
        if samples.size < SAMPLE_RATE // 10:
            return Transcript()
        segments, info = self._whisper.transcribe(
            samples, word_timestamps=True, vad_filter=True, condition_on_previous_text=False,
            temperature=list(TEMPERATURES), beam_size=BEAM_SIZE)
        words = [Word(offset + float(w.start), offset + float(w.end), w.word)
                 for segment in segments for w in (segment.words or []) if w.word.strip()]
        return Transcript(words, info.language if words else "", float(info.language_probability))
