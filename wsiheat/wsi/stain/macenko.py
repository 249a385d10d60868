"""Macenko et al. 2009: two stain vectors from the extreme angles of optical density in its principal plane.

Concentrations come from least squares against the source's stain matrix and
are rescaled so their 99th percentiles match the target's, then mixed with the
target's stain matrix. Once fitted the whole map is one 3x3 matrix in optical
density, the same for every pixel of a slide.
"""

from __future__ import annotations

import numpy as np

from wsiheat.errors import StainError
from wsiheat.wsi.stain.base import StainNormalizer, map_optical_density, optical_density

ANGLE_PERCENTILE = 1.0
"""Robust extremes of the stain angle (percent)."""
MAX_CONC_PERCENTILE = 99.0
"""Percentile of each stain's concentration that is matched."""


def order_stains(stains: np.ndarray) -> np.ndarray:
    """Rows as unit vectors with positive entries, haematoxylin (larger red optical density) first."""
    s = np.asarray(stains, np.float64)
    s = s * np.where(s.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    s = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    return s if s[0, 0] >= s[1, 0] else s[::-1].copy()


class Macenko(StainNormalizer):
    """Stain matrix by the angle method; concentrations by least squares."""

    name = "macenko"

    def stain_matrix(self, od: np.ndarray) -> np.ndarray:
        """Haematoxylin and eosin vectors ``(2, 3)`` from stained optical densities ``(N, 3)``."""
        od = od.astype(np.float64)
        _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
        plane = vecs[:, [2, 1]]  # the two largest
        plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # angles then stay in (-pi/2, pi/2)
        proj = od @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
        v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
        return order_stains(np.stack([v1, v2]))

    def stats(self, pixels: np.ndarray) -> dict:
        od = optical_density(pixels).astype(np.float64)
        stains = self.stain_matrix(od)
        if abs(float(stains[0] @ stains[1])) > 0.995:
            raise StainError(f"{self.name}: the two stain vectors coincide (one stain only?)")
        conc = od @ np.linalg.pinv(stains)
        max_conc = np.maximum(np.percentile(conc, MAX_CONC_PERCENTILE, axis=0), 1e-6)
        return {"stains": stains.tolist(), "max_conc": max_conc.tolist()}

    def matrix(self, source: dict) -> np.ndarray:
        """The 3x3 optical-density map from ``source`` to the target."""
        s_stains = np.asarray(source["stains"], np.float64)
        t_stains = np.asarray(self.target["stains"], np.float64)
        ratio = np.asarray(self.target["max_conc"], np.float64) / np.asarray(source["max_conc"], np.float64)
        return (np.linalg.pinv(s_stains) * ratio) @ t_stains

    def map_pixels(self, pixels: np.ndarray, source: dict) -> np.ndarray:
        with np.errstate(all="ignore"):
            m = self.matrix(source)
        if not np.isfinite(m).all():
            raise StainError(f"{self.name}: degenerate source statistics (no finite map)")
        return map_optical_density(pixels, m)
