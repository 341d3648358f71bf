#!/usr/bin/env bash
# Issue "Three label regimes and 200 classes": the Tiny-ImageNet study (64 px, ConvNet-4, 200
# classes) after its teachers (benchmarks/teachers_64_128.sh tiny, tiny-early). Every phase is
# resumable (finished sets and evaluations are skipped; students keep their state per epoch):
#
#   bash benchmarks/tiny.sh check     # bf16 students against fp32: the default, 2 seeds
#   bash benchmarks/tiny.sh study     # IPC 10, validation, online KD: the rows of section 4
#   bash benchmarks/tiny.sh regimes   # the leaders under hard labels and fixed soft labels
#   bash benchmarks/tiny.sh grid      # the test set (the official val split), 3 seeds
#
# Environment: RUNS (/work/runs), INFOUTIL_DATA (the data root with tiny-imagenet-200/),
# EPOCHS (50: the cost table in BENCHMARKS.md), PRECISION (fp32 until `check` says bf16 keeps
# accuracy), WORKERS (1), STUDY_VARIANTS, LEADERS, GRID_IPC, GRID_VARIANTS.
# The pool is 100 candidates a class (20,000 images); 50 a class are held out as the validation
# split, as for the teachers. Results in benchmarks/results/study/tiny-imagenet/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs}
export INFOUTIL_DATA=${INFOUTIL_DATA:?set INFOUTIL_DATA to the data root}
PY=${PY:-.venv/bin/python}
TEACHER=$RUNS/teachers/tiny-convnet4
source benchmarks/teacher_copies.sh
seeded "$TEACHER"  # a fresh machine: the committed copy (its last epoch only)
finished() {  # finished RUN: refuse a teacher that has not reached its last epoch
  "$PY" -c 'import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
want = json.loads((run / "config.json").read_text())["epochs"]
have = max((int(f.stem.split("_")[1]) for f in run.glob("epoch_*.json")), default=0)
sys.exit(0 if have >= want else f"{run}: epoch {have} of {want}; finish it first (teachers_64_128.sh)")' "$1"
}
EPOCHS=${EPOCHS:-50}
WORK=$RUNS/study-tiny-imagenet
RESULTS=benchmarks/results/study/tiny-imagenet
study() {  # study ARGS...: one call of benchmarks/study.py with the shared settings
  "$PY" benchmarks/study.py --dataset tiny-imagenet --val-per-class 50 \
    --candidates-per-class 100 --epochs "$EPOCHS" --student convnet4 --compile \
    --workers "${WORKERS:-1}" --data-root "$INFOUTIL_DATA" --work "$WORK" --results "$RESULTS" "$@"
}
# the rows of section 4: the default, the baselines, the better coreset (both are run: they
# cost no maps), and two difficulties of whole images (CAD-Prune: the best depends on budget)
read -ra VARIANTS <<< "${STUDY_VARIANTS:-default rded random herding kcenter whole-hardest whole-quantile50}"
read -ra LEADERS <<< "${LEADERS:-default rded random}"
[[ ${1:-} =~ ^(check|study|regimes|grid)$ ]] && finished "$TEACHER"
case ${1:-} in
  check)
    for precision in fp32 bf16; do
      study --teacher "$TEACHER" --split val --ipc 10 --seeds 2 --variants default \
        --precision "$precision"
    done ;;
  study)
    study --teacher "$TEACHER" --split val --ipc 10 --seeds 2 --variants "${VARIANTS[@]}" \
      --precision "${PRECISION:-fp32}" ;;
  regimes)
    study --teacher "$TEACHER" --split val --ipc 10 --seeds 2 --variants "${LEADERS[@]}" \
      --protocols hard,static --precision "${PRECISION:-fp32}" ;;
  grid)
    # shellcheck disable=SC2086  # the GRID_* variables are lists
    study --teacher "$TEACHER" --split test --ipc ${GRID_IPC:-10 1} --seeds 3 \
      --variants ${GRID_VARIANTS:-default rded random} --protocols hard,static,rded \
      --precision "${PRECISION:-fp32}" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
