#!/usr/bin/env bash
# MELL's comparison in the simulator: mell against best-fit (no migration), worst-fit and
# llumnix on Llama-2-7B / RTX 4090 and Llama-2-13B / A100-40G, with Poisson arrivals at three
# rates (lengths drawn long, as MELL scales LMSYS/WildChat lengths by 10) and a slice of the
# Azure conversation trace. Each case writes compare.csv (mean and peak GPUs in use, KV
# utilisation over active GPUs, migrations per second, p99 TTFT/TPOT) under OUT/CASE.
#
#   scripts/mell_eval.sh [OUT] [CASE...]     # cases: conv7b conv13b p7b-1 p7b-2 p7b-3 p13b-1 p13b-2 p13b-3
set -euo pipefail
OUT=${1:-results/mell}; shift || true
PY=${PYTHON:-python}
POLICIES=mell,best-fit,worst-fit,llumnix
CONV=azure_llm_2023/AzureLLMInferenceTrace_conv.csv
LONG=(--input-len 50-1000 --output-len 100-3000)
run() {  # case, then sim options
  local name=$1; shift
  echo "== $name"
  "$PY" -m kvfleet sim "$@" --seed 0 compare --policies "$POLICIES" --gpus 16 --out "$OUT/$name"
}
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(conv7b conv13b p7b-1 p7b-2 p7b-3 p13b-1 p13b-2 p13b-3)
for c in "${cases[@]}"; do
  case $c in
    conv7b)  run "$c" --trace "$CONV" --duration 300 --gpu RTX4090 --model Llama-2-7B ;;
    conv13b) run "$c" --trace "$CONV" --duration 300 --gpu A100-40G --model Llama-2-13B ;;
    p7b-*)   run "$c" --arrivals poisson --rate "$(( ${c#p7b-} ))" --duration 300 "${LONG[@]}" \
                 --gpu RTX4090 --model Llama-2-7B ;;
    p13b-*)  run "$c" --arrivals poisson --rate "$(( ${c#p13b-} ))" --duration 300 "${LONG[@]}" \
                 --gpu A100-40G --model Llama-2-13B ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
