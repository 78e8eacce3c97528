"""bench/report.py's writer of docs/benchmarks.md: a benchmark rewrites its tables, never the notes people added."""
from __future__ import annotations

from pathlib import Path

from bench.report import write_section

BEFORE = """# Benchmarks
Each section is written by the script it names.

## Video decode (CPU)
_Measured on old machine, 2026-01-01._

| clip | fps |
|---|---|
| a.mp4 | 30 |

## Scale (`python -m bench.scale`)
_Measured on old machine, 2026-01-01._

| chunks | lexical p50 ms |
|---|---|
| 100,000 | 13.2 |

### The two filtered plans, measured by hand (2026-12-02)

| filter | scored ms | ranked ms |
|---|---|---|
| one source | 0.6 | 1739 |

#### A note under it

```
## not a heading: inside a code block
### nor this
```

### Generated notes

old generated text

## Image decoding memory
_Measured on old machine, 2026-01-01._

peak 300 MiB
"""


def test_rewriting_a_section_replaces_its_tables_and_keeps_the_hand_written_subsections(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(BEFORE)
    write_section("Scale (`python -m bench.scale`)", "| chunks | lexical p50 ms |\n|---|---|\n| 1,000,000 | 9.5 |\n\n"
                  "### Generated notes\n\nnew generated text", path=doc, where="test machine")
    after = doc.read_text()
    scale = after[after.index("## Scale"):after.index("## Image decoding memory")]
    assert "| 1,000,000 | 9.5 |" in scale and "| 100,000 | 13.2 |" not in scale  # the table: the new one only
    assert "_Measured on test machine, " in scale and "old machine" not in scale
    hand_written = BEFORE[BEFORE.index("### The two filtered"):BEFORE.index("### Generated notes")]
    assert hand_written.strip() in scale  # with its #### note and the code block whose lines look like headings
    assert scale.index("| 1,000,000 | 9.5 |") < scale.index("### The two filtered")  # the tables first
    # A subsection the script writes itself is replaced, not kept twice.
    assert scale.count("### Generated notes") == 1 and "new generated text" in scale and "old generated" not in scale
    # The other sections are untouched, byte for byte.
    for other in ("## Video decode (CPU)", "## Image decoding memory"):
        start = BEFORE.index(other)
        end = BEFORE.find("\n## ", start + 1)
        assert BEFORE[start:end if end > 0 else None] in after


def test_a_section_not_yet_in_the_file_is_added_at_the_end(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(BEFORE)
    write_section("Team", "| askers | p95 s |\n|---|---|\n| 4 | 1.2 |", path=doc, where="test machine")
    after = doc.read_text()
    assert after.startswith(BEFORE.rstrip()) and after.rstrip().endswith("| 4 | 1.2 |")
    assert after.count("## Team\n") == 1


def test_rewriting_twice_gives_the_same_file(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(BEFORE)
    write_section("Scale (`python -m bench.scale`)", "| chunks |\n|---|\n| 5 |", path=doc, where="m")
    once = doc.read_text()
    write_section("Scale (`python -m bench.scale`)", "| chunks |\n|---|\n| 5 |", path=doc, where="m")
    assert doc.read_text() == once  # no blank lines pile up, nothing is duplicated
