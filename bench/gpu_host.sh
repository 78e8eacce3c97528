#!/usr/bin/env bash
# `python -m ingest` on the lent GPU host (bench/ingest_gpu.py), whose image has torch and transformers but not
# chromadb, PyMuPDF, tantivy, PyAV or decord, and reaches no package registry.
#   here:  bash bench/gpu_host.sh wheels     the missing wheels for that image (CPython 3.12, x86_64) in .e2e/one and
#                                            .e2e/two (each under the 64 MiB a call carries), the clips in .e2e/clips
#   there: bash bench/gpu_host.sh install one    (a call carrying .e2e/one), then `install two` (carrying .e2e/two);
#          bash bench/gpu_host.sh prepare WORK   the hour of video and the random models, made once into WORK
# then `python3 -m bench.ingest_gpu --video-minutes 60 --clips .e2e/clips --work WORK --model-dir WORK/model ...`
# (carrying .e2e/clips); a warm machine keeps what the calls installed and made.
set -euo pipefail
cd "$(dirname "$0")/.."
E2E=.e2e

# What the image holds already: never carried, so its torch stays.
IMAGE=$(grep -v "^#" bench/host_image.txt)
# The largest go in a second call, so each call carries under 64 MiB.
SECOND="av decord tantivy pillow-heif"

case "${1:-}" in
wheels)
    rm -rf "$E2E/all" "$E2E/one" "$E2E/two" "$E2E/clips"
    mkdir -p "$E2E/all" "$E2E/one" "$E2E/two"
    platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64
               --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64)
    # PyMuPDF 1.26 (24 MB): 2.0's wheel alone is 69 MB, over what one call carries.
    python3 -m pip download -q -d "$E2E/all" --python-version 3.12 "${platforms[@]}" --only-binary=:all: \
        "chromadb>=1.3,<2" "pymupdf>=1.26,<1.27" "tantivy>=0.25,<0.28" "av>=14" "decord==0.6.0" "pillow-heif>=1.0"
    for wheel in "$E2E"/all/*.whl; do
        name=$(basename "$wheel" | sed 's/-[0-9].*//' | tr '_A-Z' '-a-z')
        if [[ " $(echo $IMAGE) " == *" $name "* ]]; then continue; fi
        if [[ " $SECOND " == *" $name "* ]]; then cp "$wheel" "$E2E/two/"; else cp "$wheel" "$E2E/one/"; fi
    done
    rm -rf "$E2E/all"
    cp -r "${SEEKFRAME_TEST_DATA:-../shared/data}/videos" "$E2E/clips"
    du -sh "$E2E"/one "$E2E"/two "$E2E"/clips
    ;;
install)
    part=${2:?install one or two}
    python3 -m pip install -q --no-deps --no-index "$E2E/$part"/*.whl
    python3 -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('imported', *sys.argv[1:])" \
        $([ "$part" = one ] && echo chromadb fitz || echo av decord tantivy)
    ;;
prepare)
    python3 - "${2:?prepare WORK: the folder bench.ingest_gpu gets as --work}" <<'PY'
import sys, time
from pathlib import Path
from bench.engine_gpu import build_random_4b
from bench.ingest_gpu import build_random_embedder, make_video
work = Path(sys.argv[1])
started = time.perf_counter()
video = work / "video" / "video-60min-25fps.mp4"  # where bench.ingest_gpu --work WORK looks for it
if not video.exists():
    make_video(Path(".e2e/clips"), video, 60, 25)
if not (work / "model" / "config.json").exists():
    build_random_4b(work / "model")
if not (work / "qwen3-embedding-0.6b-random" / "modules.json").exists():
    build_random_embedder(work / "qwen3-embedding-0.6b-random")
print(f"video and models ready in {work} ({time.perf_counter() - started:.0f} s)")
PY
    ;;
*)
    sed -n 2,9p "$0"
    exit 2
    ;;
esac
