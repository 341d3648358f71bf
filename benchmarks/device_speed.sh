#!/usr/bin/env bash
# The GPU check of issue "InfoUtil at RDED's speed", in one device call (a few minutes):
#  1. rded (defaults), rded at batch 4096, then InfoUtil's GPU config, one after the other on
#     the same CIFAR-10 IPC 10 pool, each in a fresh process with a fresh cache;
#  2. today's unaccelerated maps on the same shortlist, and the crop agreement with them;
#  3. the teacher's masked-forward table and the ResNet-18 projection's per-image costs.
# Results land in $OUT. It needs, beside the working tree (both ignored by git, so carry them):
#   .device-data/cifar10/  python benchmarks/subset_data.py --source $INFOUTIL_DATA/cifar10 \
#                              --out .device-data/cifar10   (1,000 + 100 images a class, 11 MB)
#   .whl/                  the wheels the GPU image lacks (pydantic and its needs;
#                          BENCHMARKS.md gives the pip download line)
# On a CPU it runs too, for a check of the script:
#   DEVICE=cpu THREADS=1 IPC=2 POOL=60 FORWARD_IMAGES=256 PROJECTION_BATCH=4
set -euo pipefail
OUT=${OUT:?set OUT to the folder for the results}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} THREADS=${THREADS:-16} IPC=${IPC:-10} POOL=${POOL:-300}
FORWARD_IMAGES=${FORWARD_IMAGES:-16384} PROJECTION_BATCH=${PROJECTION_BATCH:-256}
if [ -d .whl ] && ! "$PY" -c "import pydantic" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" INFOUTIL_DATA="$PWD/.device-data"
export PYTHONUNBUFFERED=1
TEACHER=benchmarks/teachers/cifar10-convnet3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# the decoded archive once, so that every timed run measures distillation alone
INFOUTIL_CACHE="$WORK/decoded" "$PY" -c "from infoutil.data import load_dataset; \
load_dataset('cifar10', 'train')"
DECODED=$(ls "$WORK"/decoded/*.npz)

"$PY" benchmarks/distill_resources.py speed --teacher "$TEACHER" --dataset cifar10 \
    --ipc "$IPC" --pool "$POOL" --config benchmarks/configs/informativeness-fast-gpu.yaml \
    --rded-configs benchmarks/configs/rded-batch4096.yaml --decoded "$DECODED" \
    --device "$DEVICE" --threads "$THREADS" --keep "$WORK/runs" --out "$OUT/speed.json"

INFOUTIL_CACHE="$WORK/ref-cache" "$PY" -m infoutil distill --method infoutil --dataset cifar10 \
    --teacher "$TEACHER" --ipc "$IPC" --candidates-per-class "$POOL" --factor 2 \
    --val-per-class 500 -c benchmarks/configs/informativeness-reference-shortlist.yaml \
    --out "$WORK/reference" --device "$DEVICE" --threads "$THREADS" -q
cp "$WORK/reference/run_stats.json" "$OUT/reference_run_stats.json"
"$PY" benchmarks/informativeness_speed.py agreement --run "$WORK/runs/infoutil$POOL" \
    --reference "$WORK/reference" --out "$OUT/agreement.json"

"$PY" benchmarks/informativeness_speed.py forwards --teacher "$TEACHER" --device "$DEVICE" \
    --threads "$THREADS" --images "$FORWARD_IMAGES" --batches 512 4096 16384 --out "$OUT/forwards.json"
"$PY" benchmarks/informativeness_speed.py projection --device "$DEVICE" --threads "$THREADS" \
    --batch "$PROJECTION_BATCH" --out "$OUT/projection.json"
