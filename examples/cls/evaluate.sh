#!/usr/bin/env bash
# Tumour / finding classification through block and logistic-sine encryption on the shared data.
# Usage: examples/cls/evaluate.sh [WORKDIR]   (env: SIZE BLOCK EPOCHS ARCHS SETS ENCRYPTIONS SEED)
# Each set is split by patient (examples/cls/split.py, 30 % of the patients for test); cls-train
# holds out 20 % of the training patients for validation; cls-eval scores the test patients.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
M="$PY -m medtools"
W=${1:-/tmp/cls-eval}
D=${DATA:-$ROOT/../shared/data}
SIZE=${SIZE:-32} BLOCK=${BLOCK:-4} EPOCHS=${EPOCHS:-8} SEED=${SEED:-0}
ARCHS=${ARCHS:-"densenet121 xception"}
SETS=${SETS:-"brain cxr nih_cxr"}
ENCRYPTIONS=${ENCRYPTIONS:-"none block logistic-sine"}
mkdir -p "$W/results"
[ -f "$W/key" ] || $M keys gen-key "$W/key" >/dev/null

prepare() {  # $1 = set name → $W/$1/{train,test}.csv
  local set=$1
  [ -f "$W/$set/test.csv" ] && return 0
  case $set in
    brain)
      $M slices "$D/brain_tumor_progression" -o "$W/brain/slices" --modality t1 -q >/dev/null
      $M slices "$D/brats" -o "$W/brain/slices" --modality t1ce -q >/dev/null
      $M manifest "$W/brain/slices" > "$W/brain/all.csv" ;;
    cxr) mkdir -p "$W/cxr"; $M manifest "$D/cxr" > "$W/cxr/all.csv" ;;
    nih_cxr) mkdir -p "$W/nih_cxr"; $M manifest "$D/nih_cxr" > "$W/nih_cxr/all.csv" ;;
  esac
  $PY "$HERE/split.py" "$W/$set/all.csv" 0.3 "$SEED" "$W/$set" | tee "$W/$set/split.txt" >&2
}

for set in $SETS; do
  prepare "$set"
  for arch in $ARCHS; do
    for enc in $ENCRYPTIONS; do
      name="$set-$arch-$enc"
      out="$W/results/$name.json"
      [ -f "$out" ] && continue
      keyopt=(); [ "$enc" = none ] || keyopt=(--key "$W/key")
      start=$(date +%s)
      $M cls-train "$W/$set/train.csv" -o "$W/$name.safetensors" --arch "$arch" --size "$SIZE" --block-size "$BLOCK" \
        --encryption "$enc" "${keyopt[@]}" --epochs "$EPOCHS" --seed "$SEED" --device cpu --json -q > "$W/results/$name.train.json"
      $M cls-eval "$W/$set/test.csv" -m "$W/$name.safetensors" "${keyopt[@]}" --device cpu --json -q > "$out.part"
      mv "$out.part" "$out"
      echo "$name $(( $(date +%s) - start )) s" >&2
    done
  done
done
$PY "$HERE/summarise.py" "$W/results"
