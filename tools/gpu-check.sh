#!/usr/bin/env bash
# One command on a fresh, offline GPU machine (after tools/gpu-prepare.sh here and the carried
# .gpu/ folders there): the CUDA-only tests, then `mqvq bench all` at the anchor configuration
# (f = 16, 256², 25 % mask, K = 1024, Stackformer small, bf16) eagerly and compiled (torch.compile;
# CUDA graphs for the sampler), keeping each section's compiled figures only where they measure
# faster. Everything lands in RESULTS_DIR: bench.json (the merged result), bench-eager.json,
# bench-compiled.json, and a log per step. Budget: about 9 minutes on a current data-centre GPU.
#
#   tools/gpu-check.sh RESULTS_DIR         # on the GPU machine
#   tools/gpu-check.sh DIR --dry-run       # here, on CPU: the same steps at the smallest sizes
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "usage: tools/gpu-check.sh RESULTS_DIR [--dry-run]" >&2; exit 2; fi
results=$1
mode=${2:-}
case "$mode" in ""|--dry-run) ;; *) echo "gpu-check: unknown option $mode (allowed: --dry-run)" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
mkdir -p "$results"
results=$(cd "$results" && pwd)

if [ "$mode" = --dry-run ]; then
  device=cpu; sizes=(--quick); py=${PYTHON:-python3}
else
  # shellcheck source=/dev/null
  . tools/gpu-env.sh
  device=cuda; sizes=(); py=python3
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA GPU is visible: use --dry-run on a CPU machine.')"
fi
start=$(date +%s)
step() { echo "[$(( $(date +%s) - start )) s] $*" >&2; }

step "CUDA-only tests (pytest -m cuda; on a CPU they are skipped)"
code=0
"$py" -m pytest -q -p no:cacheprovider -m cuda tests > "$results/cuda-tests.log" 2>&1 || code=$?
tail -1 "$results/cuda-tests.log" >&2
if [ "$code" != 0 ]; then step "CUDA-only tests failed (exit $code): see $results/cuda-tests.log"; exit "$code"; fi

step "bench all, eager"
"$py" -m mqvq bench all "${sizes[@]}" --device "$device" --out "$results/bench-eager.json" --no-log \
  > "$results/bench-eager.log" 2>&1
step "bench all, compiled"
"$py" -m mqvq bench all "${sizes[@]}" --device "$device" --compile --out "$results/bench-compiled.json" --no-log \
  > "$results/bench-compiled.log" 2>&1 || step "compiled run failed (see bench-compiled.log): keeping the eager figures"

step "merging: compiled only where faster"
"$py" tools/bench-merge.py "$results/bench-eager.json" "$results/bench-compiled.json" --out "$results/bench.json"
step "done: $results/bench.json"
