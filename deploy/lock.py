"""`make lock`: resolve requirements.txt into requirements.lock (exact versions, used as pip constraints).

pip resolves for this machine's platform and Python (Linux x86_64, 3.11, like the image's base).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# Exact versions of requirements.txt and everything it pulls in, for the image "
          "(Linux x86_64, Python 3.11).\n"
          "# Used as pip constraints: `pip install -r requirements.txt -c requirements.lock`. Regenerate with "
          "`make lock`.\n")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", str(report), "-r", str(ROOT / "requirements.txt")], check=True)
        installs = json.loads(report.read_text())["install"]
    pins = sorted(f"{i['metadata']['name'].lower()}=={i['metadata']['version']}" for i in installs)
    (ROOT / "requirements.lock").write_text(HEADER + "\n".join(pins) + "\n")
    print(f"requirements.lock: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
