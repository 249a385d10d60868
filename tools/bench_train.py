"""Benchmark: is the HDF5 input pipeline the training bottleneck?

Trains the same model (2-tower InceptionV3 at 80 px, random init) for the same
number of steps twice, in one process:

* ``memory``  : on batches already in memory (tensors, no reading, no augmentation);
* ``hdf5``    : through :func:`wsiheat.training.dataset.make_dataset` streaming from a
  generated HDF5 patches file (forced off memory: chunk-aligned block reads in
  shuffled order + shuffle buffer) with the full augmentation (rotation, flips,
  colour).

Runs alternate (memory, hdf5, memory, hdf5, ...) and the best of each is kept,
so a busy machine affects both alike. Prints samples/s for both and the ratio
hdf5/memory (goal >= 0.9), plus the pipeline alone (no model).

    python tools/bench_train.py                 # ~3-5 minutes on 2 CPU cores
    python tools/bench_train.py --towers 1 --steps 10 --rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_file(path: Path, n: int, towers: int, window: int, slides: int, seed: int = 0) -> Path:
    from wsiheat.patches.store import ShardWriter

    rng = np.random.default_rng(seed)
    attrs = {"window": window, "center": 50, "stride": 50,
             "downsamples": [2.0 ** (2 * t) for t in range(towers)],
             "levels": list(range(towers)), "params": {"bench": True}}
    per = n // slides
    base = rng.integers(0, 256, (64, towers, window, window, 3), dtype=np.uint8)
    with ShardWriter(path, attrs) as w:
        for s in range(slides):
            sid = w.add_slide(f"slide{s}", {"bench": True})
            for i in range(0, per, 256):
                k = min(256, per - i)
                imgs = base[rng.integers(0, 64, k)] ^ rng.integers(0, 8, (k, 1, 1, 1, 1),
                                                                      dtype=np.uint8)
                w.append(imgs, rng.integers(0, 2, k), np.zeros((k, 2)), sid)
    return path


def timed_fit(model, ds, steps: int) -> float:
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--towers", type=int, default=2)
    ap.add_argument("--window", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backbone", default="inception_v3", choices=["inception_v3", "tiny"])
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    import tensorflow as tf

    from wsiheat.models.model import build_model
    from wsiheat.training.augment import AugmentConfig
    from wsiheat.training.dataset import make_dataset, open_patch_file
    from wsiheat.training.train import compile_model

    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        path = make_file(Path(tmp) / "bench.h5", a.rows, a.towers, a.window, slides=8)
        pf = open_patch_file(path)
        rows = np.arange(pf.n)
        print(f"file: {pf.n} rows x {pf.towers} towers x {pf.window} px "
              f"({path.stat().st_size / 2**20:.0f} MiB), chunk {pf.chunk_rows} rows; "
              f"batch {a.batch_size}, {a.steps} steps per run, "
              f"{tf.config.threading.get_inter_op_parallelism_threads() or 'auto'} inter-op threads")
        hdf5 = make_dataset(pf, rows, a.batch_size, training=True, augment=AugmentConfig(),
                            memory_budget=0)
        # pipeline alone
        it = iter(hdf5)
        next(it)
        t0 = time.perf_counter()
        for _ in range(4 * a.steps):
            next(it)
        pipe = 4 * a.steps * a.batch_size / (time.perf_counter() - t0)
        # the same kind of batches, already in memory
        batches = [next(it) for _ in range(a.steps)]
        xs = tf.stack([b[0] for b in batches])
        ys = tf.stack([b[1] for b in batches])
        memory = tf.data.Dataset.from_tensor_slices((xs, ys)).repeat()

        model = build_model(a.towers, a.window, weights="none", backbone=a.backbone)
        compile_model(model, 1e-4, mixed=False)
        model.fit(memory, epochs=1, steps_per_epoch=2, verbose=0)  # trace once
        model.fit(hdf5, epochs=1, steps_per_epoch=2, verbose=0)
        best = {"memory": 0.0, "hdf5": 0.0}
        for r in range(a.rounds):
            for name, ds in (("memory", memory), ("hdf5", hdf5)):
                sps = a.steps * a.batch_size / timed_fit(model, ds, a.steps)
                best[name] = max(best[name], sps)
                print(f"round {r + 1}: {name:6s} {sps:8.1f} samples/s")
        ratio = best["hdf5"] / best["memory"]
        print(f"pipeline alone (HDF5 stream + augmentation, no model): {pipe:.0f} samples/s")
        print(f"training, batches in memory : {best['memory']:.1f} samples/s")
        print(f"training, HDF5 + augmentation: {best['hdf5']:.1f} samples/s")
        print(f"ratio hdf5/memory: {ratio:.3f} (goal >= 0.9) -> {'OK' if ratio >= 0.9 else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
