"""Audio: the sound track of a video or an audio file, decoded in bounded blocks for the speech engine, and the
words it hears turned into units (passages of an audio file) or laid on a video's windows.

Decoding streams through PyAV: one block (BLOCK_SECONDS of 16 kHz mono float32: 19 MB for five minutes)
 is held at a time, whatever the file's length. A block ends at the quietest tenth of a second near its
end, so a word is rarely cut in two; blocks are the unit of the pipeline's checkpoints (ingest/checkpoint.py).
"""
from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import Iterator

import numpy as np

from ingest.read_result import AudioTrack, ReadResult
from kb.config import Settings
from kb.engines.asr import SAMPLE_RATE, Word
from kb.errors import InputError
from kb.types import FileKind, Modality, Source, Unit

AUDIO_EXTENSIONS = {".mp3", ".wav", ".m4a", ".flac", ".ogg", ".opus"}
BLOCK_SECONDS = 300.0
CUT_SEARCH_SECONDS = 5.0  # a block ends at the quietest 100 ms of its last seconds
# An audio file's transcript is cut into passages (chunks that cite `file mm:ss–mm:ss`): at a pause once a
# passage is PASSAGE_MIN long, at any silence of LONG_PAUSE, always by PASSAGE_MAX, like a video's windows.
PASSAGE_MIN, PASSAGE_MAX, PAUSE, LONG_PAUSE = 10.0, 30.0, 1.0, 4.0
DAMAGED_FIX = "the file may be damaged: play it, or convert it again (ffmpeg -i in -c:a flac out.flac)"


def probe(path: Path, label: str) -> AudioTrack | None:
    """The file's audio track, None when it has none (a silent screen recording)."""
    import av  # here, not at the top: a folder without sound never loads FFmpeg's libraries (~60 ms a process)

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
    except av.error.FFmpegError as err:
        raise InputError(label, f"cannot open the audio: {err}", DAMAGED_FIX, code="audio.unopenable",
                         params={"detail": str(err)}) from err
    return AudioTrack(path, max(duration, 0.0))


def read_audio(path: Path, source: Source, settings: Settings) -> ReadResult:
    """An audio file is a source of its own: its units come from what the speech engine hears in it."""
    track = probe(path, source.rel)
    if track is None:
        raise InputError(source.rel, "it holds no audio stream", DAMAGED_FIX, code="audio.no_stream")
    return ReadResult(kind=FileKind.AUDIO, audio=track, duration=round(track.duration, 3))


def blocks(track: AudioTrack, label: str, block_seconds: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(offset in seconds, 16 kHz mono float32 samples) for consecutive stretches of the track."""
    import av

    size = int((block_seconds or BLOCK_SECONDS) * SAMPLE_RATE)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    held: list[np.ndarray] = []
    count, offset = 0, 0
    try:
        with av.open(str(track.path)) as container:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    held.append(out.to_ndarray().reshape(-1))
                    count += held[-1].size
                while count >= size:
                    samples = np.concatenate(held)
                    cut = quiet_cut(samples, size)
                    yield offset / SAMPLE_RATE, samples[:cut]
                    offset += cut
                    held, count = [samples[cut:]], samples.size - cut
            for out in resampler.resample(None):
                held.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as err:
        after = f"{offset / SAMPLE_RATE:.0f}"
        raise InputError(label, f"the audio cannot be decoded after {after} s: {err}", DAMAGED_FIX,
                         code="audio.undecodable", params={"seconds": after, "detail": str(err)}) from err
    if held and sum(h.size for h in held):
        yield offset / SAMPLE_RATE, np.concatenate(held)


def quiet_cut(samples: np.ndarray, size: int) -> int:
    """Where to end a block of about `size` samples: the middle of its quietest 100 ms near the end."""
    step = SAMPLE_RATE // 10
    lo = max(step, size - int(CUT_SEARCH_SECONDS * SAMPLE_RATE))
    frames = samples[lo:size - size % step if size - lo >= step else size]
    if frames.size < step:
        return size
    energy = (frames[: frames.size // step * step].reshape(-1, step) ** 2).mean(axis=1)
    # the latest of the quietest moments: in a long silence the block runs to its end
    quiet = np.flatnonzero(energy <= energy.min() * 1.5 + 1e-10)
    return lo + int(quiet[-1]) * step + step // 2


def join_words(words: list[Word]) -> str:
    """Whisper spells words with their leading space where the language has spaces (none in Chinese)."""
    return "".join(w.text for w in words).strip()


def passages(words: list[Word]) -> list[list[Word]]:
    """Words grouped into passages that end at a pause once long enough, and never run past PASSAGE_MAX."""
    groups: list[list[Word]] = []
    for word in words:
        if groups:
            current = groups[-1]
            length = word.end - current[0].start
            pause = word.start - current[-1].end
            if (length > PASSAGE_MAX or pause >= LONG_PAUSE
                    or (pause >= PAUSE and current[-1].end - current[0].start >= PASSAGE_MIN)):
                groups.append([word])
                continue
            current.append(word)
        else:
            groups.append([word])
    return groups


def speech_units(source: Source, words: list[Word], language: str) -> list[Unit]:
    """An audio file's units: one per passage, its times those of its first and last word."""
    return [Unit(source, Modality.SPEECH, text=join_words(group), t_start=round(group[0].start, 3),
                 t_end=round(group[-1].end, 3), language=language)
            for group in passages(words) if join_words(group)]


def lay_on_windows(units: list[Unit], words: list[Word], language: str) -> None:
    """Give each video window the words said during it (by a word's middle), to be stored with what it shows."""
    timed = sorted(((u.t_start, u) for u in units if u.t_start is not None), key=lambda pair: pair[0])
    if not timed or not words:
        return
    starts = [start for start, _ in timed]
    windows = [unit for _, unit in timed]
    said: dict[int, list[Word]] = {id(u): [] for u in windows}
    for word in words:
        # the last window that starts at or before the word's middle; words before the first window go to it
        place = max(bisect_right(starts, (word.start + word.end) / 2) - 1, 0)
        said[id(windows[place])].append(word)
    for unit in windows:
        text = join_words(said[id(unit)])
        if text:
            unit.speech, unit.language = text, language
