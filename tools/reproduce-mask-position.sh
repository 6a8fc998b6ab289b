#!/usr/bin/env bash
# The mask-position study (importance or position? stage 1 only, resumable) and its report, one data set
# per command so that each fits a sitting on a 2-core CPU with two workers (`mqvq study plan` says how long):
#   bash tools/reproduce-mask-position.sh [HOME] [BED ...]     (default home ./.mqvq-mp; beds: wrap long heldout objects translated)
# In the background: nohup bash tools/reproduce-mask-position.sh > mp.log 2>&1 &
#   wrap        textured objects on a torus (position says nothing), 8 selectors x 5 seeds   ~70 min
#   heldout     top-left quadrant held out, 5 selectors x 3 seeds                            ~35 min
#   objects     textured objects on plain backgrounds, 8 selectors x 3 seeds                 ~50 min
#   long        the torus bed at 800 steps, 6 selectors x 3 seeds                            ~75 min
#   translated  translated Fashion-MNIST 48 px (12 x 12 tokens), 8 selectors x 5 seeds      ~3 h: run it on its own
set -euo pipefail
cd "$(dirname "$0")/.."
home=${1:-.mqvq-mp}
shift || true
beds=${*:-wrap long heldout objects translated}
workers=${MQVQ_WORKERS:-2}
status=0
rows() {  # every row of the study whose name starts with "$1-"
  python - "$1" <<'PY'
import sys
from mqvq.studies.spec import load_study
print(" ".join(f"--only {r.name}" for r in load_study("mask-position").rows if r.name.startswith(sys.argv[1] + "-")))
PY
}
for bed in $beds; do
  # shellcheck disable=SC2046
  mqvq study run mask-position --profile cpu --home "$home" --workers "$workers" --no-progress $(rows "$bed") || status=$?
done
report() {  # `report --check` exits 1 when a claim fails: that is a result to write down, not an error
  mqvq report "$@" || [ $? -eq 1 ]
}
mkdir -p reports/cpu
report mask-position --profile cpu --home "$home" --check --out reports/cpu/mask-position.md  # and its figures
report mask-position --profile cpu --home "$home" --check --out reports/cpu/mask-position.json --no-figures
python tools/mask-position-table.py reports/cpu/mask-position.json > reports/cpu/mask-position-table.md
exit "$status"
