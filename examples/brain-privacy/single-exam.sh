#!/bin/sh
# Protection on data with ONE exam per patient (e.g. shared/data/brats: 2 patients).
#
#   sh single-exam.sh                    # DATA=../../../shared/data/brats WORK=work-brats
#
# Without a second exam, re-identification across visits (and so the transfer and adaptive
# attackers of the Makefile) cannot be measured honestly. What this measures instead:
#   - utility on a HELD-OUT patient: the segmenter is trained on the first patient only and
#     evaluated on the others, raw vs protected (Dice WT/TC/ET, PSNR, SSIM, L∞);
#   - the white-box attacker (and a second one, B) on protected slices, trained with a random
#     split of slices of the same scans: this flatters the attacker and is labelled as such.
set -eu
MEDTOOLS=${MEDTOOLS:-medtools}
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../../../shared/data/brats}
WORK=${WORK:-work-brats}
SIZE=${SIZE:-128}
MODALITIES=${MODALITIES:-flair,t1ce}
EPS=${EPS:-0.05}
OBJECTIVE=${OBJECTIVE:-signature}
SEG_EPOCHS=${SEG_EPOCHS:-8}
REID_EPOCHS=${REID_EPOCHS:-8}
STEPS=${STEPS:-20}
Q=-q

mkdir -p "$WORK"
[ -s "$WORK/cases.csv" ] || $MEDTOOLS manifest "$DATA" -o "$WORK/cases.csv" > /dev/null
head -n 2 "$WORK/cases.csv" > "$WORK/train.csv"                                   # first patient
{ head -n 1 "$WORK/cases.csv"; tail -n +3 "$WORK/cases.csv"; } > "$WORK/test.csv"  # the others
common="--size $SIZE --modalities $MODALITIES $Q"
[ -s "$WORK/seg.safetensors" ] || $MEDTOOLS seg-train "$WORK/train.csv" -o "$WORK/seg.safetensors" --encoder resnet18 --epochs "$SEG_EPOCHS" --steps-per-epoch "$STEPS" --val-fraction 0 $common --json > "$WORK/seg-train.json"
[ -s "$WORK/attacker-A.safetensors" ] || $MEDTOOLS reid-train "$WORK/cases.csv" -o "$WORK/attacker-A.safetensors" --arch resnet18 --seed 0 --epochs "$REID_EPOCHS" --steps-per-epoch "$STEPS" -b 16 $common --json > "$WORK/attacker-A.json"
[ -s "$WORK/attacker-B.safetensors" ] || $MEDTOOLS reid-train "$WORK/cases.csv" -o "$WORK/attacker-B.safetensors" --arch resnet10t --seed 1 --epochs "$REID_EPOCHS" --steps-per-epoch "$STEPS" -b 16 $common --json > "$WORK/attacker-B.json"
cell="$WORK/$OBJECTIVE-$EPS"
mkdir -p "$cell"
$MEDTOOLS protect "$WORK/test.csv" --attacker "$WORK/attacker-A.safetensors" --utility "$WORK/seg.safetensors" --eps "$EPS" --objective "$OBJECTIVE" -o "$cell/protected" --overwrite --json $Q > "$cell/protect.jsonl"
$MEDTOOLS manifest "$cell/protected" -o "$cell/protected.csv" > /dev/null
for who in A B; do
  $MEDTOOLS reid-eval "$WORK/test.csv" -m "$WORK/attacker-$who.safetensors" --json $Q > "$cell/raw-reid-$who.json"
  $MEDTOOLS reid-eval "$cell/protected.csv" -m "$WORK/attacker-$who.safetensors" --json $Q > "$cell/reid-$who.json"
done
$MEDTOOLS segment "$WORK/test.csv" -m "$WORK/seg.safetensors" -o "$cell/pred-raw" --overwrite $Q > /dev/null
$MEDTOOLS segment "$cell/protected.csv" -m "$WORK/seg.safetensors" -o "$cell/pred" --overwrite $Q > /dev/null
$MEDTOOLS seg-eval "$cell/pred-raw" "$WORK/test.csv" --json $Q > "$cell/raw-seg-eval.json"
$MEDTOOLS seg-eval "$cell/pred" "$WORK/test.csv" --json $Q > "$cell/seg-eval.json"
$PYTHON summarise.py --single-exam --work "$WORK" --cell "$cell" --objective "$OBJECTIVE" --eps "$EPS" --print
