"""Benchmark: training and inference speed of float32 against mixed_bfloat16 (``wsiheat train --precision``).

Builds the real model (InceptionV3 towers, random init, trainable from a given
block as in the IDC recipe) under each Keras dtype policy in turn and times
training steps (``train_on_batch``, batches already in memory) and inference
(``predict_on_batch``). Rounds alternate (float32, bf16, float32, bf16, ...)
and the best of each is kept, so a busy machine affects both alike. Prints
samples/s and the ratio bf16 / float32 for both.

bf16 only pays on CPUs with bf16 instructions (AVX512-BF16 or AMX); the
script says whether this one has them.

    python tools/bench_precision.py                        # 160 px, 1 tower, ~3 min on 2 cores
    python tools/bench_precision.py --window 80 --towers 2 --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def build(policy: str, towers: int, window: int, trainable_from: str | None):
    import keras

    from wsiheat.models.model import build_model, set_trainable_from
    from wsiheat.training.train import compile_model

    keras.mixed_precision.set_global_policy(policy)
    model = build_model(towers, window, weights="none")
    if trainable_from:
        set_trainable_from(model, trainable_from)
    compile_model(model, 1e-4, mixed=policy == "mixed_float16")
    return model


def time_model(model, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, float]:
    """Seconds per training step and per prediction batch (after two warm-up calls each)."""
    for _ in range(2):
        model.train_on_batch(x, y)
        model.predict_on_batch(x)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    train_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    return train_s, (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--towers", type=int, default=1)
    ap.add_argument("--window", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trainable-from", default="mixed2")
    ap.add_argument("--other", default="mixed_bfloat16", choices=["mixed_bfloat16", "mixed_float16"])
    args = ap.parse_args()

    import keras

    from wsiheat.training.train import cpu_has_bf16

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch_size, args.towers, args.window, args.window, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (args.batch_size, 1)).astype(np.float32)
    best = {p: [np.inf, np.inf] for p in ("float32", args.other)}
    for r in range(args.rounds):
        for policy in best:
            model = build(policy, args.towers, args.window, args.trainable_from)
            tr, pr = time_model(model, x, y, args.steps)
            best[policy] = [min(best[policy][0], tr), min(best[policy][1], pr)]
            print(f"round {r + 1} {policy:>15}: train {args.batch_size / tr:6.1f} samples/s, "
                  f"predict {args.batch_size / pr:6.1f} samples/s", flush=True)
            del model
            keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    f32, oth = best["float32"], best[args.other]
    print(f"\nCPU bf16 instructions: {cpu_has_bf16()}; {args.towers} tower(s) of {args.window} px, batch "
          f"{args.batch_size}, trainable from {args.trainable_from}, best of {args.rounds} round(s) x "
          f"{args.steps} steps")
    print(f"{'':>15}  {'train samples/s':>16}  {'predict samples/s':>18}")
    for name, (tr, pr) in (("float32", f32), (args.other, oth)):
        print(f"{name:>15}  {args.batch_size / tr:16.1f}  {args.batch_size / pr:18.1f}")
    print(f"{'ratio':>15}  {f32[0] / oth[0]:16.2f}x  {f32[1] / oth[1]:17.2f}x   ({args.other} / float32)")


if __name__ == "__main__":
    main()
