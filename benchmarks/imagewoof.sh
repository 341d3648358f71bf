#!/usr/bin/env bash
# Issue "InfoUtil at high resolution": ImageWoof at 128 px, ConvNet-5, factor 2. Every phase is
# resumable (finished epochs, scores, sets and evaluations are skipped), so a session can run
# what its time allows and the next one continues:
#
#   bash benchmarks/imagewoof.sh teachers   # the converged (40 epochs) and early (10) teachers
#   bash benchmarks/imagewoof.sh study      # IPC 10 on the validation split, 2 seeds
#   bash benchmarks/imagewoof.sh confirm    # the leaders at IPC 1 and 50, validation split
#   bash benchmarks/imagewoof.sh grid       # the final grid on the test set, 3 seeds
#
# RUNS (default /work/runs) holds the teachers while they train and the study's work folders;
# benchmarks/teachers/ gets each teacher's last epoch, its log and its optimizer state (enough
# to resume) at the end of a session: `bash benchmarks/imagewoof.sh save-teachers`.
# Threads: one per process; the two teachers, or two study workers, fill a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs}
export INFOUTIL_DATA=${INFOUTIL_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
INFOUTIL=${INFOUTIL:-.venv/bin/infoutil}
CONVERGED=$RUNS/teachers/imagewoof-convnet5
EARLY=$RUNS/teachers/imagewoof-convnet5-early
COMMON=(--dataset imagewoof --arch convnet5 --lr 0.01 --val-per-class 100 --compile --threads 1)
# the study's variants (benchmarks/study.py): baselines, the paper, the default and its controls
VARIANTS=(rded random random-windows paper default
          default-random-window default-gradcam default-rded-crop default-f1
          default-highest default-lowest default-strata default-badge
          default-k3 default-all-sources default-blur)
# maps through bf16 and torch.compile: faster on this CPU; checked against fp32 maps first
ENGINE=(--map-engine precision=bf16 compile=true)
STUDY=(--dataset imagewoof --val-per-class 100 --candidates-per-class 100 --epochs 100
       --compile --workers 2 --data-root "$INFOUTIL_DATA")

# a teacher's run folder: where it trains (RUNS), seeded from the committed copy if RUNS lost it
seeded() {
  local run=$1 committed=benchmarks/teachers/$(basename "$1")
  if [[ ! -d $run && -d $committed ]]; then mkdir -p "$(dirname "$run")"; cp -r "$committed" "$run"; fi
}

case ${1:-} in
  teachers)
    seeded "$CONVERGED"; seeded "$EARLY"
    mkdir -p "$RUNS/logs"
    "$INFOUTIL" teacher train "${COMMON[@]}" --epochs 40 --out "$CONVERGED" --resume \
      >> "$RUNS/logs/teacher.log" 2>&1 &
    "$INFOUTIL" teacher train "${COMMON[@]}" --epochs 10 --out "$EARLY" --resume \
      >> "$RUNS/logs/teacher-early.log" 2>&1 &
    wait ;;
  save-teachers)  # the last epoch of each, enough to resume and to use
    for run in "$CONVERGED" "$EARLY"; do
      dest=benchmarks/teachers/$(basename "$run")
      last=$(ls "$run"/epoch_*.json | sort | tail -1); stem=${last%.json}; n=${stem##*_}
      rm -rf "$dest"; mkdir -p "$dest"
      cp "$run/config.json" "$run/train_log.jsonl" "$stem.json" "$stem.safetensors" "$dest/"
      [[ -f $run/optimizer_$n.safetensors ]] && cp "$run/optimizer_$n.safetensors" "$dest/"
      echo "$dest: epoch $((10#$n))"
    done ;;
  study)
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" --teacher "$CONVERGED" --ipc 10 \
      --seeds 2 --variants "${VARIANTS[@]}" --work "$RUNS/study-imagewoof" \
      --results benchmarks/results/study/imagewoof ;;
  confirm)  # the leaders (set LEADERS to the study's top two or three, with rded and random)
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" --teacher "$CONVERGED" --ipc 1 50 \
      --seeds 2 --variants ${LEADERS:-default rded random} --work "$RUNS/study-imagewoof" \
      --results benchmarks/results/study/imagewoof ;;
  grid)  # the test set, once the recipe is fixed; the early label teacher at IPC 1 and 10
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" \
      --teacher "$CONVERGED" --split test --ipc 1 10 50 --seeds 3 \
      --variants default paper rded random --work "$RUNS/study-imagewoof" \
      --results benchmarks/results/study/imagewoof
    "$PY" benchmarks/study.py "${STUDY[@]}" "${ENGINE[@]}" --teacher "$CONVERGED" \
      --label-teacher "$EARLY" --split test --ipc 1 10 --seeds 3 \
      --variants default rded random --work "$RUNS/study-imagewoof" \
      --results benchmarks/results/study/imagewoof ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
