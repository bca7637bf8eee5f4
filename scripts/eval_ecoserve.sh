#!/usr/bin/env bash
# EcoServe's evaluation (issue 9): simulated rate sweeps against vLLM (token budget swept to
# its best), vLLM v0 and Orca, a predictor-error sweep, and the live CPU comparison.
#
#   scripts/eval_ecoserve.sh sim-azure      # Llama-3-8B on 8 H100s, Azure conversation trace
#   scripts/eval_ecoserve.sh sim-mooncake   # Llama-3-8B on 8 H100s, Mooncake conversation trace
#   scripts/eval_ecoserve.sh sim-kvbound    # Llama-2-7B (no GQA: 4x the KV per token), Azure
#   scripts/eval_ecoserve.sh sim-predictor  # the gain as the prediction error grows
#   scripts/eval_ecoserve.sh live           # 2 CPU workers, SmolLM2-135M, ecoserve vs vllm
#
# Results go under runs/ecoserve/ (OUT overrides); JOBS sets parallel simulations. Traces are
# read from ../shared/traces (KVFLEET_TRACES_DIR overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/ecoserve}
JOBS=${JOBS:-2}
AZURE=azure_llm_2023/AzureLLMInferenceTrace_conv.csv
MOONCAKE=mooncake_fast25/conversation_trace.jsonl
POLICIES=vllm,ecoserve,vllm-v0,orca
# Every request carries max_tokens=2048 (a client's cap; outputs end at the trace's length),
# the online length predictor learns from completions, budgets are swept for every policy.
COMMON=(--gpus 8 --gpu H100 --max-tokens 2048 --predictor online)

case "${1:-}" in
  sim-azure)
    $PY -m kvfleet sim --trace "$AZURE" --duration 300 --model Llama-3-8B "${COMMON[@]}" \
      --slo ttft=1s,tpot=50ms \
      sweep --policies "$POLICIES" --speeds 24,32,36,40,42,44,46,48,50,52,56 \
      --budgets 1024,2048,4096,8192 --gpus-needed 5,6,7 --jobs "$JOBS" --out "$OUT/sim-azure"
    ;;
  sim-mooncake)
    $PY -m kvfleet sim --trace "$MOONCAKE" --duration 600 --model Llama-3-8B "${COMMON[@]}" \
      --slo ttft=10s,tpot=100ms \
      sweep --policies "$POLICIES" --speeds 2,3,3.25,3.5,3.75,4,4.5,5 \
      --budgets 1024,2048,4096 --gpus-needed 6,7 --jobs "$JOBS" --out "$OUT/sim-mooncake"
    ;;
  sim-kvbound)
    $PY -m kvfleet sim --trace "$AZURE" --duration 300 --model Llama-2-7B "${COMMON[@]}" \
      --slo ttft=1s,tpot=100ms \
      sweep --policies "$POLICIES" --speeds 16,20,24,26,28,30,32 \
      --budgets 1024,2048,4096 --jobs "$JOBS" --out "$OUT/sim-kvbound"
    ;;
  sim-predictor)
    for spread in 0 0.25 0.5 0.75; do
      $PY -m kvfleet sim --trace "$MOONCAKE" --duration 600 --model Llama-3-8B \
        --gpus 8 --gpu H100 --max-tokens 2048 --predictor noisy-oracle \
        --predictor-spread "$spread" --slo ttft=10s,tpot=100ms \
        sweep --policies vllm,ecoserve --speeds 3,3.5,4 --budgets 2048 --jobs "$JOBS" \
        --out "$OUT/sim-predictor-$spread"
    done
    ;;
  live)
    scripts/eval_ecoserve_live.sh "$OUT/live"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
