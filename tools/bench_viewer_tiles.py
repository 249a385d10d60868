"""Time the viewer's deep-zoom slide tiles with direct TIFF tile reads against OpenSlide reads, side by side.

Serves every tile of the finest deep-zoom levels of a slide (``SlideLayer.tile``: read, scale, JPEG
encode), alternating the two readers over several rounds, and prints tiles/s and the ratio.

Usage::

    python tools/bench_viewer_tiles.py SLIDE [--levels 2] [--rounds 3] [--max-tiles 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsiheat.viewer.tiles import SlideLayer  # noqa: E402
from wsiheat.wsi.tiff_tiles import READER_ENV  # noqa: E402


def serve(path: Path, reader: str, levels: int, max_tiles: int) -> float:
    """Tiles/s of a fresh layer serving the finest ``levels`` deep-zoom levels (at most ``max_tiles`` each)."""
    os.environ.pop(READER_ENV, None)
    if reader == "openslide":
        os.environ[READER_ENV] = "openslide"
    layer = SlideLayer(path)
    os.environ.pop(READER_ENV, None)
    try:
        n, t = 0, time.perf_counter()
        for level in range(layer.level_count - 1, layer.level_count - 1 - levels, -1):
            cols, rows = layer.dz.level_tiles[level]
            for k in range(min(cols * rows, max_tiles)):
                layer.tile(level, k % cols, k // cols)
                n += 1
        return n / (time.perf_counter() - t)
    finally:
        layer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--levels", type=int, default=2, help="finest deep-zoom levels served")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tiles", type=int, default=400, help="tiles per level at most (row-major from the top)")
    args = ap.parse_args()
    res: dict[str, list[float]] = {"direct": [], "openslide": []}
    for r in range(args.rounds):
        for reader in ("openslide", "direct"):
            res[reader].append(serve(args.slide, reader, args.levels, args.max_tiles))
        print(f"round {r + 1}: direct {res['direct'][-1]:.1f} tiles/s, openslide {res['openslide'][-1]:.1f} tiles/s",
              flush=True)
    ratio = statistics.median(d / o for d, o in zip(res["direct"], res["openslide"]))
    print(f"{args.slide.name}: direct {statistics.median(res['direct']):.1f} tiles/s, openslide "
          f"{statistics.median(res['openslide']):.1f} tiles/s, direct/openslide {ratio:.2f}x (median of paired rounds)")


if __name__ == "__main__":
    main()
