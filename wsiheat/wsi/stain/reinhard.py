"""Reinhard et al. 2001 colour transfer: match the mean and spread of each CIELAB channel.

The statistics come from stained pixels only, and the map is blended out
towards the background (pixels with mean optical density below
:data:`~wsiheat.wsi.stain.base.OD_BACKGROUND`, fading from half of it) so white
glass stays white instead of taking the tissue's shift. The blend weight
depends on the pixel alone, so the map is still the same for every tile.
"""

from __future__ import annotations

import numpy as np

from wsiheat.errors import StainError
from wsiheat.wsi.stain.base import OD_BACKGROUND, StainNormalizer, optical_density


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(N, 3)`` -> float32 CIELAB (L 0-100), OpenCV's exact float conversion."""
    import cv2

    f = (np.asarray(pixels, np.float32) / 255.0).reshape(-1, 1, 3)
    return cv2.cvtColor(f, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB ``(N, 3)`` -> uint8 RGB (clipped)."""
    import cv2

    f = cv2.cvtColor(np.asarray(lab, np.float32).reshape(-1, 1, 3), cv2.COLOR_Lab2RGB).reshape(-1, 3)
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


class Reinhard(StainNormalizer):
    """Per-channel mean and standard deviation in CIELAB, fitted on stained pixels only."""

    name = "reinhard"

    def stats(self, pixels: np.ndarray) -> dict:
        lab = rgb_to_lab(pixels).astype(np.float64)
        return {"mean": lab.mean(axis=0).tolist(), "std": np.maximum(lab.std(axis=0), 1e-3).tolist()}

    def map_pixels(self, pixels: np.ndarray, source: dict) -> np.ndarray:
        t, s = self.target, source
        with np.errstate(all="ignore"):
            scale = np.asarray(t["std"], np.float32) / np.asarray(s["std"], np.float32)
            shift = np.asarray(t["mean"], np.float32) - np.asarray(s["mean"], np.float32) * scale
        if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
            raise StainError(f"{self.name}: degenerate source statistics (no finite map)")
        lab = rgb_to_lab(pixels)
        mapped = lab_to_rgb(lab * scale + shift).astype(np.float32)
        od = optical_density(pixels).mean(axis=1, keepdims=True)
        w = np.clip((od - 0.5 * OD_BACKGROUND) / (0.5 * OD_BACKGROUND), 0.0, 1.0)
        return np.clip(np.rint(w * mapped + (1.0 - w) * pixels), 0, 255).astype(np.uint8)
