#!/usr/bin/env bash
# Issue "InfoUtil at high resolution": ImageWoof at 128 px, ConvNet-5, factor 2; with
# DATASET=imagenette the same phases on ImageNette (issue "A strong teacher at 128 px"; its
# teachers train in benchmarks/teachers_64_128.sh). Every phase is resumable (finished epochs,
# scores, sets and evaluations are skipped), so a session can run what its time allows and the
# next one continues:
#
#   bash benchmarks/imagewoof.sh teachers   # the converged (20 epochs) and early (10) teachers
#   bash benchmarks/imagewoof.sh engine-check  # bf16/compiled/early-stop maps vs fp32 512
#   bash benchmarks/imagewoof.sh maps       # default-f2's Shapley maps, 2 ranks (torchrun)
#   bash benchmarks/imagewoof.sh study      # IPC 10 on the validation split, 2 seeds
#   bash benchmarks/imagewoof.sh confirm    # the leaders at IPC 1 and 50, validation split
#   bash benchmarks/imagewoof.sh grid       # the final grid on the test set, 3 seeds
#
# A session narrows a phase by environment: STUDY_VARIANTS (the study's list), WORKERS (2),
# GRID_IPC, GRID_VARIANTS and LABEL_IPC (none: no early-label rows), CONFIRM_IPC, LEADERS,
# PRECISION (the students' autocast: fp32, or bf16 once checked).
#
# RUNS (default /work/runs) holds the teachers while they train and the study's work folders;
# benchmarks/teachers/ gets each teacher's last epoch, its log and its optimizer state (enough
# to resume) at the end of a session: `bash benchmarks/imagewoof.sh save-teachers`.
# Threads: one per process; the two teachers, or two study workers, fill a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs}
DATASET=${DATASET:-imagewoof}
export INFOUTIL_DATA=${INFOUTIL_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
INFOUTIL=${INFOUTIL:-.venv/bin/infoutil}
CONVERGED=$RUNS/teachers/$DATASET-convnet5
EARLY=$RUNS/teachers/$DATASET-convnet5-early
COMMON=(--dataset imagewoof --arch convnet5 --lr 0.01 --val-per-class 100 --compile
        --threads "${THREADS:-1}")
# the study's variants (benchmarks/study.py): baselines, the paper, the default, the controls
# of the crop's position and the utility rules. paper, default and its rules share one set of
# maps; random windows, Grad-CAM, RDED's crops and whole images need none. IDEAS (the map's own
# knobs: default-grid8, -logit, -blur, -mean, -k3, -all-sources) are run once the diagnostics
# of these rows argue for them: each that changes the game costs a set of maps of its own.
# In the order of the questions (two workers take them in turn, and a session may end first):
# does the default beat the baselines, does its map beat a random window, then the rest.
VARIANTS=(default rded random default-random-window paper default-rded-crop
          default-f1 default-gradcam random-windows default-highest default-lowest
          default-strata ${IDEAS:-})
# ImageNette (issue "A strong teacher at 128 px"): default is today's (whole images), default-f2
# the quarter at the map's argmax; then its controls, and the paper's Table 6 at factor 2
# (t6-gradnorm-shapley-cluster is default-f2's config, so it is not listed twice)
[[ $DATASET == imagenette ]] && VARIANTS=(default default-f2 rded random default-random-window
  default-rded-crop paper random-windows default-gradcam t6-rded t6-gradnorm-random-highest
  t6-gradnorm-random-cluster t6-gradnorm-shapley-highest ${IDEAS:-})
# STUDY_VARIANTS replaces the list (a session that runs only some of them)
[[ -n ${STUDY_VARIANTS:-} ]] && read -ra VARIANTS <<< "$STUDY_VARIANTS"
# maps through bf16, torch.compile and the early stop: checked against fp32 maps first
# (engine-check). One file says it, for the maps phase (a distil config) and for study.py
# (its informativeness keys as --map-engine KEY=VALUE), so the study finds the maps cached.
ENGINE_CONFIG=${ENGINE_CONFIG:-benchmarks/configs/imagewoof-engine-bf16-compiled-z1.5.yaml}
read -ra ENGINE <<< "--map-engine $("$PY" -c 'import json, sys, yaml
engine = yaml.safe_load(open(sys.argv[1]))["informativeness"]
print(" ".join(f"{k}={json.dumps(v)}" for k, v in engine.items()))' "$ENGINE_CONFIG")"
STUDY=(--dataset "$DATASET" --val-per-class 100 --candidates-per-class 100 --epochs 100
       --student convnet5 --compile --workers "${WORKERS:-2}" --data-root "$INFOUTIL_DATA"
       --precision "${PRECISION:-fp32}")  # students in bf16: runs named -bf16 (BENCHMARKS.md)

# seeded (a run folder from its committed copy) and saved (the other way)
source benchmarks/teacher_copies.sh

# every phase reads the teachers from RUNS: on a fresh machine, the committed copies
seeded "$CONVERGED"; seeded "$EARLY"
case ${1:-} in
  teachers|save-teachers)
    [[ $DATASET == imagewoof ]] || { echo "$DATASET: see teachers_64_128.sh" >&2; exit 2; } ;;&
  teachers)
    mkdir -p "$RUNS/logs"
    # planned for 40 epochs, cut to 20 after its 7th to fit the issue's CPU budget (BENCHMARKS.md)
    "$INFOUTIL" teacher train "${COMMON[@]}" --epochs 20 --reschedule --out "$CONVERGED" --resume \
      >> "$RUNS/logs/teacher.log" 2>&1 &
    "$INFOUTIL" teacher train "${COMMON[@]}" --epochs 10 --out "$EARLY" --resume \
      >> "$RUNS/logs/teacher-early.log" 2>&1 &
    wait ;;
  save-teachers)  # the last epoch of each, enough to resume and to use
    saved "$CONVERGED"; saved "$EARLY" ;;
  engine-check)  # the study's map engine against the reference maps, 5 candidates a class
    teacher=${ENGINE_TEACHER:-$EARLY} work=$RUNS/engine-check
    [[ $DATASET == imagewoof ]] || work=$RUNS/engine-check-$DATASET
    mkdir -p "$work"
    for engine in fp32 bf16-compiled bf16-compiled-z1.5; do
      [[ -f $work/$engine/manifest.json ]] && continue
      "$INFOUTIL" distill --recipe default --factor 2 --dataset "$DATASET" --teacher "$teacher" \
        --ipc 1 --candidates-per-class 5 --val-per-class 100 --threads 1 --quiet --resume \
        --config "benchmarks/configs/imagewoof-engine-$engine.yaml" --out "$work/$engine"
    done
    for engine in bf16-compiled bf16-compiled-z1.5; do
      "$PY" benchmarks/informativeness_speed.py agreement --run "$work/$engine" \
        --reference "$work/fp32" --out "benchmarks/results/${DATASET}_engine_$engine.json"
    done ;;
  maps)  # default-f2's maps (paper's and the factor-2 rules' too), over RANKS ranks of one
    # thread (2; 1 beside a teacher). The ImageWoof maps were made when the default was
    # factor 2, as $RUNS/maps-default-ipc10; the cached maps, not the folder, are what counts
    OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --nproc-per-node "${RANKS:-2}" \
      -m infoutil distill --recipe default --factor 2 --dataset "$DATASET" \
      --teacher "$CONVERGED" --ipc 10 --seed 0 --candidates-per-class 100 --val-per-class 100 \
      --threads 1 --resume --config "$ENGINE_CONFIG" --out "$RUNS/maps-$DATASET-f2-ipc10" ;;
  study)
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" --teacher "$CONVERGED" --ipc 10 \
      --seeds 2 --variants "${VARIANTS[@]}" --work "$RUNS/study-$DATASET" \
      --results "benchmarks/results/study/$DATASET" ;;
  confirm)  # the study's three leaders with rded and random (LEADERS replaces the list)
    # shellcheck disable=SC2086  # CONFIRM_IPC is a list
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" --teacher "$CONVERGED" \
      --ipc ${CONFIRM_IPC:-1 50} \
      --seeds 2 --variants ${LEADERS:-default-f1 default-rded-crop default-random-window rded random} --work "$RUNS/study-$DATASET" \
      --results "benchmarks/results/study/$DATASET" ;;
  grid)  # the test set, once the recipe is fixed; the early label teacher at IPC 1 and 10.
    # default-f1 is today's default at 128 px (the same config; its set and val students)
    # GRID_IPC, GRID_VARIANTS and LABEL_IPC narrow it to what a session's budget holds
    # (LABEL_IPC=none skips the early label teacher's rows)
    # shellcheck disable=SC2086  # the GRID_* variables are lists
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" \
      --teacher "$CONVERGED" --split test --ipc ${GRID_IPC:-10 1 50} --seeds 3 \
      --variants ${GRID_VARIANTS:-default-f1 paper rded random} --work "$RUNS/study-$DATASET" \
      --results "benchmarks/results/study/$DATASET"
    [[ ${LABEL_IPC:-} == none ]] && exit 0
    # shellcheck disable=SC2086
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" --teacher "$CONVERGED" \
      --label-teacher "$EARLY" --split test --ipc ${LABEL_IPC:-10 1} --seeds 3 \
      --variants default-f1 rded random --work "$RUNS/study-$DATASET" \
      --results "benchmarks/results/study/$DATASET" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
