#!/usr/bin/env bash
# The teachers of the Tiny-ImageNet (64 px) and ImageNette (128 px) studies, each resumable:
# run it again after a kill and every teacher continues from its last epoch.
#
#   DATA=/work/data RUNS=/work/runs bash benchmarks/teachers_64_128.sh tiny      # converged
#   DATA=/work/data RUNS=/work/runs bash benchmarks/teachers_64_128.sh tiny-early
#   DATA=/work/data RUNS=/work/runs bash benchmarks/teachers_64_128.sh nette     # converged
#   DATA=/work/data RUNS=/work/runs bash benchmarks/teachers_64_128.sh nette-early
#   RUNS=/work/runs bash benchmarks/teachers_64_128.sh save   # into benchmarks/teachers/
#
# `save` copies each teacher's last epoch, its optimizer state and its log into
# benchmarks/teachers/ (enough to use it, and to resume it); a phase whose run folder is
# missing (a fresh machine) starts from that copy.
# One thread each, compiled, bf16 autocast (checked against fp32 first:
# benchmarks/precision_check.py). The validation split is held out of every teacher: 50 a
# class on Tiny-ImageNet, 100 a class on ImageNette; each epoch is measured on a probe of it.
set -euo pipefail
: "${RUNS:?set RUNS to the runs folder}"
[[ ${1:-} == save ]] || : "${DATA:?set DATA to the data root}"
DATA=${DATA:+$(realpath "$DATA")} RUNS=$(realpath "$RUNS")
cd "$(dirname "$0")/.."
INFOUTIL=${INFOUTIL:-.venv/bin/infoutil}
common=(--threads 1 --compile --precision bf16 --data-root "$DATA")
resume_if() { [ -f "$1/config.json" ] && echo --resume || true; }
source benchmarks/teacher_copies.sh
names=(tiny-convnet4 tiny-convnet4-early imagenette-convnet5 imagenette-convnet5-early)
for name in "${names[@]}"; do seeded "$RUNS/teachers/$name"; done  # a fresh machine

case "${1:?phase: tiny, tiny-early, nette, nette-early or save}" in
tiny)
  out=$RUNS/teachers/tiny-convnet4
  "$INFOUTIL" teacher train --dataset tiny-imagenet --arch convnet4 --epochs "${EPOCHS:-30}" \
    --lr 0.01 --val-per-class 50 --probe-images 4000 --out "$out" $(resume_if "$out") \
    ${RESCHEDULE:+--reschedule} "${common[@]}" ;;
tiny-early)  # the paper's early label teacher: 10 epochs at lr 0.01
  out=$RUNS/teachers/tiny-convnet4-early
  "$INFOUTIL" teacher train --dataset tiny-imagenet --arch convnet4 --epochs 10 --lr 0.01 \
    --val-per-class 50 --probe-images 4000 --out "$out" $(resume_if "$out") "${common[@]}" ;;
nette)
  out=$RUNS/teachers/imagenette-convnet5
  "$INFOUTIL" teacher train --dataset imagenette --arch convnet5 --epochs "${EPOCHS:-30}" \
    --lr 0.01 --val-per-class 100 --out "$out" $(resume_if "$out") \
    ${RESCHEDULE:+--reschedule} "${common[@]}" ;;
nette-early)
  out=$RUNS/teachers/imagenette-convnet5-early
  "$INFOUTIL" teacher train --dataset imagenette --arch convnet5 --epochs 10 --lr 0.01 \
    --val-per-class 100 --out "$out" $(resume_if "$out") "${common[@]}" ;;
save)  # the last epoch of each, enough to resume and to use
  for name in "${names[@]}"; do
    if [[ -d $RUNS/teachers/$name ]]; then saved "$RUNS/teachers/$name"; fi
  done ;;
*) echo "unknown phase $1" >&2; exit 2 ;;
esac
