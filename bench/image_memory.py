"""Peak memory of ingesting huge-but-tiny image files: eight single-colour 16000 x 16000 PNGs (a few MB on disk
together) through the real pipeline (`python -m ingest --engine ocr` in a subprocess), once with the default
decode limit (they are refused, each with its own message) and once with the limit raised so they are decoded.

Before the decode limits (issue 8) this folder took 9.9 GB: a whole engine batch was decoded at full size
before OCR. Now each picture is decoded alone and shrunk at once; the target is a peak under 2 GB.
Where the peak came from (measured by hand, one piece at a time) is in the section after it in docs/benchmarks.md.

usage: python -m bench.image_memory [--count 8] [--side 16000] [--work DIR] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from bench.report import markdown_table, write_section
from kb.config import BUNDLED_EMBED_MODEL

ROOT = Path(__file__).resolve().parent.parent
RAISED_LIMIT = 300_000_000  # reads 16000 x 16000 (256 Mpx)
CONTROL_SIDE = 2000  # the size the ocr engine reads: the same work without a big decode
# Run in a fresh interpreter so the peak (ru_maxrss of its children) is this run's alone.
MEASURE = ("import json, resource, subprocess, sys, time\n"
           "start = time.monotonic()\n"
           "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "print(json.dumps({'rc': done.returncode, 'seconds': time.monotonic() - start, 'stdout': done.stdout,\n"
           "                  'stderr': done.stderr[-4000:],\n"
           "                  'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")


def single_colour_png(path: Path, side: int, rgb: tuple[int, int, int]) -> None:
    """A side x side RGB PNG of one colour, written row by row (never held whole in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * side
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def make_folder(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        path = folder / f"plain-{n}.png"
        if not path.exists():  # distinct colours: distinct files (identical ones would be copied, not read)
            single_colour_png(path, side, (40 + 25 * n, 200 - 20 * n, 90 + 10 * n))
    return folder


def ingest_peak(folder: Path, home: Path, limit: int | None) -> dict:
    env = {**os.environ, "KB_HOME": str(home), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
           "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    env.pop("KB_IMAGE_DECODE_MAX_PIXELS", None)
    if limit is not None:
        env["KB_IMAGE_DECODE_MAX_PIXELS"] = str(limit)
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "ingest", "--json", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    run = json.loads(done.stdout)
    try:
        files = json.loads(run["stdout"])["files"]
    except (json.JSONDecodeError, KeyError):
        files = []
    statuses = [f["status"] for f in files]
    run["statuses"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    run["first_message"] = next((" ".join(f["errors"]) for f in files if f.get("errors")), "")
    return run


OCR_ALONE = ("import resource, sys\n"
             "from PIL import Image\n"
             "from kb.config import load_settings\n"
             "from kb.engines.ocr import OCREngine\n"
             "from kb.types import Request\n"
             "engine = OCREngine(load_settings({'engine': 'ocr'}, env={}))\n"
             "page = Image.new('RGB', (2000, 2000), (40, 200, 90))\n"
             "engine.generate([Request(task='ocr', prompt='', images=[page])])\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def ocr_alone_peak_kb() -> int:
    """The ocr engine reading one 2000 x 2000 picture in a bare process: RapidOCR's share of the peak."""
    done = subprocess.run([sys.executable, "-c", OCR_ALONE], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--side", type=int, default=16000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "seekframe-bench-image-memory")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = parser.parse_args()

    folder = make_folder(args.work / f"pngs-{args.count}x{args.side}", args.count, args.side)
    control = make_folder(args.work / f"pngs-{args.count}x{CONTROL_SIDE}", args.count, CONTROL_SIDE)
    on_disk = sum(p.stat().st_size for p in folder.glob("*.png"))
    rows = []
    runs = [(f"{args.side}² PNGs, default limit (100 Mpx)", folder, None),
            (f"{args.side}² PNGs, limit raised to {RAISED_LIMIT / 1e6:g} Mpx", folder, RAISED_LIMIT),
            (f"control: {CONTROL_SIDE}² PNGs (nothing to shrink), default limit", control, None)]
    for label, where, limit in runs:
        home = Path(tempfile.mkdtemp(prefix="kb-", dir=args.work))
        run = ingest_peak(where, home, limit)
        outcome = ", ".join(f"{n} {s}" for s, n in run["statuses"].items()) or f"exit {run['rc']}"
        rows.append([label, outcome, f"{run['peak_kb'] / 2**20:.2f}", f"{run['seconds']:.0f}"])
        print(f"{label}: exit {run['rc']}, {outcome}, peak {run['peak_kb'] / 2**20:.2f} GB, {run['seconds']:.0f} s",
              flush=True)
        if run["first_message"]:
            print(f"  e.g. {run['first_message'][:300]}")
        if run["rc"] not in (0, 1):
            print(run["stderr"], file=sys.stderr)
    alone = ocr_alone_peak_kb()
    rows.append(["the ocr engine alone (bare process) reading one 2000² picture", "-",
                 f"{alone / 2**20:.2f}", "-"])
    print(f"ocr engine alone on one 2000 x 2000 picture: peak {alone / 2**20:.2f} GB")
    header = ["run (8 files, `python -m ingest --engine ocr`)", "files", "peak RSS (GB)", "seconds"]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_write:
        peaks = [float(row[2]) for row in rows]
        verdict = "under" if peaks[1] < 2 else "above"
        body = (f"{args.count} single-colour {args.side} x {args.side} PNGs ({on_disk / 1e6:.1f} MB on disk together, "
                f"{args.side ** 2 / 1e6:.0f} Mpx each) ingested by `python -m ingest --engine ocr` in a subprocess; "
                "peak resident memory of that process (ru_maxrss). Before the decode limits (issue 8) this folder "
                "took 9.9 GB: a whole engine batch was decoded at full size. A header above the limit is refused "
                "before any pixel is decoded (first row: the process itself, torch, the embedder and Chroma, with "
                "no picture decoded and no engine loaded); with the limit raised each picture is decoded alone, "
                "strip by strip, box-reduced on the way and shrunk at once to the 2000 px the ocr engine reads. "
                "The control row is the same work without a big decode (8 PNGs already at 2000 px); the big "
                f"decodes change the peak by {peaks[1] - peaks[2]:+.2f} GB against it. With the limit raised the "
                f"peak is {peaks[1]:.2f} GB, {verdict} the 2 GB target. The rest is RapidOCR (last row: a bare process "
                "reading one 2000 px picture), which any scanned page costs. Seconds are on a shared, busy "
                "machine.\n\n" + table + "\n\n`python -m bench.image_memory`")
        write_section("Image decoding memory (`python -m bench.image_memory`)", body)


if __name__ == "__main__":
    main()
