# Source this at the start of a command on the GPU machine (see tools/gpu-prepare.sh):
#   . tools/gpu-env.sh && mqvq study run ablation-mask --profile mini
# It installs the carried wheels into .gpu/site (once per machine), points mqvq at the carried
# weights and data, and keeps the store in .gpu/mqvq (a study cut off by a time limit resumes in
# the next command as long as the folder is still there). End a command with `mqvq_pack DIR`: the
# store without checkpoints and token caches (reports need neither), as DIR/store.tgz.part-NN in
# parts of $MQVQ_PACK_PART (default 15M; set it to what the machine lets you copy back in one file).
# Back on a machine with the checkout, `cat DIR/store.tgz.part-* | tar -xz -C HOME` and
# `mqvq report ... --home HOME` read it.
if [ ! -f .gpu/site/.installed ] || [ -n "$(find .gpu/whl -newer .gpu/site/.installed -name '*.whl')" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target .gpu/site .gpu/whl/*.whl \
    && touch .gpu/site/.installed
fi
export PYTHONPATH=$PWD:$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=$PWD/.gpu/site/bin:$PATH
mkdir -p .gpu/weights && cp -n .gpu/extra/*.pth .gpu/weights/ 2>/dev/null
export MQVQ_WEIGHTS_DIR=$PWD/.gpu/weights
export MQVQ_OFFLINE=${MQVQ_OFFLINE:-1}  # an offline machine: a missing weights file is named, not tried
[ -d .gpu/data/fashion-mnist ] && export MQVQ_FASHION_MNIST=$PWD/.gpu/data/fashion-mnist
export MQVQ_HOME=${MQVQ_HOME:-$PWD/.gpu/mqvq}
[ -f .gpu/data/commit ] && export MQVQ_GIT_COMMIT=${MQVQ_GIT_COMMIT:-$(cat .gpu/data/commit)}
mqvq() { python3 -m mqvq "$@"; }
mqvq_pack() {
  local dir=${1:?usage: mqvq_pack DIR (the folder to write store.tgz.part-NN into)}
  mkdir -p "$dir"
  tar -C "$MQVQ_HOME" -czf - --exclude='*.pt' --exclude=./tokens --exclude=./checkpoints --exclude=./fid_stats --exclude='*.lock' . \
    | split -b "${MQVQ_PACK_PART:-15M}" -d - "$dir/store.tgz.part-"
  ls -l "$dir"
}
