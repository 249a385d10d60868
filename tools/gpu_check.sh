#!/usr/bin/env bash
# GPU check (issue 17), ready to run in one go: under 8 minutes on one GPU.
#
#   1. training-step benchmark, float32 vs mixed_float16, under MirroredStrategy (tools/bench_gpu_train.py)
#   2. heatmap benchmark with the model on the GPU: e2e/alone for tensorflow float32 and mixed_float16,
#      and the reader ceiling (null model vs raw decode, readers 1, 2, 4) (tools/bench_heatmap.py)
#   3. a tiny end-to-end `wsiheat demo --quick`
# then prints one table. Without a GPU it runs the same steps, smaller, on CPU and says "no GPU".
#
#   tools/gpu_check.sh                 # from the repository root or anywhere
#   GPU_CHECK_OUT=/tmp/gc tools/gpu_check.sh
#
# Each step has its own time limit, and a failed step is reported in the table, not fatal.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
T0=$(date +%s)

if $PY -c "import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)" \
        >/dev/null 2>&1; then
    DEVICE="GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    TRAIN_ARGS="--steps 30 --batch-size 128 --rounds 2"
    HEAT_ARGS="--cells 4096 --rounds 3 --batch-size 256 --synthetic-size 16384"
    LIMIT_TRAIN=180; LIMIT_HEAT=210; LIMIT_DEMO=90
else
    DEVICE="no GPU"
    TRAIN_ARGS="--steps 2 --batch-size 8 --rounds 1 --backbone tiny"  # the script itself is what is tested
    HEAT_ARGS="--cells 256 --rounds 1 --batch-size 64 --synthetic-size 8192"
    LIMIT_TRAIN=300; LIMIT_HEAT=600; LIMIT_DEMO=600
fi
echo "gpu_check: $DEVICE; logs in $OUT"

step() {  # name limit command...
    local name=$1 limit=$2; shift 2
    local t=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $(( $(date +%s) - t ))" >>"$OUT/steps.txt"
    echo "  $name: exit $rc in $(( $(date +%s) - t )) s"
}
: >"$OUT/steps.txt"
step train "$LIMIT_TRAIN" $PY tools/bench_gpu_train.py $TRAIN_ARGS --json "$OUT/train.json"
step heatmap "$LIMIT_HEAT" $PY tools/bench_heatmap.py $HEAT_ARGS --backend tensorflow,tensorflow-fp16 \
    --readers 1,2,4 --seed-cells 0 --workdir "$OUT/bench" --json "$OUT/heatmap.json"
step demo "$LIMIT_DEMO" $PY -m wsiheat demo --quick -o "$OUT/demo"

$PY - "$OUT" "$DEVICE" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
from pathlib import Path

out, device, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
steps = {l.split()[0]: l.split()[1:] for l in (out / "steps.txt").read_text().splitlines() if l.strip()}
rows = []
def status(name):
    rc, s = steps.get(name, ["-", "-"])
    return f"exit {rc}, {s} s" + ("" if rc == "0" else " (timed out)" if rc == "124" else f" -> see {out}/{name}.log")
try:
    t = json.loads((out / "train.json").read_text())
    sps = t["samples_per_second"]
    for p, v in sps.items():
        rows.append(("train step, MirroredStrategy", p, f"{v:.1f} samples/s", f"{v / sps['float32']:.2f}x float32"))
except (OSError, ValueError, KeyError):
    rows.append(("train step, MirroredStrategy", "-", "failed", status("train")))
try:
    h = json.loads((out / "heatmap.json").read_text())
    for r in h["backends"]:
        rows.append((f"heatmap {r['slide']}", r["backend"], f"{r['e2e']:.1f} w/s e2e, {r['alone']:.1f} alone",
                     f"e2e/alone {r['r_alone']:.2f}, {1e5 / r['e2e'] / 60:.1f} min/100k"))
    for r in h["ceiling"]:
        rows.append((f"reader ceiling {r['slide']}", f"readers {r['readers']}",
                     f"null {r['null']:.0f} w/s ({r['null'] * r['mpix_per_window']:.1f} MPix/s)",
                     f"raw decode {r['raw']:.0f} w/s, null/raw {r['null_raw']:.2f}"))
except (OSError, ValueError, KeyError):
    rows.append(("heatmap benchmark", "-", "failed", status("heatmap")))
demo_ok = steps.get("demo", ["1"])[0] == "0"
rows.append(("demo --quick", "end to end", "ok" if demo_ok else "failed", status("demo")))
print(f"\ngpu_check: {device}; {seconds} s in all")
w = [max(len(r[i]) for r in rows) for i in range(4)]
for r in rows:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
EOF
