#!/usr/bin/env bash
# The mask-learning study (which token selector keeps what matters; stage 1 only, 80 runs, about
# 2 hours on a 2-core CPU with two workers, resumable) and its reports:
#   bash tools/reproduce-mask-learning.sh [HOME]        (default home: ./.mqvq-ml)
# In the background: nohup bash tools/reproduce-mask-learning.sh > ml.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
home=${1:-.mqvq-ml}
workers=${MQVQ_WORKERS:-2}
status=0
mqvq study run mask-learning --profile cpu --home "$home" --workers "$workers" --no-progress || status=$?
report() {  # `report --check` exits 1 when a claim fails: that is a result to write down, not an error
  mqvq report "$@" || [ $? -eq 1 ]
}
mkdir -p reports/cpu
report mask-learning --profile cpu --home "$home" --check --out reports/cpu/mask-learning.md  # and its figures
report mask-learning --profile cpu --home "$home" --check --out reports/cpu/mask-learning.json --no-figures
python tools/mask-learning-table.py reports/cpu/mask-learning.json > reports/cpu/mask-learning-table.md
exit "$status"
