"""Training-step benchmark: float32 against mixed_float16, under tf.distribute.MirroredStrategy.

The wsiheat model (2-tower InceptionV3 at 80 px, random init, the builder of
``wsiheat train``) trained with Adam on in-memory synthetic batches, so the
figure is the accelerator's (no input pipeline). Variants alternate over
rounds; the best round of each is kept. Runs on CPU too (MirroredStrategy
then uses the CPU), so ``tools/gpu_check.sh`` can be tried anywhere.

    python tools/bench_gpu_train.py --steps 30 --batch-size 128
    python tools/bench_gpu_train.py --steps 2 --batch-size 8 --rounds 1 --json out.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(policy: str, steps: int, batch: int, towers: int, window: int, backbone: str) -> float:
    import keras
    import numpy as np
    import tensorflow as tf

    from wsiheat.models.model import build_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        strategy = tf.distribute.MirroredStrategy()
        with strategy.scope():
            model = build_model(towers, window, weights="none", backbone=backbone)
            model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy", jit_compile=False)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch, towers, window, window, 3), dtype=np.uint8)
        y = rng.integers(0, 2, (batch, 1)).astype(np.float32)
        ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # build + trace, not timed
        t = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        return steps * batch / (time.perf_counter() - t)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--towers", type=int, default=2)
    ap.add_argument("--window", type=int, default=80)
    ap.add_argument("--backbone", default="inception_v3", choices=["inception_v3", "tiny"])
    ap.add_argument("--policies", default="float32,mixed_float16")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else "no GPU (CPU)"
    print(f"tensorflow {tf.__version__}, {device}; MirroredStrategy, batch {args.batch_size}, {args.steps} steps, "
          f"best of {args.rounds} rounds", flush=True)
    policies = args.policies.split(",")
    best = {p: 0.0 for p in policies}
    for r in range(args.rounds):
        for p in policies:
            best[p] = max(best[p], run(p, args.steps, args.batch_size, args.towers, args.window, args.backbone))
            print(f"  round {r + 1}: {p} {best[p]:.1f} samples/s", flush=True)
    for p in policies:
        print(f"train step {p:<14} {best[p]:>9.1f} samples/s  ({best[p] / best[policies[0]]:.2f}x {policies[0]})")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "samples_per_second": best, "batch": args.batch_size}))


if __name__ == "__main__":
    main()
