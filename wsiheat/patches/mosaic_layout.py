"""The layout of a mosaic slide on its cell grid: tissue islands, tumor regions of known shapes, their outlines.

Pure functions of a random generator and the grid size; :mod:`wsiheat.patches.mosaic` draws
the patches into the layout and writes the slide, its mask and its annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from wsiheat.errors import WsiheatError

#: Tumor region shapes in cells (True = tumor), grouped by size.
TUMOR_SHAPES: dict[str, dict[str, np.ndarray]] = {
    "small": {
        "1x2": np.ones((1, 2), bool),
        "2x1": np.ones((2, 1), bool),
        "2x2": np.ones((2, 2), bool),
    },
    "medium": {
        "2x3": np.ones((2, 3), bool),
        "3x2": np.ones((3, 2), bool),
        "3x3": np.ones((3, 3), bool),
        "L3": np.array([[1, 0, 0], [1, 0, 0], [1, 1, 1]], bool),
        "cross3": np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool),
    },
    "large": {
        "4x4": np.ones((4, 4), bool),
        "3x5": np.ones((3, 5), bool),
        "5x3": np.ones((5, 3), bool),
        "disk5": np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1],
                           [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], bool),
        "blob4x6": np.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], bool),
    },
}


# ------------------------------------------------------------------------------------
# Layout on the cell grid
# ------------------------------------------------------------------------------------
@dataclass
class Layout:
    """Where tissue and tumor are, on the grid of cells.

    Attributes
    ----------
    tissue : ndarray, (rows, cols) bool
        Cells holding a patch.
    tumor : ndarray, (rows, cols) bool
        Cells holding a class-1 patch (a subset of ``tissue``).
    islands : list of dict
        ``{"shape", "row", "col", "rows", "cols"}`` bounding boxes in cells.
    tumors : list of dict
        ``{"shape", "cells": [[row, col], ...]}`` per placed tumor region.
    """

    tissue: np.ndarray
    tumor: np.ndarray
    islands: list[dict] = field(default_factory=list)
    tumors: list[dict] = field(default_factory=list)


def _island_shape(rng: np.random.Generator, rows: int, cols: int) -> tuple[str, np.ndarray]:
    """A connected, hole-free island of tissue inside a rows x cols box."""
    kind = ["rect", "ellipse", "blob"][int(rng.integers(3))]
    if kind == "rect":
        return kind, np.ones((rows, cols), bool)
    if kind == "ellipse":
        yy, xx = np.mgrid[0:rows, 0:cols]
        cy, cx = (rows - 1) / 2, (cols - 1) / 2
        m = ((yy - cy) / (rows / 2)) ** 2 + ((xx - cx) / (cols / 2)) ** 2 <= 1.0
        return kind, m
    # union of rectangles that all contain the centre cell: connected, no holes
    m = np.zeros((rows, cols), bool)
    cy, cx = rows // 2, cols // 2
    for _ in range(3):
        h = int(rng.integers(max(2, rows // 2), rows + 1))
        w = int(rng.integers(max(2, cols // 2), cols + 1))
        y0 = int(rng.integers(max(0, cy - h + 1), min(cy, rows - h) + 1))
        x0 = int(rng.integers(max(0, cx - w + 1), min(cx, cols - w) + 1))
        m[y0:y0 + h, x0:x0 + w] = True
    return kind, m


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Dilation by one cell in all 8 directions."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def plan_layout(rng: np.random.Generator, grid: tuple[int, int], n_islands: int,
                n_tumors: int) -> Layout:
    """Place tissue islands and tumor regions on a grid of cells.

    Islands sit in the slots of a regular arrangement, each with a margin of
    background around it; tumor regions (several sizes, see
    :data:`TUMOR_SHAPES`) are placed so that every tumor cell's 8 neighbours
    are tissue and no two regions touch, even diagonally: each region is
    embedded in normal tissue and is one connected component.

    Parameters
    ----------
    rng : numpy Generator
    grid : (rows, cols)
        Grid size in cells.
    n_islands : int
        Number of tissue islands (>= 1).
    n_tumors : int
        Number of tumor regions to place (0 for a normal slide).

    Returns
    -------
    Layout

    Raises
    ------
    WsiheatError
        When the grid is too small for the islands or no tumor fits.
    """
    rows, cols = int(grid[0]), int(grid[1])
    if n_islands < 1:
        raise WsiheatError(f"mosaic: n_islands must be >= 1, got {n_islands}")
    gr = int(math.ceil(math.sqrt(n_islands)))
    gc = int(math.ceil(n_islands / gr))
    srows, scols = rows // gr, cols // gc
    if srows < 6 or scols < 6:
        raise WsiheatError(f"mosaic: grid {rows}x{cols} cells is too small for {n_islands} islands "
                           f"(each needs at least 6x6 cells); use a bigger grid or fewer islands")
    tissue = np.zeros((rows, cols), bool)
    islands = []
    slots = [(i, j) for i in range(gr) for j in range(gc)]
    chosen = sorted(rng.choice(len(slots), size=n_islands, replace=False).tolist())
    for s in chosen:
        i, j = slots[s]
        avail_r, avail_c = srows - 2, scols - 2  # one background cell on each side
        h = int(rng.integers(max(4, int(avail_r * 0.6)), avail_r + 1))
        w = int(rng.integers(max(4, int(avail_c * 0.6)), avail_c + 1))
        y0 = i * srows + 1 + int(rng.integers(0, avail_r - h + 1))
        x0 = j * scols + 1 + int(rng.integers(0, avail_c - w + 1))
        kind, m = _island_shape(rng, h, w)
        tissue[y0:y0 + h, x0:x0 + w] |= m
        islands.append({"shape": kind, "row": y0, "col": x0, "rows": h, "cols": w})

    tumor = np.zeros_like(tissue)
    tumors: list[dict] = []
    if n_tumors > 0:
        # region sizes cycle through small / medium / large, in a random order
        sizes = ["small", "medium", "large"]
        rng.shuffle(sizes)
        # tumor cells need their whole 3x3 neighbourhood inside tissue
        interior = ~_dilate(~np.pad(tissue, 1, constant_values=False))[1:-1, 1:-1]
        for k in range(n_tumors):
            order = [sizes[(k + d) % 3] for d in range(3)]
            for size in order + ["small"]:  # fall back to smaller regions when crowded
                names = sorted(TUMOR_SHAPES[size])
                name = names[int(rng.integers(len(names)))]
                shape = TUMOR_SHAPES[size][name]
                free = interior & ~_dilate(_dilate(tumor))
                sh, sw = shape.shape
                cands = []
                for y in range(rows - sh + 1):
                    for x in range(cols - sw + 1):
                        if np.all(free[y:y + sh, x:x + sw][shape]):
                            cands.append((y, x))
                if cands:
                    y, x = cands[int(rng.integers(len(cands)))]
                    tumor[y:y + sh, x:x + sw] |= shape
                    cells = [[int(y + a), int(x + b)] for a, b in zip(*np.nonzero(shape))]
                    tumors.append({"shape": name, "cells": cells})
                    break
        if not tumors:
            raise WsiheatError(f"mosaic: no tumor region fits on a {rows}x{cols} grid with "
                               f"{n_islands} islands; use a bigger grid or fewer islands")
    return Layout(tissue=tissue, tumor=tumor, islands=islands, tumors=tumors)


# ------------------------------------------------------------------------------------
# Outlines (ASAP XML)
# ------------------------------------------------------------------------------------
def region_outlines(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Outline of each 8-connected region of a boolean grid, on cell corners.

    Parameters
    ----------
    mask : ndarray, (rows, cols) bool
        Regions must be hole-free and 4-connected inside (no pinch points);
        the mosaic layout guarantees it.

    Returns
    -------
    list of list of (x, y)
        One closed polygon per region (first vertex not repeated), vertices in
        cell-corner coordinates (multiply by the cell size for level-0
        pixels), clockwise on screen (y down), collinear vertices removed.

    Raises
    ------
    ValueError
        For a region with a hole or a pinch point.
    """
    mask = np.asarray(mask, bool)
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    out = []
    for lab in range(1, n):
        region = labels == lab
        p = np.pad(region, 1)
        edges: dict[tuple[int, int], tuple[int, int]] = {}

        def add(a: tuple[int, int], b: tuple[int, int]) -> None:
            if a in edges:
                raise ValueError(f"region {lab}: pinch point at {a}")
            edges[a] = b

        for r, c in zip(*np.nonzero(region)):
            r, c = int(r), int(c)
            if not p[r, c + 1]:
                add((c, r), (c + 1, r))            # top, going right
            if not p[r + 1, c + 2]:
                add((c + 1, r), (c + 1, r + 1))    # right, going down
            if not p[r + 2, c + 1]:
                add((c + 1, r + 1), (c, r + 1))    # bottom, going left
            if not p[r + 1, c]:
                add((c, r + 1), (c, r))            # left, going up
        start = min(edges)
        loop = [start]
        v = edges.pop(start)
        while v != start:
            loop.append(v)
            v = edges.pop(v)
        if edges:
            raise ValueError(f"region {lab}: has a hole")
        # drop collinear vertices
        poly = []
        m = len(loop)
        for i in range(m):
            (x0, y0), (x1, y1), (x2, y2) = loop[i - 1], loop[i], loop[(i + 1) % m]
            if (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1) != 0:
                poly.append((x1, y1))
        out.append(poly)
    return out
