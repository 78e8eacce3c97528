# Seekframe image: the web app by default; the same image runs the ingest worker (`python -m ingest --worker`).
#   docker build -t seekframe .                              GPU flavour: PyPI's CUDA torch (runs on a CPU too)
#   docker build -t seekframe:cpu --build-arg FLAVOUR=cpu .   CPU flavour: CPU-only torch wheels, ~5 GB smaller
# One stage: a virtual environment with exact versions (requirements.lock), the code, the sample library and the
# embedder's graph; it runs as an unprivileged user. Knowledge base and model caches are volumes. Every dependency is
# a wheel (no compiler), so a separate build stage removed nothing and only copied the 7.5 GB environment once more:
# a build then needed twice the disk (it ran out with 33 GB free) and minutes longer.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE}
# gpu: torch from PyPI (CUDA 13 wheels); cpu: torch from TORCH_INDEX_URL (PyTorch's CPU-only wheel index).
ARG FLAVOUR=gpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# libgomp1: onnxruntime and torch threads; libglib2.0-0: OpenCV. No compilers, no curl: the health check is Python.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/seekframe seekframe \
    && mkdir -p /data/kb /data/inbox /cache && chown -R seekframe:seekframe /data /cache
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt requirements.lock /tmp/
RUN set -eu; \
    python -m venv /opt/seekframe; \
    case "$FLAVOUR" in \
      gpu) ;; \
      cpu) torch=$(grep -E '^(torch|torchvision)==' /tmp/requirements.lock); \
           /opt/seekframe/bin/pip install --index-url "$TORCH_INDEX_URL" $torch ;; \
      *) echo "FLAVOUR must be gpu or cpu, not '$FLAVOUR'" >&2; exit 2 ;; \
    esac; \
    /opt/seekframe/bin/pip install -r /tmp/requirements.txt -c /tmp/requirements.lock; \
    rm /tmp/requirements.txt /tmp/requirements.lock
# Settings live in the environment (KB_*, STREAMLIT_*), secrets in a mounted .streamlit/secrets.toml: none in here.
# The file watcher is off: a production app never reloads its code, and watching site-packages exhausts inotify.
ENV PATH=/opt/seekframe/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 ANONYMIZED_TELEMETRY=False SEEKFRAME_FLAVOUR=${FLAVOUR} \
    KB_HOME=/data/kb KB_INBOX=/data/inbox HF_HOME=/cache/huggingface XDG_CACHE_HOME=/cache \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0 STREAMLIT_SERVER_PORT=8501 STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none STREAMLIT_SERVER_RUN_ON_SAVE=false \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false STREAMLIT_CLIENT_TOOLBAR_MODE=minimal
WORKDIR /app
COPY --chown=root:root kb kb
COPY --chown=root:root ingest ingest
COPY --chown=root:root pages pages
COPY --chown=root:root data/__init__.py data/make_samples.py data/README.md data/
COPY --chown=root:root streamlit_app.py .
# The sample library, so `python -m ingest /app/data/samples` shows what Seekframe does on a fresh install.
RUN python -m data.make_samples data/samples
# The bundled embedder's ONNX Runtime graph, exported here once (into /opt/seekframe/share/seekframe/onnx) instead
# of inside the first ingest or search of every container.
RUN python -m kb.embed
USER seekframe
VOLUME ["/data", "/cache"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ.get('STREAMLIT_SERVER_PORT', '8501'), timeout=4)"]
CMD ["streamlit", "run", "streamlit_app.py"]
