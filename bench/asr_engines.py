"""Speech engines on this machine's CPU: faster-whisper (CTranslate2 int8) against transformers' Whisper (float32).

Both run the same Whisper architecture (`--size small`: d_model 768, 12+12 layers, the CPU default of KB_ASR_MODEL)
with the same random weights, built locally (no download), on 30 s of audio, decoding a fixed number of tokens
(end-of-text suppressed), so speed and memory compare like for like; quality needs the real weights (see
`--real` below and docs/benchmarks.md). Each engine runs in its own process so peak memory is its own.

usage: python -m bench.asr_engines [--size small|base] [--tokens 100] [--repeat 3]
       python -m bench.asr_engines --real MODEL AUDIO_DIR   # error rate with real weights: each audio file
           beside a reference transcript of the same name (.txt); words, or characters for Chinese/Japanese
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"base": dict(d_model=512, layers=6, heads=8, ffn=2048), "small": dict(d_model=768, layers=12, heads=12,
                                                                               ffn=3072)}


def build(size: str, out: Path) -> tuple[Path, Path]:
    """Random weights of the real shape, converted for CTranslate2 as a downloaded checkpoint would be."""
    from tests.tiny_whisper import build_whisper

    dims = SIZES[size]
    return build_whisper(out, d_model=dims["d_model"], layers=dims["layers"], heads=dims["heads"], ffn=dims["ffn"])


def features():
    import numpy as np
    from transformers import WhisperFeatureExtractor

    audio = np.random.default_rng(0).normal(0, 0.1, 30 * 16000).astype(np.float32)
    return WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features


def run_one(engine: str, folder: str, tokens: int, repeat: int) -> dict:
    """One engine in this process: load time, seconds per 30 s window (median), peak RSS."""
    import numpy as np

    mel = features()
    prompt = [50258, 50259, 50360, 50364]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    started = time.perf_counter()
    if engine == "faster-whisper":
        import ctranslate2

        model = ctranslate2.models.Whisper(folder, device="cpu", compute_type="int8", intra_threads=2)

        def window() -> None:
            model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), [prompt],
                           max_length=tokens + len(prompt), suppress_tokens=[50257], beam_size=1)
    else:
        import torch
        from transformers import WhisperForConditionalGeneration

        torch.set_num_threads(2)
        model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        inputs = torch.from_numpy(mel)

        def window() -> None:
            with torch.inference_mode():
                model.generate(inputs, decoder_input_ids=torch.tensor([prompt]), min_new_tokens=tokens,
                               max_new_tokens=tokens, num_beams=1, do_sample=False)
    load = time.perf_counter() - started
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        window()
        times.append(time.perf_counter() - t)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return {"engine": engine, "load_s": load, "window_s": statistics.median(times),
            "peak_rss_mb": int(hwm.split()[1]) / 1024}


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def tokens_of(text: str, language: str) -> list[str]:
    import re

    text = re.sub(r"[^\w\s]", "", text.lower())
    return [c for c in text if not c.isspace()] if language in ("zh", "ja", "yue") else text.split()


def real(model: str, folder: Path) -> None:
    """Error rate of the speech lane (blocks, VAD, the model) on audio files with reference transcripts."""
    from bench.report import markdown_table, write_section
    from ingest.audio import blocks, join_words, probe
    from kb.config import load_settings
    from kb.engines.asr import SpeechEngine, main_language

    engine = SpeechEngine(load_settings({"asr": "on", "asr_model": model}))
    rows, errors, total = [], 0, 0
    for reference in sorted(folder.glob("*.txt")):
        audio = next((p for p in folder.glob(reference.stem + ".*") if p.suffix != ".txt"), None)
        if audio is None:
            continue
        track = probe(audio, audio.name)
        started = time.perf_counter()
        parts = [engine.transcribe(samples, offset) for offset, samples in blocks(track, audio.name)]
        seconds = time.perf_counter() - started
        language = main_language(parts)
        ref = tokens_of(reference.read_text(), language)
        hyp = tokens_of(join_words([w for p in parts for w in p.words]), language)
        wrong = edit_distance(ref, hyp)
        errors, total = errors + wrong, total + len(ref)
        rows.append([audio.name, language, round(track.duration), round(track.duration / seconds, 1),
                     f"{100 * wrong / max(len(ref), 1):.1f}"])
    rows.append(["all", "", "", "", f"{100 * errors / max(total, 1):.1f}"])
    table = markdown_table(["file", "language", "seconds", "x real time", "error rate %"], rows)
    print(table)
    write_section(f"Speech quality ({engine.model}, `python -m bench.asr_engines --real`)",
                  f"{engine.model} on {engine.device}; word error rate (character error rate for Chinese and "
                  f"Japanese) against the reference transcripts in {folder.name}/.\n\n" + table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # engine folder: a child process
    parser.add_argument("--real", nargs=2, metavar=("MODEL", "AUDIO_DIR"))
    args = parser.parse_args()
    if args.real:
        real(args.real[0], Path(args.real[1]))
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.tokens, args.repeat)))
        return
    from bench.report import markdown_table, write_section

    with tempfile.TemporaryDirectory() as tmp:
        hf, ct2 = build(args.size, Path(tmp))
        rows = []
        for engine, folder in (("faster-whisper", ct2), ("transformers", hf)):
            done = subprocess.run([sys.executable, "-m", "bench.asr_engines", "--one", engine, str(folder),
                                   "--tokens", str(args.tokens), "--repeat", str(args.repeat)],
                                  capture_output=True, text=True, check=True)
            got = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append([engine, "int8" if engine == "faster-whisper" else "float32", round(got["load_s"], 1),
                         round(got["window_s"], 2), round(30 / got["window_s"], 1), round(got["peak_rss_mb"])])
    table = markdown_table(["engine", "weights", "load (s)", "30 s window (s)", "x real time", "peak RSS (MB)"],
                           rows)
    print(table)
    body = (f"Whisper-{args.size} shape, random weights, one 30 s window decoding {args.tokens} tokens (greedy), "
            f"2 threads, median of {args.repeat}; each engine in its own process. `python -m bench.asr_engines`. "
            "The CPU is shared with other jobs, so times are indicative; the ratio is what decided the engine "
            "(docs/architecture.md, Speech). Peak RSS includes torch and transformers in both processes (the mel "
            "features are computed with transformers' extractor). No GPU was available to this measurement.\n\n"
            + table)
    write_section(f"Speech engines on CPU (`python -m bench.asr_engines --size {args.size}`)", body)


if __name__ == "__main__":
    main()
