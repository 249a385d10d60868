"""``wsiheat view --export DIR``: a static, self-contained copy of the viewer.

The copy has the same pages and relative URLs as the server (see
:mod:`wsiheat.viewer.pages`), with every tile written as a file: the heatmap
layer at all levels (default colormap, no threshold), the slide layer down to
a chosen downsample (full resolution of a whole-slide image is gigabytes). It
opens from ``file://`` or any static web server; the colormap and threshold
controls are disabled there, the opacity, candidates, outlines and keys work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from wsiheat.errors import WsiheatError
from wsiheat.viewer.catalog import Catalog
from wsiheat.viewer.pages import render_index, render_slide, slide_data
from wsiheat.viewer.server import Layers, static_assets
from wsiheat.viewer.tiles import COLORMAPS, TILE_SIZE, dz_level_dimensions


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def export_static(catalog: Catalog, out_dir: str | os.PathLike, slide_downsample: float = 4.0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Write the static copy of a catalog's viewer.

    Parameters
    ----------
    catalog : Catalog
    out_dir : path-like
        Destination folder (created; must be empty when it exists).
    slide_downsample : float
        Finest slide tiles written, in level-0 pixels per pixel (1: full
        resolution; rounded down to a power of two).
    progress : callable, optional
        Called with each slide's name as it is written.

    Returns
    -------
    dict
        ``slides`` (written), ``problems`` (names that cannot be shown),
        ``slide_tiles``, ``heatmap_tiles``, ``index`` (path of index.html).
    """
    if slide_downsample < 1:
        raise WsiheatError(f"--export-downsample must be >= 1, got {slide_downsample:g}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WsiheatError(f"{out}: exists and is not an empty folder; give a new folder to --export")
    out.mkdir(parents=True, exist_ok=True)
    skip = math.floor(math.log2(slide_downsample) + 1e-9)
    for name, (data, _) in static_assets().items():
        _write(out / "static" / name, data)
    layers = Layers(catalog)
    stats = {"slides": [], "problems": [], "slide_tiles": 0, "heatmap_tiles": 0}
    try:
        for entry in catalog.entries:
            if progress:
                progress(entry.name)
            base = out / "slides" / entry.key
            thumb = layers.thumbnail(entry)
            if thumb is not None:
                _write(base / "thumb.png", thumb)
            data = None
            if entry.problem is None:
                try:
                    slide, heat = layers.slide(entry), layers.heatmap(entry)
                    full = slide.level_count - 1
                    top = max(0, full - skip)
                    for level in range(top + 1):
                        cols, rows = slide.dz.level_tiles[level]
                        for c in range(cols):
                            for r in range(rows):
                                _write(base / "slide_files" / str(level) / f"{c}_{r}.jpeg", slide.tile(level, c, r))
                                stats["slide_tiles"] += 1
                    for level, size in enumerate(dz_level_dimensions(heat.width, heat.height)):
                        nc, nr = math.ceil(size[0] / TILE_SIZE), math.ceil(size[1] / TILE_SIZE)
                        for c in range(nc):
                            for r in range(nr):
                                _write(base / "heatmap_files" / str(level) / f"{c}_{r}.png",
                                       heat.tile(level, c, r, COLORMAPS[0], 0.0))
                                stats["heatmap_tiles"] += 1
                    data = slide_data(catalog, entry, slide, heat, live=False, slide_max_level=top)
                except WsiheatError as exc:
                    entry.problem = str(exc)
            _write(out / "slides" / f"{entry.key}.html", render_slide(catalog, entry, data, live=False))
            (stats["slides"] if entry.problem is None else stats["problems"]).append(entry.name)
        index = out / "index.html"
        _write(index, render_index(catalog, live=False))
        stats["index"] = index
    finally:
        layers.close()
    return stats
