"""The speech lane on real (synthesised) speech: a tiny random-weight Whisper run by faster-whisper, as a real
model would be. The words it writes mean nothing; what is checked is the plumbing a user relies on: words at the
seconds they were said (across decoding blocks), a video window's speech stored with what the window shows,
audio files as sources citing `file mm:ss–mm:ss`, silence giving nothing, and an interrupted run resuming."""
from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest

import ingest.audio as audio
import kb.engines.asr as asr
from ingest.pipeline import Ingestor
from kb.types import Hit
from tests.test_video import slide
from tests.tiny_whisper import LANGUAGES

RATE = 16000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (`make test` installs it: Makefile speech-tools)")


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Whisper converted by CTranslate2's converter: a faster-whisper model folder."""
    from tests.tiny_whisper import build_tiny

    return build_tiny(str(tmp_path_factory.mktemp("tiny-whisper")))[1]


@pytest.fixture(autouse=True)
def one_greedy_pass(monkeypatch):
    # Random weights fail Whisper's quality checks on every window, and each fallback temperature decodes it
    # again to the length limit, five beams each: one greedy pass keeps the tests fast (a third of the time of
    # five beams), and the plumbing under test is the same.
    monkeypatch.setattr(asr, "TEMPERATURES", (0.0,))
    monkeypatch.setattr(asr, "BEAM_SIZE", 1)


def said(text: str, voice: str = "en") -> np.ndarray:
    """`text` spoken by espeak-ng, as 16 kHz mono float32."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    times = np.arange(0, len(pcm) / rate, 1 / RATE)
    return np.interp(times, np.arange(len(pcm)) / rate, pcm).astype(np.float32)


def sound_track(seconds: float, speech: list[tuple[float, np.ndarray]]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Silence of `seconds` with each piece of speech placed at its second; and where the speech lies."""
    track = np.zeros(int(seconds * RATE), np.float32)
    spans = []
    for at, piece in speech:
        start = int(at * RATE)
        track[start:start + piece.size] = piece[:track.size - start]
        spans.append((at, at + piece.size / RATE))
    return track, spans


def _add_audio(container, codec: str):
    stream = container.add_stream(codec, rate=RATE)
    stream.layout = "mono"
    stream.format = "fltp"
    return stream


def _encode_audio(container, stream, samples: np.ndarray) -> None:
    size = stream.codec_context.frame_size or 1024
    for start in range(0, samples.size, size):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + size].copy(), format="fltp", layout="mono")
        frame.rate, frame.pts = RATE, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_audio(path: Path, samples: np.ndarray) -> Path:
    codec = {".mp3": "libmp3lame", ".m4a": "aac", ".flac": "flac", ".ogg": "libopus", ".opus": "libopus",
             ".wav": "pcm_s16le"}[path.suffix]
    with av.open(str(path), "w") as out:
        stream = _add_audio(out, codec)
        if codec in ("pcm_s16le", "flac"):  # 16-bit integer encoders
            stream.format = "s16"
            pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
            for start in range(0, pcm.size, 1024):
                frame = av.AudioFrame.from_ndarray(pcm[None, start:start + 1024].copy(), format="s16", layout="mono")
                frame.rate, frame.pts = RATE, start
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        else:
            _encode_audio(out, stream, samples)
    return path


