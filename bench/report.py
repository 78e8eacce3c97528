"""Benchmark tables: print them, and keep one section per benchmark in docs/benchmarks.md (machine and date)."""
from __future__ import annotations

import datetime
import os
import platform
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


def _cut_before_headings(text: str, marker: str) -> list[str]:
    """`text` cut before each line starting with `marker` ("## ", "### ") outside code fences; the first piece is
    what comes before the first such heading (it may be empty)."""
    pieces, fenced = [""], False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith(marker):
            pieces.append("")
        pieces[-1] += line
    return pieces


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD, where: str | None = None) -> None:
    """Replace (or add) the section `## title` in docs/benchmarks.md, keeping the other sections.

    Within the section only what the script generates is replaced (the stamp, the tables and notes up to the first
    `### ` subsection): hand-written `### ` subsections under it stay, after the new tables, except one whose
    heading the new body writes itself (that one is generated: the new one replaces it)."""
    stamp = f"_Measured on {where or machine()}, {datetime.date.today().isoformat()}._"
    generated = f"## {title}\n{stamp}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\nEach section is written by the script it names.\n"
    sections = _cut_before_headings(text, "## ")
    found = [n for n, part in enumerate(sections) if part.split("\n", 1)[0] == f"## {title}"]
    if found:
        written = {line for line in generated.splitlines() if line.startswith("### ")}
        kept = [sub.strip("\n") + "\n" for sub in _cut_before_headings(sections[found[0]], "### ")[1:]
                if sub.split("\n", 1)[0] not in written]
        sections[found[0]] = "\n".join([generated, *kept]) + "\n"
        text = "".join(sections)
    else:
        text = text.rstrip() + "\n\n" + generated
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
