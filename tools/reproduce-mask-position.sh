#!/usr/bin/env bash
# The mask-position study (importance or position? stage 1 only, resumable) and its report, one data set
# per command so that each fits a sitting on a 2-core CPU with two workers (`mqvq study plan` says how long):
#   bash tools/reproduce-mask-position.sh [HOME] [BED ...]     (default home ./.mqvq-mp; default beds: all of them)
# In the background: nohup bash tools/reproduce-mask-position.sh > mp.log 2>&1 &
#   wrap               textured objects on a torus (position says nothing), 8 selectors x 5 seeds            ~70 min
#   heldout            top-left quadrant held out, 5 selectors x 3 seeds                                     ~25 min
#   objects            textured objects on plain backgrounds, 8 selectors x 3 seeds                          ~40 min
#   long               the torus bed at 800 steps, 6 selectors x 3 seeds                                     ~75 min
#   translated         translated Fashion-MNIST 48 px (12 x 12 tokens): blind, centre, damage-mixed and
#                      straight-through, 5 seeds                                                            ~65 min
#   translated-scorers the same data: the oracle, the paper's two gain scorers and the entropy rule, 5 seeds ~65 min
set -euo pipefail
cd "$(dirname "$0")/.."
home=${1:-.mqvq-mp}
shift || true
beds=${*:-wrap long heldout objects translated translated-scorers}
workers=${MQVQ_WORKERS:-2}
status=0
rows() {  # the bed's rows: every row whose name starts with "$1-", but translated Fashion-MNIST (48 px, each
  # step 2.25 times a 32 px one) is split in two so that each command fits two hours
  python - "$1" <<'PY'
import sys
from mqvq.studies.spec import load_study
bed = sys.argv[1]
scorers = ["translated-oracle", "translated-mlp", "translated-conv", "translated-entropy"]
names = [r.name for r in load_study("mask-position").rows]
if bed == "translated-scorers":
    chosen = scorers
else:
    chosen = [n for n in names if n.startswith(bed + "-") and not (bed == "translated" and n in scorers)]
if not chosen:
    sys.exit(f"unknown bed {bed!r}: beds are wrap, long, heldout, objects, translated and translated-scorers.")
print(" ".join(f"--only {n}" for n in chosen))
PY
}
for bed in $beds; do
  only=$(rows "$bed") || exit 2
  # shellcheck disable=SC2086
  mqvq study run mask-position --profile cpu --home "$home" --workers "$workers" --no-progress $only || status=$?
done
report() {  # `report --check` exits 1 when a claim fails: that is a result to write down, not an error
  mqvq report "$@" || [ $? -eq 1 ]
}
mkdir -p reports/cpu
report mask-position --profile cpu --home "$home" --check --out reports/cpu/mask-position.md  # and its figures
report mask-position --profile cpu --home "$home" --check --out reports/cpu/mask-position.json --no-figures
python tools/mask-position-table.py reports/cpu/mask-position.json > reports/cpu/mask-position-table.md
exit "$status"