def write_talk(path: Path, slides: list[np.ndarray], samples: np.ndarray | None, fps: int = 1) -> Path:
    """An MP4 of slides (one frame a second), with `samples` as its AAC sound track when given."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.pix_fmt, (video.height, video.width) = "yuv420p", slides[0].shape[:2]
        sound = _add_audio(out, "aac") if samples is not None else None
        for img in slides:
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            _encode_audio(out, sound, samples)
    return path


def speech_settings(open_kb, tiny_whisper: Path, **more):
    return open_kb(asr="on", asr_model=str(tiny_whisper), video_max_pixels=128 * 1024, **more)


def chunks_of(store, path: Path):
    return store.chunks_of(str(path.resolve()))[0]


# -- a video with speech ----------------------------------------------------------------------------------------
@needs_espeak
def test_a_video_windows_speech_is_stored_with_what_it_shows_at_the_right_seconds(open_kb, tiny_whisper, tmp_path):
    slides = [slide(["Quarterly review"], seed=n) for n in range(10)] + \
             [slide(["Budget 2027"], bg=(210, 230, 250), seed=n) for n in range(10)] + \
             [slide(["Questions"], bg=(250, 225, 200), seed=n) for n in range(10)]
    samples, spans = sound_track(30, [(12.5, said("The budget for next year is four million dollars."))])
    video = write_talk(tmp_path / "talk.mp4", slides, samples)
    store = speech_settings(open_kb, tiny_whisper)
    report = Ingestor(store.settings, store).run([video])
    assert report.exit_code == 0, report.results
    chunks = chunks_of(store, video)
    with_speech = [c for c in chunks if "Speech:" in c.text]
    # Said at 12.5-15 s: only the window of the second slide (10-20 s) carries it, next to that slide's own text.
    assert with_speech and all(c.t_start <= spans[0][0] and c.t_end >= spans[0][1] for c in with_speech)
    assert any("Budget" in c.text for c in with_speech)
    assert all(c.modality == "video_segment" for c in chunks)
    assert {c.language for c in with_speech} <= set(LANGUAGES) and all(c.language for c in with_speech)
    assert not any("Speech:" in c.text for c in chunks if c.t_end <= 10 or c.t_start >= 20)


def test_a_video_without_sound_is_read_as_before(open_kb, tiny_whisper, tmp_path):
    video = write_talk(tmp_path / "mute.mp4", [slide(["Silent slide"], seed=n) for n in range(12)], None)
    store = speech_settings(open_kb, tiny_whisper)
    report = Ingestor(store.settings, store).run([video])
    assert report.exit_code == 0 and report.results[0].status == "added"
    assert not any("Speech:" in c.text for c in chunks_of(store, video))


# -- audio files ------------------------------------------------------------------------------------------------
@needs_espeak
@pytest.mark.parametrize("suffix", [".mp3", ".m4a"])
def test_an_audio_file_goes_in_as_passages_citing_the_seconds_of_their_words(open_kb, tiny_whisper, tmp_path,
                                                                             suffix):
    samples, spans = sound_track(34, [(4.0, said("Welcome to the meeting about the new office.")),
                                      (27.0, said("Thank you all for coming today."))])
    path = write_audio(tmp_path / f"meeting{suffix}", samples)
    store = speech_settings(open_kb, tiny_whisper)
    report = Ingestor(store.settings, store).run([path])
    assert report.results[0].status == "added" and report.exit_code == 0
    chunks = chunks_of(store, path)
    assert len(chunks) == 2 and all(c.modality == "speech" and c.language in LANGUAGES for c in chunks)
    # A passage's times are those of its first and last word, inside the speech (VAD pads it by 0.4 s).
    for chunk, (start, end) in zip(chunks, spans):
        assert start - 0.6 <= chunk.t_start < chunk.t_end <= end + 0.6
    hit = Hit(chunks[1], 0.0)
    assert hit.where.startswith(f"meeting{suffix} 00:2")
    assert store.manifest.get(str(path.resolve())).kind == "audio"


@needs_espeak
def test_words_keep_their_absolute_seconds_across_decoding_blocks(tiny_whisper, monkeypatch, tmp_path, make_settings):
    samples, spans = sound_track(40, [(3.0, said("one two three")), (14.0, said("four five six")),
                                      (26.0, said("seven eight nine")), (35.5, said("ten"))])
    path = write_audio(tmp_path / "counting.flac", samples)
    settings = make_settings(asr="on", asr_model=str(tiny_whisper))
    engine = asr.SpeechEngine(settings)
    track = audio.probe(path, path.name)
    assert track.duration == pytest.approx(40, abs=0.1)
    parts = audio.blocks(track, path.name, block_seconds=10)
    offsets, sizes, words = [], [], []
    for offset, block in parts:
        offsets.append(offset)
        sizes.append(block.size)
        words += engine.transcribe(block, offset).words
    # Blocks tile the file, at most 10 s each, and end in a quiet moment, never inside a word.
    assert offsets[0] == 0 and all(b - a == pytest.approx(n / RATE) for a, b, n in zip(offsets, offsets[1:], sizes))
    assert sum(sizes) == pytest.approx(40 * RATE, abs=RATE // 10) and max(sizes) <= 10 * RATE
    assert not any(s - 0.05 < cut < e + 0.05 for cut in offsets for s, e in spans)
    heard = {n for w in words for n, (s, e) in enumerate(spans) if s - 0.6 <= w.start <= w.end <= e + 0.6}
    assert heard == {0, 1, 2, 3}
    assert all(any(s - 0.6 <= w.start and w.end <= e + 0.6 for s, e in spans) for w in words)


def test_silence_gives_no_chunks_and_no_error(open_kb, tiny_whisper, tmp_path):
    rng = np.random.default_rng(0)
    quiet = write_audio(tmp_path / "quiet.wav", np.zeros(RATE * 8, np.float32))
    hum = write_audio(tmp_path / "hum.ogg", (0.001 * rng.standard_normal(RATE * 8)).astype(np.float32))
    store = speech_settings(open_kb, tiny_whisper)
    report = Ingestor(store.settings, store).run([quiet, hum])
    got = {r.rel: r for r in report.results}
    assert report.exit_code == 0
    for name in ("quiet.wav", "hum.ogg"):
        assert got[name].status == "empty" and got[name].chunks == 0 and "no speech" in got[name].notes[-1]


# -- resume -----------------------------------------------------------------------------------------------------
@needs_espeak
def test_an_interrupted_transcription_resumes_from_its_finished_blocks(open_kb, tiny_whisper, monkeypatch, tmp_path):
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 5.0)
    samples, _ = sound_track(20, [(1.0, said("first part")), (6.0, said("second part")),
                                  (11.0, said("third part")), (16.0, said("fourth part"))])
    path = write_audio(tmp_path / "long.mp3", samples)
    calls: list[float] = []
    real = asr.SpeechEngine.transcribe

    def counting(self, block, offset):
        calls.append(offset)
        if len(calls) == 3 and stop:
            raise KeyboardInterrupt  # Ctrl-C while the third block is being transcribed
        return real(self, block, offset)

    stop = True
    monkeypatch.setattr(asr.SpeechEngine, "transcribe", counting)
    store = speech_settings(open_kb, tiny_whisper)
    with pytest.raises(KeyboardInterrupt):
        Ingestor(store.settings, store).run([path])
    assert store.manifest.get(str(path.resolve())) is None  # nothing stored half
    first = list(calls)
    stop = False
    report = Ingestor(store.settings, store).run([path])
    assert report.results[0].status == "added"
    resumed = calls[len(first):]
    # The same passages as a clean run, which transcribes every block; the resumed run skipped the two finished.
    clean = speech_settings(open_kb, tiny_whisper, home=tmp_path / "clean")
    Ingestor(clean.settings, clean).run([path])
    every = calls[len(first) + len(resumed):]
    assert len(first) == 3 and len(every) >= 4 and resumed == every[2:]
    assert [(c.text, c.t_start, c.t_end) for c in chunks_of(store, path)] == \
           [(c.text, c.t_start, c.t_end) for c in chunks_of(clean, path)]


# -- settings ---------------------------------------------------------------------------------------------------
def test_speech_off_leaves_audio_files_out_and_a_missing_model_is_named_with_its_fix(open_kb, tmp_path):
    path = write_audio(tmp_path / "note.wav", np.zeros(RATE, np.float32))
    store = open_kb(asr="off")
    result = Ingestor(store.settings, store).run([path]).results[0]
    assert result.status == "unsupported" and "KB_ASR=off" in result.notes[0]
    missing = str(tmp_path / "no-such-model")
    store = open_kb(asr="auto", asr_model="no-such-whisper", home=tmp_path / "auto")
    result = Ingestor(store.settings, store).run([path]).results[0]
    assert result.status == "unsupported" and "KB_ASR_MODEL" in result.fix
    store = open_kb(asr="on", asr_model=missing, home=tmp_path / "on")
    report = Ingestor(store.settings, store).run([path])
    assert report.exit_code == 1 and "not on this machine" in report.results[0].errors[0]
