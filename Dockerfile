# Seekframe: the web app with the sample library. GPU: `docker run --gpus all ...`; without one the ocr engine runs.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ANONYMIZED_TELEMETRY=False KB_HOME=/app/data/kb
# libgomp: onnxruntime/torch threads; libglib2.0-0: OpenCV; curl: the health check
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY kb kb
COPY ingest ingest
COPY pages pages
COPY data/__init__.py data/make_samples.py data/README.md data/
COPY streamlit_app.py .
RUN python -m data.make_samples data/samples

EXPOSE 8501
VOLUME /app/data/kb
HEALTHCHECK CMD curl -fs http://localhost:8501/_stcore/health || exit 1
# Ingest is idempotent: restarting the container only reads what changed.
CMD python -m ingest data/samples; \
    exec streamlit run streamlit_app.py --server.port 8501 --server.address 0.0.0.0 --server.headless true \
        --browser.gatherUsageStats false
