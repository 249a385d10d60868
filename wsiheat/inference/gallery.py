"""Galleries of windows: a PNG of labeled image tiles in captioned groups.

Used by ``evaluate patches`` (the most confident mistakes) and ``heatmap``
(the lesion candidates, each in its tissue context).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from wsiheat.fileio import save_figure


def plot_gallery(path: str | os.PathLike, groups: Sequence[tuple[str, np.ndarray, Sequence[str]]],
                 columns: int = 8, empty_text: str = "nothing to show") -> None:
    """Write a PNG of labeled windows, one block per group, atomically.

    Parameters
    ----------
    path : path-like
    groups : sequence of (title, images, captions)
        ``images`` uint8 ``(K, T, W, W, 3)``: the towers of a row are shown
        side by side, finest first; one caption per row.
    columns : int
        Windows per line.
    empty_text : str
        Shown alone when every group is empty.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in groups if len(g[1])]
    if not groups:
        fig = plt.figure(figsize=(6, 1.2), dpi=100)
        fig.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12)
        save_figure(fig, path)
        return
    towers = int(groups[0][1].shape[1])
    lines = [max(1, math.ceil(len(g[1]) / columns)) for g in groups]
    cell_w, cell_h = 1.25 * min(towers, 2), 1.25 * min(towers, 2) / towers + 0.35
    fig = plt.figure(figsize=(columns * cell_w, sum(n * cell_h + 0.45 for n in lines)), dpi=100)
    subfigs = fig.subfigures(len(groups), 1, height_ratios=[n * cell_h + 0.45 for n in lines], squeeze=False)
    for sf, (title, images, captions), n in zip(subfigs[:, 0], groups, lines):
        sf.suptitle(title, fontsize=11, x=0.01, ha="left")
        axes = sf.subplots(n, columns, squeeze=False).ravel()
        sf.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.5 / (n * cell_h + 0.45), wspace=0.08)
        for ax in axes:
            ax.set_axis_off()
        for ax, img, cap in zip(axes, images, captions):
            gap = np.full((img.shape[1], max(1, img.shape[2] // 20), 3), 255, np.uint8)
            parts = [img[0]]
            for t in range(1, img.shape[0]):
                parts += [gap, img[t]]
            ax.imshow(np.concatenate(parts, axis=1), interpolation="antialiased")
            ax.set_title(cap, fontsize=7)
    save_figure(fig, path)


