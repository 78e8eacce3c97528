"""Benchmark tables: print them, and keep one section per benchmark in docs/benchmarks.md (machine and date)."""
from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path
from typing import Sequence

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """CPU model and cores, the GPU if there is one, Python: enough to compare two runs."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD, where: str | None = None) -> None:
    """Replace (or add) the section `## title` in docs/benchmarks.md, keeping the other sections."""
    stamp = f"_Measured on {where or machine()}, {datetime.date.today().isoformat()}._"
    section = f"## {title}\n{stamp}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\nEach section is written by the script it names.\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"written to {path}")


def publish(title: str, body: str, out: Path | None = None) -> None:
    """Print a benchmark's section and keep it: in docs/benchmarks.md, or (measured on a lent machine whose
    tree does not come back) in `out`, the machine's line first, to be pasted into the section here."""
    print(body)
    if out:
        out.write_text(f"{machine()}\n{body}")
    else:
        write_section(title, body)
