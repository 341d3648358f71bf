# Sourced by the teacher scripts (imagewoof.sh, teachers_64_128.sh), from the repository root:
# a teacher trains in RUNS/teachers/NAME, and its last epoch is committed under
# benchmarks/teachers/NAME, enough to use it and to resume it on a fresh machine.

# a teacher's run folder: seeded from the committed copy where RUNS lost it (a fresh machine)
seeded() {
  local run=$1 committed=benchmarks/teachers/$(basename "$1")
  if [[ ! -d $run && -d $committed ]]; then mkdir -p "$(dirname "$run")"; cp -r "$committed" "$run"; fi
}

# the last epoch of a run, its optimizer state, config and log, into benchmarks/teachers/
saved() {
  local run=$1 dest=benchmarks/teachers/$(basename "$1") last stem n
  last=$(find "$run" -maxdepth 1 -name 'epoch_*.json' 2>/dev/null | sort | tail -1)
  [[ -n $last ]] || { echo "$run: no finished epoch yet, not saved"; return 0; }
  stem=${last%.json}; n=${stem##*_}
  rm -rf "$dest"; mkdir -p "$dest"
  cp "$run/config.json" "$run/train_log.jsonl" "$stem.json" "$stem.safetensors" "$dest/"
  [[ -f $run/optimizer_$n.safetensors ]] && cp "$run/optimizer_$n.safetensors" "$dest/"
  echo "$dest: epoch $((10#$n))"
}
