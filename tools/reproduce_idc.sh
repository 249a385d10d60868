#!/usr/bin/env bash
# Reproduce the "Measured accuracy on real tissue" tables of the README, step by step, with the
# wall-clock time of each step.
#
# Usage: bash tools/reproduce_idc.sh [WORK_DIR] [IDC_DIR]
#   WORK_DIR  where everything is written (default: idc-run)
#   IDC_DIR   the labeled IDC patches (default: ../shared/data/idc beside this checkout)
#
# About 4.5 hours on a 2-core CPU (training is most of it); ImageNet weights must be cached
# (`wsiheat weights`). Patients are split 80/20 with seed 0; the 41 test patients are never seen
# in training; validation uses 15 % of the training patients (seed 0) in every stage.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-idc-run}"
IDC="${2:-$HERE/../shared/data/idc}"
[ -d "$IDC" ] || { echo "reproduce_idc.sh: $IDC: no such folder (give IDC_DIR)" >&2; exit 2; }
IDC="$(cd "$IDC" && pwd)"
mkdir -p "$WORK"
cd "$WORK"

step() {  # step NAME COMMAND...: run, print the wall time
  local name="$1"; shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@"
  echo "== $name: $((SECONDS - t0)) s"
}

COMMON=(--batch-size 32 --val-fraction 0.15 --seed 0)

# data: the same patients at 160 and 224 px (the 50 px patches resized)
for w in 160 224 299; do
  step "import train $w" wsiheat import "$IDC" -o "idc_train$w.h5" --split train --window $w
  step "import test $w" wsiheat import "$IDC" -o "idc_test$w.h5" --split test --window $w
done

# 160 px: stage 1 (top blocks), stage 2 (from mixed5), stage 3 (from mixed2, best epoch by val AUC)
step "train 160 stage 1" wsiheat train idc_train160.h5 -o idc160.keras --trainable-from mixed7 \
  --epochs 5 --steps-per-epoch 120 --lr 1e-4 --patience 4 "${COMMON[@]}"
step "train 160 stage 2" wsiheat train idc_train160.h5 -o idc160_stage2.keras --weights idc160.keras \
  --trainable-from mixed5 --epochs 4 --steps-per-epoch 120 --lr 5e-5 --patience 4 "${COMMON[@]}"
step "train 160 stage 3" wsiheat train idc_train160.h5 -o idc160_stage3.keras --weights idc160_stage2.keras \
  --trainable-from mixed2 --epochs 8 --steps-per-epoch 150 --lr 3e-5 --lr-decay 0.85 --patience 8 \
  --monitor val_auc "${COMMON[@]}"
# larger windows, continuing from the previous model (the weights do not depend on the window size)
step "train 224" wsiheat train idc_train224.h5 -o idc224.keras --weights idc160_stage3.keras \
  --trainable-from mixed2 --epochs 5 --steps-per-epoch 120 --lr 2e-5 --lr-decay 0.85 --patience 5 \
  --monitor val_auc "${COMMON[@]}"

# 299 px (InceptionV3's own input size), continuing from the 224 px model, in bfloat16 (1.5x faster on
# CPUs with AVX512-BF16; the saved weights are float32)
step "train 299" wsiheat train idc_train299.h5 -o idc299.keras --weights idc224.keras \
  --trainable-from mixed2 --epochs 4 --steps-per-epoch 120 --lr 1.5e-5 --lr-decay 0.85 --patience 4 \
  --monitor val_auc --precision mixed_bfloat16 "${COMMON[@]}"

# patch level on the held-out patients
for m in idc160_stage3:160 idc224:224 idc299:299; do
  step "evaluate ${m%%:*}" wsiheat evaluate patches -m "${m%%:*}.keras" -p "idc_test${m##*:}.h5" \
    -o "eval_${m%%:*}_patches" --tta
done

MPP="$(python3 -c 'print(4 / 4.48)')"  # level-0 µm/px of the scale-4.48 mosaics (50 px patches -> 224 px cells)

