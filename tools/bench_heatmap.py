"""Benchmark `wsiheat heatmap` against the model alone and a seed-style loop.

In one run, on one machine, for each slide (the real TCGA slide and a large
synthetic pyramidal TIFF):

* **end-to-end**: :func:`wsiheat.inference.heatmap.heatmap_slide` on the first N tissue
  cells (background reader threads + compiled model + every output file);
  patches/s counts the inference pipeline (reading + model), the whole call
  (tissue mask, thumbnail, outputs) is reported in seconds too;
* **(a) model alone**: the same compiled function on the same N windows,
  preloaded in memory, same batch size -- the physical limit;
* **(b) seed-style**: one ``read_region`` per window and tower, then
  ``model.predict`` on that window; also (b') the same per-window reading
  with batched prediction (``predict_on_batch``, N windows).

Variants are interleaved over several rounds and the median is reported,
because the machine may be shared. The model is a real 2-tower InceptionV3
(random weights: speed does not depend on them).

Usage::

    python tools/bench_heatmap.py                 # defaults: N=768, seed N=64, 3 rounds
    python tools/bench_heatmap.py --cells 2048 --rounds 5 --synthetic-size 32768
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsiheat.inference.heatmap import heatmap_slide  # noqa: E402
from wsiheat.inference.predict import make_predict_fn, spec_from_metadata, tissue_cells  # noqa: E402
from wsiheat.patches.sampling import read_windows, window_origin  # noqa: E402
from wsiheat.wsi.slide import Slide  # noqa: E402

TCGA = ROOT / ".." / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
CAMELYON_WINDOWS = 100_000


def build_model(towers: int = 2, window: int = 80):
    """2-tower InceptionV3 following the saved-model contract (uint8 in, (B, 1) out)."""
    import keras

    try:
        from wsiheat.models.model import build_model as _build  # the training stage's builder, when merged
    except ImportError:
        _build = None
    if _build is not None:
        try:
            return _build(towers=towers, window=window)
        except TypeError:
            pass
    inp = keras.Input((towers, window, window, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    feats = []
    for t in range(towers):
        base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(window, window, 3),
                                              pooling="avg", name=f"tower{t}")
        feats.append(base(x[:, t]))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()(feats))
    return keras.Model(inp, out, name="bench_inception")


def synthetic_slide(path: Path, size: int, levels: int = 4) -> Path:
    """A large tiled pyramidal TIFF of textured 'tissue' (an ellipse) on white, written tile by tile."""
    import tifffile

    rng = np.random.default_rng(0)
    noise = rng.integers(-18, 19, (256 + 64, 256 + 64, 3)).astype(np.int16)

    def tiles(h: int, w: int, scale: int):
        for ty in range(0, h, 256):
            for tx in range(0, w, 256):
                yy, xx = np.mgrid[ty:ty + 256, tx:tx + 256]
                X, Y = xx * scale / size - 0.5, yy * scale / size - 0.5
                inside = (X / 0.45) ** 2 + (Y / 0.38) ** 2 < 1
                wave = (np.sin(xx * scale / 37.0) * np.cos(yy * scale / 53.0) * 30).astype(np.int16)
                o = (tx * 7 + ty * 13) % 64
                base = np.array([205, 130, 185], np.int16) + wave[..., None] + noise[o:o + 256, o:o + 256]
                t = np.where(inside[..., None], base, 255)
                yield np.clip(t, 0, 255).astype(np.uint8)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for lv in range(levels):
            s = size >> lv
            tw.write(tiles(s, s, 1 << lv), shape=(s, s, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb",
                     compression="zlib", subfiletype=0 if lv == 0 else 1, metadata=None)
    return path


def first_tissue_centers(slide: Slide, spec, n: int) -> np.ndarray:
    grid, tissue = tissue_cells(slide, spec)
    rows, cols = np.nonzero(tissue)
    return grid.centers(rows[:n], cols[:n]), int(tissue.sum())


def model_alone(predict, windows: np.ndarray, batch: int) -> float:
    n = len(windows) // batch * batch
    t = time.perf_counter()
    for i in range(0, n, batch):
        predict(windows[i:i + batch])
    return n / (time.perf_counter() - t)


def seed_style(slide: Slide, spec, centers: np.ndarray, model, batched: int = 0) -> float:
    """One read per window and tower; then model.predict per window (or per `batched` windows)."""
    W = spec.window
    t = time.perf_counter()
    buf = []
    for c in centers:
        towers = []
        for d in spec.downsamples:
            x, y = window_origin(c[None], d, W)[0]
            towers.append(slide.read_scaled((x * d, y * d), d, (W, W)))
        buf.append(np.stack(towers))
        if not batched:
            model.predict(np.stack(buf), verbose=0)
            buf = []
        elif len(buf) == batched:
            model.predict_on_batch(np.stack(buf))
            buf = []
    if buf:
        model.predict_on_batch(np.stack(buf))
    return len(centers) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=768, help="windows per end-to-end / model-alone variant")
    ap.add_argument("--seed-cells", type=int, default=64,
                    help="windows per seed-style variant (b); (b') uses --cells")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synthetic-size", type=int, default=16384, help="level-0 side of the synthetic slide")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                    help="compute precision of the model (heatmap --precision)")
    args = ap.parse_args()

    import os

    import tensorflow as tf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_heatmap_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"tensorflow {tf.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}; batch {args.batch_size}, workers {args.workers}, "
          f"{args.cells} windows (seed-style {args.seed_cells}), {args.rounds} rounds, median reported")
    from wsiheat.models.model import with_precision

    model = with_precision(build_model(), args.precision)
    print(f"model precision: {args.precision}")
    syn = work / f"synthetic_{args.synthetic_size}.tif"
    if not syn.exists():
        t = time.perf_counter()
        synthetic_slide(syn, args.synthetic_size)
        print(f"wrote {syn} ({syn.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
    cases = []
    if TCGA.exists():
        cases.append(("TCGA svs", TCGA, [1.0, 2.0]))
    else:
        print(f"skip the real slide: {TCGA} not found")
    cases.append((f"synthetic {args.synthetic_size}", syn, [2.0, 4.0]))

    rows = []
    for label, path, ds in cases:
        meta = {"window": 80, "center": 50, "stride": 50, "downsamples": ds, "towers": 2, "levels": [None, None]}
        spec = spec_from_metadata(meta)
        predict = make_predict_fn(model, spec, args.batch_size)
        with Slide(path) as s:
            centers, n_tissue = first_tissue_centers(s, spec, args.cells)
            windows = read_windows(s, spec, centers, None)  # preloaded for (a)
        predict(windows[:args.batch_size])  # trace + warm up, excluded from all timings
        model.predict(windows[:1], verbose=0)
        model.predict_on_batch(windows[:args.batch_size])
        res = {"e2e": [], "e2e_call": [], "alone": [], "seed": [], "seed_batched": []}
        out = work / "out"
        out.mkdir(exist_ok=True)
        for r in range(args.rounds):
            res["alone"].append(model_alone(predict, windows, args.batch_size))
            summ = heatmap_slide(path, model, meta, out, batch_size=args.batch_size, readers=args.workers,
                                       predict=predict, max_cells=args.cells)
            res["e2e"].append(summ["patches_per_second"])
            res["e2e_call"].append(summ["seconds"])
            with Slide(path) as s:
                res["seed"].append(seed_style(s, spec, centers[:args.seed_cells], model))
                nb = len(centers) // args.batch_size * args.batch_size  # full batches: no retracing
                res["seed_batched"].append(seed_style(s, spec, centers[:nb], model, batched=args.batch_size))
            print(f"  {label} round {r + 1}: e2e {res['e2e'][-1]:.1f}, alone {res['alone'][-1]:.1f}, "
                  f"seed {res['seed'][-1]:.1f}, seed+batched {res['seed_batched'][-1]:.1f} patches/s", flush=True)
        med = {k: statistics.median(v) for k, v in res.items()}
        # paired ratios (same round) are less sensitive to a shared machine's load swings
        med["r_alone"] = statistics.median(e / a for e, a in zip(res["e2e"], res["alone"]))
        med["r_seed"] = statistics.median(e / a for e, a in zip(res["e2e"], res["seed"]))
        med["r_sb"] = statistics.median(e / a for e, a in zip(res["e2e"], res["seed_batched"]))
        rows.append((label, n_tissue, med))

    print()
    print(f"{'slide':<18} {'tissue':>7} {'e2e p/s':>8} {'alone p/s':>9} {'e2e/alone':>9} {'seed p/s':>8} "
          f"{'e2e/seed':>8} {'seed+batch':>10} {'e2e/s+b':>7} {'min/100k':>8} {'call s':>7}")
    for label, n_tissue, m in rows:
        print(f"{label:<18} {n_tissue:>7} {m['e2e']:>8.1f} {m['alone']:>9.1f} {m['r_alone']:>9.3f} "
              f"{m['seed']:>8.1f} {m['r_seed']:>8.2f} {m['seed_batched']:>10.1f} "
              f"{m['r_sb']:>7.2f} {CAMELYON_WINDOWS / m['e2e'] / 60:>8.1f} {m['e2e_call']:>7.1f}")
    print("ratios are medians of per-round (paired) ratios; rates are medians over rounds")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    print(f"\ngoals: e2e/alone >= 0.9, e2e/seed >= 5; min/100k = minutes for a CAMELYON-size slide "
          f"({CAMELYON_WINDOWS} tissue windows) at the end-to-end rate on this machine")


if __name__ == "__main__":
    main()
