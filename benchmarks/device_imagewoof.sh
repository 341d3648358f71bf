#!/usr/bin/env bash
# Issue "InfoUtil at high resolution", on a GPU: the ImageWoof sets the CPU distilled, evaluated
# at the paper's 300 epochs, 3 ConvNet-5 students each, on the test set, in one device call. The
# CPU distils (benchmarks/imagewoof.sh grid); only the students' training moves to the GPU.
# Results land in $OUT/<set>/results.json. It needs, beside the working tree (carry them):
#   .device-data/imagewoof/  python benchmarks/subset_data.py --source $INFOUTIL_DATA/imagewoof \
#                              --out .device-data/imagewoof --train-per-class 1 \
#                              --test-per-class 0 --test-split val      (the whole test set, 34 MB)
#   .device-sets/<name>/     the distilled sets to evaluate, whole (their checksums are checked);
#                            an InfoUtil set of 100 candidates a class is a few MB, so split the
#                            sets over calls to stay under the 64 MiB upload
#   .whl/                    pydantic and its needs (BENCHMARKS.md, *A GPU check, prepared*)
# The teachers that relabel online are the committed ones: a set whose name holds
# "labels-early" is relabelled by the early teacher, every other by the converged one.
# On a CPU it runs too, for a check of the script: DEVICE=cpu EPOCHS=1 SEEDS=1
# ImageNette the same way (issue "A strong teacher at 128 px"): its data made with
#   python benchmarks/subset_data.py --source DATA/imagenette --out .device-data/imagenette \
#       --train-per-class 1 --test-per-class 0 --test-split val
# and CONVERGED=benchmarks/teachers/imagenette-convnet5 EARLY=...-early set before the call.
set -euo pipefail
OUT=${OUT:?set OUT to the folder for the results}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} EPOCHS=${EPOCHS:-300} SEEDS=${SEEDS:-3}
CONVERGED=${CONVERGED:-benchmarks/teachers/imagewoof-convnet5}
EARLY=${EARLY:-benchmarks/teachers/imagewoof-convnet5-early}
if [ -d .whl ] && ! "$PY" -c "import pydantic" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" INFOUTIL_DATA="$PWD/.device-data"
export PYTHONUNBUFFERED=1 INFOUTIL_CACHE=${INFOUTIL_CACHE:-$(mktemp -d)}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
shopt -s nullglob
sets=(.device-sets/*/)
[ ${#sets[@]} -gt 0 ] || { echo "no distilled sets under .device-sets/" >&2; exit 2; }
for set in "${sets[@]}"; do
    name=$(basename "$set")
    teacher=$CONVERGED
    [[ $name == *labels-early* ]] && teacher=$EARLY
    start=$(date +%s)
    "$PY" -m infoutil evaluate "$set" --split test --epochs "$EPOCHS" --seeds "$SEEDS" \
        --student convnet5 \
        --teacher "$teacher" --device "$DEVICE" -q --out "$OUT/$name"
    echo "$name: $(( $(date +%s) - start )) s"
done
