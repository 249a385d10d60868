"""Wall time of extract and heatmap over several slides with 1 and 2 local Dask workers.

Usage: python tools/bench_scale.py [--slides 4] [--workdir DIR]

Slides: copies (symlinks, distinct names) of the real TCGA slide in ../shared/data/slides
(4443 x 3567, 2 levels), or of data/slides/cmu-1-small-region.svs when ../shared is absent.
Extract: towers at levels 0 and 1, every on-tissue window kept (no sampling cap).
Heatmap (when wsiheat.inference.outputs is present): a small random 2-tower CNN, every tissue cell.
Each configuration starts from empty outputs; the Dask cluster start-up is included
in the "2 workers" wall time and also reported separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_slides(work: Path, n: int) -> list:
    from wsiheat.scale.tasks import tasks_from_paths

    src = REPO.parent / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    if not src.exists():
        src = REPO / "data" / "slides" / "cmu-1-small-region.svs"
    d = work / "slides"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = d / f"slide_{i:02d}.svs"
        if not p.exists():
            os.symlink(src.resolve(), p)
        paths.append(p)
    print(f"slides: {n} x {src.name}")
    return tasks_from_paths(paths)


def small_model(path: Path) -> Path:
    import keras

    from wsiheat.models.model import save_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((2, 80, 80, 3), dtype="uint8")
    x = keras.layers.Reshape((160, 80, 3))(inp)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    for f in (16, 32, 64):
        x = keras.layers.Conv2D(f, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    meta = {"window": 80, "center": 50, "stride": 50, "downsamples": [1.0, 2.0], "towers": 2, "levels": [0, 1]}
    return save_model(keras.Model(inp, out), path, meta)


def timed(label: str, fn) -> float:
    t0 = time.perf_counter()
    res = fn()
    secs = time.perf_counter() - t0
    bad = [r for r in res["results"] if r.status != "done"]
    assert not bad, bad
    per = sum(r.seconds for r in res["results"])
    print(f"  {label:<22} wall {secs:7.1f} s   (sum of per-slide task times {per:6.1f} s)")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-heatmap", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    tasks = make_slides(work, args.slides)
    from wsiheat.scale.batch import extract_many
    from wsiheat.scale.runner import start_client

    t0 = time.perf_counter()
    client, cluster = start_client(2)
    startup = time.perf_counter() - t0
    client.close()
    cluster.close()
    print(f"LocalCluster(2 processes) start + stop: {startup:.1f} s   (os.cpu_count() = {os.cpu_count()})")

    params = dict(downsamples=(1.0, 2.0), max_normal=0)
    print("extract (towers at downsample 1 and 2; all on-tissue windows):")
    times = {}
    for w in (0, 1, 2):
        out = work / f"extract_w{w}.h5"
        out.unlink(missing_ok=True)
        times[w] = timed(f"{w} workers" + (" (in process)" if w == 0 else ""),
                         lambda: extract_many(tasks, out, workers=w, progress=False, **params))
    print(f"  speed-up 2 vs 1 workers: {times[1] / times[2]:.2f}x;  2 workers vs in-process: "
          f"{times[0] / times[2]:.2f}x")
    if args.no_heatmap:
        return
    from wsiheat.scale.batch import heatmap_many

    model = small_model(work / "small.keras")
    print("heatmap (small 2-tower CNN, every tissue cell, batch 64):")
    times = {}
    for w in (0, 1, 2):
        out = work / f"heat_w{w}"
        shutil.rmtree(out, ignore_errors=True)
        times[w] = timed(f"{w} workers" + (" (in process)" if w == 0 else ""),
                         lambda: heatmap_many(tasks, model, out, workers=w, progress=False))
    print(f"  speed-up 2 vs 1 workers: {times[1] / times[2]:.2f}x;  2 workers vs in-process: "
          f"{times[0] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
