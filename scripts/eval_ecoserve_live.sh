#!/usr/bin/env bash
# EcoServe on the live CPU stack (issue 9): the same saturating Azure-conversation slice sent
# to `kvfleet up --policy vllm` and `--policy ecoserve` (2 workers, SmolLM2-135M, one torch
# thread each, a small KV pool so memory binds), alternating policies ROUNDS times so slow
# drifts of a shared machine hit both alike. Each run writes the load generator's
# requests.csv/summary.json under OUT/<policy>-<round>; the comparisons are printed at the end.
#
#   scripts/eval_ecoserve_live.sh [OUT]      (env: ROUNDS, SPEED, START, DURATION, SLO, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/ecoserve/live}
ROUNDS=${ROUNDS:-2}
TRACE=${TRACE:-azure_llm_2023/AzureLLMInferenceTrace_conv.csv}
START=${START:-600}        # trace seconds
DURATION=${DURATION:-10}   # trace seconds of the slice (~47 requests)
SPEED=${SPEED:-0.04}       # replay speed: ~0.2 req/s, saturating two 1-thread CPU workers
MAX_INPUT=${MAX_INPUT:-96}
MAX_OUTPUT=${MAX_OUTPUT:-64}
SLO=${SLO:-ttft=20s,tpot=2s}
MEMORY_BYTES=${MEMORY_BYTES:-680000000}  # weights + workspace + ~50 pages of 22 tokens
BUDGET=${BUDGET:-256}
mkdir -p "$OUT"
cat > "$OUT/fleet.yaml" <<EOF
models:
  - name: smollm2-135m
workers:
  - id: worker-0
    memory_bytes: $MEMORY_BYTES
    models: [smollm2-135m]
  - id: worker-1
    memory_bytes: $MEMORY_BYTES
    models: [smollm2-135m]
engine:
  num_threads: 1
  max_num_seqs: 32
  max_num_batched_tokens: $BUDGET
http_port: 0
grpc_port: 0
open_gateway: true  # loopback only; the load generator sends no key
EOF

gateway() {
  $PY -c "import json,sys; d=json.load(open(sys.argv[1])); \
print(next(s['grpc'] for s in d['services'] if s['kind']=='gateway'))" "$1/stack.json"
}

for round in $(seq 1 "$ROUNDS"); do
  for policy in vllm ecoserve; do
    run="$OUT/$policy-$round"
    rm -rf "$run"
    mkdir -p "$run"
    $PY -m kvfleet up --config "$OUT/fleet.yaml" --policy "$policy" -d --run-dir "$run/stack"
    addr=$(gateway "$run/stack")
    $PY -m kvfleet load --target "grpc://$addr" --trace "$TRACE" --model smollm2-135m \
      --start "$START" --duration "$DURATION" --speed "$SPEED" --max-input "$MAX_INPUT" \
      --max-output "$MAX_OUTPUT" --slo "$SLO" --label "$policy" --no-progress --no-plots \
      --drain-timeout 900 \
      --out "$run" || true
    $PY -m kvfleet down --run-dir "$run/stack"
  done
  $PY -m kvfleet load compare "$OUT/vllm-$round/summary.json" "$OUT/ecoserve-$round/summary.json"
done
