#!/usr/bin/env python
"""Benchmark ``wsiheat extract`` against a seed-style baseline: speed and peak memory.

Usage::

    PYTHONPATH=$PWD python tools/bench_extract.py [--size 60000] [--cache DIR]

Slides: the real TCGA slide in ../shared/data/slides (levels 0 and 1: it has
only two) and a synthetic pyramidal slide (``--size`` x ``--size`` at level 0,
levels 2 and 3) written tile by tile with tifffile (the writer never holds a
level; JPEG tiles when imagecodecs is installed, else deflate) and cached
under ``--cache``.

Variants, each in its own subprocess (peak RSS = ``ru_maxrss`` of that process):

* ``extract``: :func:`wsiheat.patches.extract.extract_to_file` (what ``wsiheat extract`` runs);
* ``baseline``: the seeds' way: one ``read_region`` of each whole level, a
  Python double loop over grid windows (tissue fraction from the same tissue
  mask), slices of the in-memory levels, one HDF5 write.

Both keep the same windows (all tissue windows with ``--max-normal 0``, or a
sample of 1000). The last line extrapolates extract's peak RSS to a
100k x 200k CAMELYON slide from a linear fit in pixel count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TCGA_PIXELS = 4443 * 3567
TCGA = REPO / ".." / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"


# --- synthetic slide ------------------------------------------------------------------

def _blobs(size: int, n: int = 14, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.15, 0.85, (2, n)) * size
    rx, ry = rng.uniform(0.03, 0.10, (2, n)) * size
    col = rng.uniform([170, 70, 130], [230, 140, 200], (n, 3))
    return np.column_stack([cx, cy, rx, ry, col])


def _tiles(size: int, d: int, tile: int, blobs: np.ndarray):
    """Tiles (row-major) of the level at downsample ``d``, generated on the fly."""
    W = math.ceil(size / d)
    white = np.full((tile, tile, 3), 255, np.uint8)
    j = np.arange(tile)
    for ty in range(0, W, tile):
        for tx in range(0, W, tile):
            x0, y0, x1, y1 = tx * d, ty * d, (tx + tile) * d, (ty + tile) * d
            hit = blobs[(blobs[:, 0] + blobs[:, 2] > x0) & (blobs[:, 0] - blobs[:, 2] < x1)
                        & (blobs[:, 1] + blobs[:, 3] > y0) & (blobs[:, 1] - blobs[:, 3] < y1)]
            if len(hit) == 0:
                yield white
                continue
            X = (tx + j + 0.5) * d
            Y = (ty + j + 0.5) * d
            t = white.copy()
            tex = (12 * np.sin(X[None, :] / 9.0) * np.cos(Y[:, None] / 7.0)).astype(np.int16)
            for cx, cy, rx, ry, r, g, b in hit:
                inside = ((X[None, :] - cx) / rx) ** 2 + ((Y[:, None] - cy) / ry) ** 2 <= 1
                if inside.any():
                    px = np.clip(np.array([r, g, b])[None, None, :] + tex[..., None], 0, 255).astype(np.uint8)
                    t[inside] = px[inside]
            yield t


def synthetic_slide(size: int, cache: Path) -> Path:
    import tifffile
    try:
        import imagecodecs  # noqa: F401
        comp = "jpeg"
    except ImportError:
        comp = "zlib"
    path = cache / f"synthetic_{size}_{comp}.tif"
    if path.exists():
        return path
    blobs = _blobs(size)
    tmp = path.with_suffix(".part.tif")
    t0 = time.perf_counter()
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        d = 1
        while True:
            W = math.ceil(size / d)
            tw.write(_tiles(size, d, 512, blobs), shape=(W, W, 3), dtype=np.uint8, tile=(512, 512),
                     photometric="rgb", compression=comp, subfiletype=1 if d > 1 else 0)
            if W <= 1024:
                break
            d *= 2
    os.replace(tmp, path)
    print(f"# wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {comp}) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return path


# --- variants (run in a subprocess each) ------------------------------------------------

def run_extract(slide: str, levels: list[int], out: str, max_normal: int) -> dict:
    import wsiheat.wsi.annotations  # noqa: F401  (imports outside the timing, as in the baseline)
    import wsiheat.wsi.tissue  # noqa: F401
    from wsiheat.patches.extract import extract_to_file
    t0 = time.perf_counter()
    st = extract_to_file(slide, None, out, levels=tuple(levels), max_normal=max_normal or None, progress=False)
    return {"seconds": time.perf_counter() - t0, "scanned": st["scanned"], "kept": st["kept"]}


def run_baseline(slide: str, levels: list[int], out: str, max_normal: int) -> dict:
    import h5py

    from wsiheat.patches.sampling import Grid, WindowSpec, window_origin
    from wsiheat.wsi.slide import Slide
    from wsiheat.wsi.tissue import tissue_mask

    t0 = time.perf_counter()
    s = Slide(slide)
    ds = [s.level_downsamples[l] for l in levels]
    spec = WindowSpec(tuple(ds))
    tm = tissue_mask(s)
    whole = [s.read_region((0, 0), l, s.level_dimensions[l]) for l in levels]  # one read per level
    grid = Grid.for_slide(s.dimensions, spec)
    W, cell0, md = spec.window, spec.cell0, tm.downsample
    keep = []
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            cx, cy = (c + 0.5) * cell0, (r + 0.5) * cell0
            half = W * ds[0] / 2
            m = tm.mask[max(0, int((cy - half) / md + 0.5)):max(1, int((cy + half) / md + 0.5)),
                        max(0, int((cx - half) / md + 0.5)):max(1, int((cx + half) / md + 0.5))]
            if m.size and m.mean() >= 0.75:
                keep.append((cx, cy))
    keep = np.asarray(keep).reshape(-1, 2)
    if max_normal and len(keep) > max_normal:
        keep = keep[np.sort(np.random.default_rng(0).choice(len(keep), max_normal, replace=False))]
    images = np.full((len(keep), len(levels), W, W, 3), 255, np.uint8)
    for k, (cx, cy) in enumerate(keep):
        for t, (d, lv) in enumerate(zip(ds, whole)):
            x, y = window_origin(np.array([[cx, cy]]), d, W)[0]
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + W, lv.shape[1]), min(y + W, lv.shape[0])
            images[k, t, y0 - y:y1 - y, x0 - x:x1 - x] = lv[y0:y1, x0:x1]
    with h5py.File(out, "w") as f:
        f["images"] = images
        f["centers"] = keep.astype(np.int64)
    return {"seconds": time.perf_counter() - t0, "scanned": grid.n_rows * grid.n_cols, "kept": len(keep)}


def measure(variant: str, slide: Path, levels: list[int], max_normal: int, workdir: Path) -> dict:
    out = workdir / f"{variant}_{os.getpid()}_{time.time_ns()}.h5"
    code = (f"import json, resource, sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tools')!r});"
            f"import bench_extract as b; r = b.run_{variant}({str(slide)!r}, {levels!r}, {str(out)!r}, {max_normal});"
            f"r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    if res.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{res.stderr[-2000:]}")
    out.unlink(missing_ok=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=60000, help="synthetic slide side at level 0")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsiheat-bench")
    ap.add_argument("--skip-tcga", action="store_true")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    cases = []
    if TCGA.exists() and not args.skip_tcga:
        cases.append(("tcga (4443x3567)", TCGA, [0, 1]))
    cases.append((f"synthetic ({args.size}x{args.size})", synthetic_slide(args.size, args.cache), [2, 3]))
    print(f"{'slide':28s} {'windows':>12s} {'variant':9s} {'seconds':>8s} {'scanned/s':>10s} {'kept/s':>8s} "
          f"{'peak RSS MB':>11s}   ratio (baseline/extract: time, RSS)")
    fit = []
    for name, path, levels in cases:
        for max_normal in (1000, 0):
            r = {v: measure(v, path, levels, max_normal, args.cache) for v in ("extract", "baseline")}
            for v in ("extract", "baseline"):
                x = r[v]
                print(f"{name:28s} {('sample 1000' if max_normal else 'all tissue'):>12s} {v:9s} {x['seconds']:8.2f} "
                      f"{x['scanned'] / x['seconds']:10.0f} {x['kept'] / x['seconds']:8.0f} {x['peak_rss_mb']:11.0f}"
                      + (f"   {r['baseline']['seconds'] / r['extract']['seconds']:.2f}x time, "
                         f"{r['baseline']['peak_rss_mb'] / r['extract']['peak_rss_mb']:.2f}x RSS" if v == "baseline" else ""),
                      flush=True)
            if max_normal:
                from wsiheat.wsi.slide import Slide
                with Slide(path) as s:
                    W, H = s.dimensions
                fit.append((W * H, r["extract"]["peak_rss_mb"]))
    small = synthetic_slide(args.size // 4, args.cache)
    fit.insert(0, ((args.size // 4) ** 2, measure("extract", small, [2, 3], 1000, args.cache)["peak_rss_mb"]))
    fit = [f for f in fit if f[0] != TCGA_PIXELS]
    if len(fit) >= 2:
        (p0, m0), (p1, m1) = fit[0], fit[-1]
        print(f"extract peak RSS (sample 1000): {m0:.0f} MB at {p0 / 1e9:.2f} Gpx, {m1:.0f} MB at {p1 / 1e9:.2f} Gpx")
        slope = (m1 - m0) / (p1 - p0)
        est = m0 + slope * (100_000 * 200_000 - p0)
        print(f"extrapolated extract peak RSS for a 100k x 200k slide (levels 2 3, default settings): "
              f"{est:.0f} MB ({slope * 1e9:.1f} MB per gigapixel + {m0 - slope * p0:.0f} MB)")


if __name__ == "__main__":
    main()
