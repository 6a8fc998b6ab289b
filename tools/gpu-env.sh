# Source this at the start of a command on the GPU machine (see tools/gpu-prepare.sh):
#   . tools/gpu-env.sh && mqvq study run ablation-mask --profile mini
# It installs the carried wheels into .gpu/site (once per machine), points mqvq at the carried
# weights and data, and keeps the store in .gpu/mqvq, which stays on the machine between calls
# while it stays there. End a command with `mqvq_pack`: the store without checkpoints and token
# caches (reports need neither), as $OUT/store.tgz.part-NN in parts of $MQVQ_PACK_PART (default
# 15M, for machines that return files of limited size); here, `cat <fetched>/store.tgz.part-* | tar -xz -C DIR` and
# `mqvq report ... --home DIR` read it.
if [ ! -f .gpu/site/.installed ] || [ -n "$(find .gpu/whl -newer .gpu/site/.installed -name '*.whl')" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target .gpu/site .gpu/whl/*.whl \
    && touch .gpu/site/.installed
fi
export PYTHONPATH=$PWD:$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=$PWD/.gpu/site/bin:$PATH
mkdir -p .gpu/weights && cp -n .gpu/extra/*.pth .gpu/weights/ 2>/dev/null
export MQVQ_WEIGHTS_DIR=$PWD/.gpu/weights
[ -d .gpu/data/fashion-mnist ] && export MQVQ_FASHION_MNIST=$PWD/.gpu/data/fashion-mnist
export MQVQ_HOME=${MQVQ_HOME:-$PWD/.gpu/mqvq}
[ -f .gpu/data/commit ] && export MQVQ_GIT_COMMIT=${MQVQ_GIT_COMMIT:-$(cat .gpu/data/commit)}
mqvq() { python3 -m mqvq "$@"; }
mqvq_pack() {
  tar -C "$MQVQ_HOME" -czf - --exclude='*.pt' --exclude=./tokens --exclude=./checkpoints --exclude=./fid_stats --exclude='*.lock' . \
    | split -b "${MQVQ_PACK_PART:-15M}" -d - "${OUT:?}/store.tgz.part-"
  ls -l "$OUT"
}
