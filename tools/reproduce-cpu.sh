#!/usr/bin/env bash
# The `cpu` reproduction of Tables 6 and 7 on a 2-core machine (about 80 minutes), then its reports:
#   bash tools/reproduce-cpu.sh [HOME] [STUDY ...]    (default home: ./.mqvq-cpu; studies: ablation-mask ablation-demask)
# Table 6 with a mask that keeps the object, self-contained (its own VQGAN, MLP and random rows; about 1 h 45 min):
#   bash tools/reproduce-cpu.sh .mqvq-learned ablation-mask-learned
# Resumable: rerun the same command after an interruption and only what is missing runs.
# In the background: nohup bash tools/reproduce-cpu.sh > cpu.log 2>&1 &   (stop it with kill -TERM)
set -euo pipefail
cd "$(dirname "$0")/.."
home=${1:-.mqvq-cpu}
shift || true
studies=${*:-ablation-mask ablation-demask}
seeds=(--seeds 0 --seeds 1 --seeds 2)
workers=${MQVQ_WORKERS:-2}
start=$(date +%s)
status=0
for study in $studies; do  # ablation-demask reuses Table 6's VQGAN and 50 % rows
  if [ -f "$home/mlflow.db" ]; then  # plan only reads: on a fresh home there is no store to plan from yet
    mqvq study plan "$study" --profile cpu --home "$home" --workers "$workers" "${seeds[@]}" | tail -n 3
  fi
  mqvq study run "$study" --profile cpu --home "$home" --workers "$workers" "${seeds[@]}" --no-progress || status=$?
done
echo "studies took $(( ($(date +%s) - start) / 60 )) min"
report() {  # `report --check` exits 1 when a claim fails: that is a result to write down, not an error
  mqvq report "$@" || [ $? -eq 1 ]
}
mkdir -p reports/cpu
for study in $studies; do
  report "$study" --profile cpu --home "$home" --check --out "reports/cpu/$study.md"  # and its figures
  for ext in tex json; do
    report "$study" --profile cpu --home "$home" --check --out "reports/cpu/$study.$ext" --no-figures
  done
done
exit "$status"
