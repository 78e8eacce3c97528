"""CPU speed of video reading: decode + scene-aware sampling, and the lazy per-window decode for the engine.

Runs over the real clips in ../shared/data/videos and a generated synthetic video (default 5 minutes, 720p,
25 fps: slides whose lines appear one by one, cuts, a camera pan and a still shot). Speed is video-seconds per
wall-second, so 60 means an hour of video is sampled in a minute.

usage: python -m bench.video_decode [--minutes 5] [--backends decord,pyav] [--data ../shared/data] [--no-write]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from bench.report import markdown_table, write_section
from ingest.video import group_windows, load_clip
from ingest.video_sampling import DEFAULT_PARAMS, sample_frames
from kb.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SCENE_SECONDS = 30  # the synthetic video cycles slide / moving / still scenes of this length
SIZE, FPS = (1280, 720), 25


def _slide(n: int, t: float, rng_noise: np.ndarray) -> np.ndarray:
    """Slide n: a coloured title bar, then one more bullet line every 5 s (text changes, few pixels move)."""
    img = np.full((SIZE[1], SIZE[0], 3), 245, np.uint8)
    img[:110] = ((37 * n) % 200 + 30, (91 * n) % 200 + 30, (53 * n) % 200 + 30)
    cv2.putText(img, f"Part {n}: results and methods", (50, 75), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (255, 255, 255), 3)
    for line in range(int(t // 5) + 1):
        cv2.putText(img, f"- finding {n}.{line}: accuracy {80 + line}%", (70, 190 + 70 * line),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.2, (30, 30, 30), 2, cv2.LINE_AA)
    return np.clip(img + rng_noise, 0, 255).astype(np.uint8)


def _panorama() -> np.ndarray:
    """A wide picture (blurred texture with shapes) for the camera pan to travel across."""
    rng = np.random.default_rng(7)
    pano = cv2.GaussianBlur(rng.integers(0, 255, (SIZE[1], SIZE[0] * 3, 3), dtype=np.uint8), (61, 61), 0)
    pano = cv2.normalize(pano, None, 0, 255, cv2.NORM_MINMAX)
    for _ in range(40):
        centre = (int(rng.integers(0, pano.shape[1])), int(rng.integers(0, SIZE[1])))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(pano, centre, int(rng.integers(20, 120)), colour, -1)
    return pano


def _moving(pano: np.ndarray, within: float) -> np.ndarray:
    """A camera pan at 40 px/s across the panorama: every sampled frame differs a little."""
    x = int(within * 40) % (pano.shape[1] - SIZE[0])
    return np.ascontiguousarray(pano[:, x:x + SIZE[0]])


def synthetic_video(path: Path, minutes: float) -> Path:
    noise = [np.random.default_rng(k).normal(0, 3, (SIZE[1], SIZE[0], 3)).astype(np.int16) for k in range(4)]
    still = cv2.GaussianBlur(np.random.default_rng(9).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8),
                             (41, 41), 0)
    pano = _panorama()
    frames = int(minutes * 60 * FPS)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for i in range(frames):
            t = i / FPS
            scene, within = divmod(t, SCENE_SECONDS)
            kind = int(scene) % 3
            if kind == 0:
                img = _slide(int(scene), within, noise[i % 4])
            elif kind == 1:
                img = _moving(pano, within)
            else:
                img = np.clip(still + noise[i % 4], 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path


def measure(path: Path, backend: str, settings: Settings) -> dict:
    started = time.perf_counter()
    sample = sample_frames(path, DEFAULT_PARAMS, prefer=backend)
    sampled = time.perf_counter() - started
    windows = group_windows(sample.frames, sample.duration)
    started = time.perf_counter()
    for window in windows:  # what the pipeline does, one window at a time, when the engine asks for frames
        load_clip(path, sample, window.frames, settings.video_max_pixels)
    clips = time.perf_counter() - started
    info = sample.info
    return {"file": path.name, "backend": info.backend, "size": f"{info.width}x{info.height}", "fps": info.fps,
            "video_s": info.duration, "decoded": sample.decoded, "kept": sample.kept, "dropped": sample.dropped,
            "cuts": len(sample.cuts), "windows": len(windows), "sample_s": sampled, "clips_s": clips,
            "speed": info.duration / sampled, "speed_all": info.duration / (sampled + clips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--backends", default="decord,pyav")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    settings = Settings()
    clips = sorted(p for p in (args.data / "videos").rglob("*") if p.suffix in (".mp4", ".webm"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        synthetic = synthetic_video(Path(tmp) / f"synthetic_{args.minutes:g}min_720p.mp4", args.minutes)
        print(f"generated {synthetic.name} in {time.perf_counter() - started:.0f} s")
        for path in clips + [synthetic]:
            for backend in args.backends.split(","):
                row = measure(path, backend, settings)
                rows.append(row)
                print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    header = ["file", "decoder", "size", "fps", "video s", "decoded", "kept", "dropped", "cuts", "windows",
              "sample s", "clips s", "sample speed (video s / s)", "with clips (video s / s)"]
    table = markdown_table(header, [[r["file"], r["backend"], r["size"], r["fps"], r["video_s"], r["decoded"],
                                     r["kept"], r["dropped"], r["cuts"], r["windows"], r["sample_s"], r["clips_s"],
                                     r["speed"], r["speed_all"]] for r in rows])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    body = (f"{table}\n\nSampling: {DEFAULT_PARAMS.fps:g} candidate frame/s, scene-change and text-change "
            f"dropping, key frames at {DEFAULT_PARAMS.thumb_side} px (JPEG writing not included). `clips s`: "
            f"decoding every window's kept frames at video_max_pixels={settings.video_max_pixels} for the engine "
            f"(done lazily, one window at a time, during ingest). Peak resident memory of the whole run: "
            f"{peak:.0f} MiB. Synthetic video: {SCENE_SECONDS} s scenes cycling slides (a line added every 5 s), "
            f"a camera pan across a picture and a still noisy shot. "
            f"Command: `python -m bench.video_decode --minutes {args.minutes:g}`.")
    print(table)
    print(f"peak RSS {peak:.0f} MiB")
    if not args.no_write:
        write_section("Video decode and sampling (CPU)", body)


if __name__ == "__main__":
    main()
