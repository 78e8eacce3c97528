"""Resume: the engine's text for each unit is appended to a per-file checkpoint as soon as its batch returns.

An interrupted run (Ctrl-C, a crash, a reboot during a two-hour video) reads the same file version again on the
next run, takes the finished units from here and sends only the rest to the engine. The checkpoint is removed
once the file is stored. Keys include the engine and model, so switching engines never reuses stale text.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from kb.types import Unit


def unit_key(index: int, unit: Unit) -> str:
    """Stable for the same file content and reading settings: position in the file plus its place."""
    return f"{index}:{unit.modality}:{unit.task}:{unit.page}:{unit.t_start}:{unit.t_end}"


class Checkpoint:
    def __init__(self, home: Path, sha256: str, engine: str, model: str) -> None:
        self.path = home / "checkpoints" / f"{sha256}.jsonl"
        self.engine, self.model = engine, model

    def load(self) -> dict[str, str]:
        done: dict[str, str] = {}
        if not self.path.exists():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line of a run killed mid-write
                continue
            if entry.get("engine") == self.engine and entry.get("model") == self.model:
                done[entry["key"]] = entry["text"]
        return done

    def add(self, key: str, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "text": text, "engine": self.engine, "model": self.model}, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