# post-processing check on VALIDATION patients only (the 25 the model recorded), never the test ones
step "validation mosaics" wsiheat mosaic "$IDC" -o mosaics_val --slides 12 --normal 4 --val-patients-of idc224.keras \
  --seed 5 --scale 4.48 --grid 24x24
step "validation heatmaps" wsiheat heatmap mosaics_val/val_*[0-9].tif -m idc224.keras --out-dir hm_val
step "tune (validation)" wsiheat evaluate tune hm_val mosaics_val/*_mask.tif --mpp "$MPP" --level 3 -o tune_val
# 24 more validation mosaics, then a lesion scorer fitted on all 36 (validation patients only)
step "validation mosaics (24)" wsiheat mosaic "$IDC" -o mosaics_val24 --slides 24 --normal 8 \
  --val-patients-of idc224.keras --seed 13 --scale 4.48 --grid 24x24
step "validation heatmaps (24)" wsiheat heatmap mosaics_val24/val_*[0-9].tif -m idc224.keras --out-dir hm_val24

pool() {  # pool OUT PREFIX:HEATMAPS:MOSAICS...: one folder of links (names prefixed) for evaluate
  local out="$1"; shift
  rm -rf "$out"; mkdir -p "$out/hm" "$out/gt"
  echo "slide,label" > "$out/labels.csv"
  local spec pre hm mo f
  for spec in "$@"; do
    IFS=: read -r pre hm mo <<< "$spec"
    for f in "$hm"/*.h5; do ln -s "$PWD/$f" "$out/hm/${pre}_$(basename "$f")"; done
    for f in "$mo"/*_mask.tif; do ln -s "$PWD/$f" "$out/gt/${pre}_$(basename "$f")"; done
    tail -n +2 "$mo/labels.csv" | sed "s/^/${pre}_/" >> "$out/labels.csv"
  done
}
pool val36 a:hm_val:mosaics_val b:hm_val24:mosaics_val24
step "fit lesion scorer (validation)" wsiheat evaluate fit-scorer val36/hm val36/gt -r val36/labels.csv \
  --mpp "$MPP" --level 3 -o lesion_scorer_val36.json

# slide and lesion level: 12 mosaics of held-out patients (4 without tumor), cells = the model's window
step "mosaics" wsiheat mosaic "$IDC" -o mosaics_test --slides 12 --normal 4 --split test --seed 5 \
  --scale 4.48 --grid 24x24
step "heatmaps" wsiheat heatmap mosaics_test/test_*[0-9].tif -m idc224.keras --out-dir hm
step "slide AUC (max)" wsiheat evaluate slides hm -r mosaics_test/labels.csv -o eval_slides
step "slide AUC (top-10 mean)" wsiheat evaluate slides hm -r mosaics_test/labels.csv -o eval_slides_topk \
  --score topk_mean
step "lesion FROC" wsiheat evaluate froc hm mosaics_test/*_mask.tif --mpp "$MPP" --level 3 -o eval_froc

# a second, larger held-out set (24 slides, 8 without tumor): less noisy slide AUC and FROC
step "mosaics (24)" wsiheat mosaic "$IDC" -o mosaics_test24 --slides 24 --normal 8 --split test --seed 11 \
  --scale 4.48 --grid 24x24
step "heatmaps (24)" wsiheat heatmap mosaics_test24/test_*[0-9].tif -m idc224.keras --out-dir hm24
step "slide AUC (24)" wsiheat evaluate slides hm24 -r mosaics_test24/labels.csv -o eval24_slides
step "lesion FROC (24)" wsiheat evaluate froc hm24 mosaics_test24/*_mask.tif --mpp "$MPP" --level 3 -o eval24_froc

# the same test slides with the lesion scorer (fitted on validation mosaics only) instead of smoothing
step "heatmaps, scorer" wsiheat heatmap mosaics_test/test_*[0-9].tif -m idc224.keras --out-dir hm_sc \
  --lesion-scorer lesion_scorer_val36.json
step "slide AUC, scorer" wsiheat evaluate slides hm_sc -r mosaics_test/labels.csv -o eval_sc_slides
step "lesion FROC, scorer" wsiheat evaluate froc hm_sc mosaics_test/*_mask.tif --mpp "$MPP" --level 3 -o eval_sc_froc
step "heatmaps (24), scorer" wsiheat heatmap mosaics_test24/test_*[0-9].tif -m idc224.keras --out-dir hm24_sc \
  --lesion-scorer lesion_scorer_val36.json
step "slide AUC (24), scorer" wsiheat evaluate slides hm24_sc -r mosaics_test24/labels.csv -o eval24_sc_slides
step "lesion FROC (24), scorer" wsiheat evaluate froc hm24_sc mosaics_test24/*_mask.tif --mpp "$MPP" --level 3 \
  -o eval24_sc_froc
# both test sets pooled (36 slides): the default smoothing and the scorer side by side, from the raw maps
pool test36 a:hm:mosaics_test b:hm24:mosaics_test24
step "pooled test (36)" wsiheat evaluate tune test36/hm test36/gt -r test36/labels.csv --mpp "$MPP" --level 3 \
  --smooth 0.75 --lesion-threshold 0.5 --nms-radius 4 --lesion-scorer lesion_scorer_val36.json -o tune_test36

# the 299 px model: the same layouts (same seeds) at scale 5.98 (50 px patches -> 299 px cells)
MPP299="$(python3 -c 'print(4 / 5.98)')"
for spec in "val:12:4:5" "val24:24:8:13"; do
  IFS=: read -r name n k seed <<< "$spec"
  step "mosaics 299 $name" wsiheat mosaic "$IDC" -o "m299_$name" --slides "$n" --normal "$k" \
    --val-patients-of idc224.keras --seed "$seed" --scale 5.98 --grid 24x24
  step "heatmaps 299 $name" wsiheat heatmap "m299_$name"/val_*[0-9].tif -m idc299.keras --out-dir "hm299_$name"
done
pool val36_299 a:hm299_val:m299_val b:hm299_val24:m299_val24
step "fit lesion scorer 299" wsiheat evaluate fit-scorer val36_299/hm val36_299/gt -r val36_299/labels.csv \
  --mpp "$MPP299" --level 3 -o lesion_scorer299_val36.json
# test48: the larger set fixed in docs/experiments/idc-test84-preregistration.md before it existed
for spec in "test:12:4:5" "test24:24:8:11" "test48:48:16:23"; do
  IFS=: read -r name n k seed <<< "$spec"
  step "mosaics 299 $name" wsiheat mosaic "$IDC" -o "m299_$name" --slides "$n" --normal "$k" --split test \
    --seed "$seed" --scale 5.98 --grid 24x24
  step "heatmaps 299 $name" wsiheat heatmap "m299_$name"/test_*[0-9].tif -m idc299.keras --out-dir "hm299_$name" \
    --lesion-scorer lesion_scorer299_val36.json
  step "slide AUC 299 $name" wsiheat evaluate slides "hm299_$name" -r "m299_$name/labels.csv" -o "eval299_${name}_slides"
  step "lesion FROC 299 $name" wsiheat evaluate froc "hm299_$name" "m299_$name"/*_mask.tif --mpp "$MPP299" \
    --level 3 -o "eval299_${name}_froc"
done
pool test36_299 a:hm299_test:m299_test b:hm299_test24:m299_test24
step "pooled test 299 (36)" wsiheat evaluate tune test36_299/hm test36_299/gt -r test36_299/labels.csv \
  --mpp "$MPP299" --level 3 --smooth 0.75 --lesion-threshold 0.5 --nms-radius 4 \
  --lesion-scorer lesion_scorer299_val36.json -o tune299_test36
# the pre-registered decision figure: all 84 test mosaics pooled
pool test84_299 a:hm299_test:m299_test b:hm299_test24:m299_test24 c:hm299_test48:m299_test48
step "pooled test 299 (84)" wsiheat evaluate tune test84_299/hm test84_299/gt -r test84_299/labels.csv \
  --mpp "$MPP299" --level 3 --smooth 0.75 --lesion-threshold 0.5 --nms-radius 4 \
  --lesion-scorer lesion_scorer299_val36.json -o tune299_test84

# every figure above, read back from the reports, as markdown tables to compare with the README
python3 "$HERE/tools/idc_table.py" .
