"""Benchmarks: each prints its table and, with --write, keeps it in docs/benchmarks.md (bench/report.py).

They run offline and report nothing anywhere: set before any of them imports a hub client or Chroma.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
