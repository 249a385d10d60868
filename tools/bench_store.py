#!/usr/bin/env python
"""Read speed of the ``images`` dataset by chunk size and compression (chooses store.CHUNK_ROWS).

Usage: ``PYTHONPATH=$PWD python tools/bench_store.py [patches.h5]``

Uses real windows (a patches file, default: extracted from the TCGA slide) tiled
to 4096 rows. For each layout it writes a file and times (cold page cache not
forced; files are small) (a) reading every chunk-aligned batch of 256 rows in a
shuffled order, as training reads, and (b) 256 random single rows.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    tmp = Path(tempfile.mkdtemp())
    if src is None:
        from wsiheat.patches.extract import extract_to_file
        src = tmp / "src.h5"
        extract_to_file(REPO / ".." / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs", None, src,
                        levels=(0, 1), max_normal=None, progress=False)
    with h5py.File(src, "r") as f:
        x = f["images"][:]
    reps = -(-4096 // len(x))
    x = np.concatenate([x] * reps)[:4096]
    rng = np.random.default_rng(0)
    print(f"{'chunk rows':>10s} {'compression':>12s} {'MB on disk':>10s} {'batch read MB/s':>16s} {'rows/s (batches)':>17s} "
          f"{'random rows/s':>14s}")
    for comp, opts in ((None, None), ("lzf", None), ("gzip", 1)):
        for rows in (16, 64, 256):
            p = tmp / f"c{rows}_{comp}.h5"
            with h5py.File(p, "w") as f:
                f.create_dataset("images", data=x, chunks=(rows,) + x.shape[1:], compression=comp,
                                 compression_opts=opts)
            with h5py.File(p, "r", rdcc_nbytes=64 << 20) as f:
                d = f["images"]
                starts = np.arange(0, len(x), 256)
                rng.shuffle(starts)
                t = time.perf_counter()
                for s in starts:
                    d[s:s + 256]
                tb = time.perf_counter() - t
                idx = np.sort(rng.choice(len(x), 256, replace=False))
                t = time.perf_counter()
                for i in idx:
                    d[i]
                tr = time.perf_counter() - t
            print(f"{rows:10d} {str(comp):>12s} {p.stat().st_size / 1e6:10.0f} {x.nbytes / 1e6 / tb:16.0f} "
                  f"{len(x) / tb:17.0f} {256 / tr:14.0f}", flush=True)


if __name__ == "__main__":
    main()
