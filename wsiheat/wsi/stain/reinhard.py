"""Reinhard et al. 2001 colour transfer: match the mean and spread of each CIELAB channel.

The statistics come from stained pixels only, and the map is blended out
towards the background (8-bit lightness from :data:`BACKGROUND_L8`), so white
glass stays white instead of taking the tissue's shift. The blend weight
depends on the pixel alone, so the map is still the same for every tile.
"""

from __future__ import annotations

import numpy as np

from wsiheat.errors import StainError
from wsiheat.wsi.stain.base import StainNormalizer, as_grid

BACKGROUND_L8 = (225.0, 240.0)
"""8-bit lightness (L * 255 / 100) from which the map fades out (225: about a gray of optical density
0.15, :data:`~wsiheat.wsi.stain.base.OD_BACKGROUND`) to where it is off (240: half that density)."""
LAB8_SCALE = np.array([100.0 / 255.0, 1.0, 1.0], np.float32)
LAB8_OFFSET = np.array([0.0, -128.0, -128.0], np.float32)
"""OpenCV's 8-bit CIELAB (L * 255 / 100, a + 128, b + 128) to CIELAB: ``lab = lab8 * SCALE + OFFSET``."""


def rgb_to_lab8(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(N, 3)`` -> OpenCV's 8-bit CIELAB ``(N, 3)`` uint8 (table-driven, fast)."""
    import cv2

    return cv2.cvtColor(as_grid(np.asarray(pixels, np.uint8)), cv2.COLOR_RGB2Lab).reshape(-1, 3)


def lab8_to_rgb(lab8: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit CIELAB ``(N, 3)`` uint8 -> uint8 RGB."""
    import cv2

    return cv2.cvtColor(as_grid(np.asarray(lab8, np.uint8)), cv2.COLOR_Lab2RGB).reshape(-1, 3)


class Reinhard(StainNormalizer):
    """Per-channel mean and standard deviation in CIELAB, fitted on stained pixels only."""

    name = "reinhard"

    def stats(self, pixels: np.ndarray) -> dict:
        lab = rgb_to_lab8(pixels).astype(np.float64) * LAB8_SCALE + LAB8_OFFSET  # CIELAB units
        return {"mean": lab.mean(axis=0).tolist(), "std": np.maximum(lab.std(axis=0), 1e-3).tolist()}

    def map_pixels(self, pixels: np.ndarray, source: dict) -> np.ndarray:
        import cv2

        t, s = self.target, source
        with np.errstate(all="ignore"):
            scale = np.asarray(t["std"], np.float64) / np.asarray(s["std"], np.float64)
            shift = np.asarray(t["mean"], np.float64) - np.asarray(s["mean"], np.float64) * scale
        if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
            raise StainError(f"{self.name}: degenerate source statistics (no finite map)")
        # the affine map of CIELAB, written on OpenCV's 8-bit CIELAB (table-driven conversions, one
        # per-pixel transform with rounding and saturation)
        shift8 = (LAB8_OFFSET * scale + shift - LAB8_OFFSET) / LAB8_SCALE
        affine = np.concatenate([np.diag(scale), shift8[:, None]], axis=1).astype(np.float32)
        grid = as_grid(np.asarray(pixels, np.uint8))
        lab8 = cv2.cvtColor(grid, cv2.COLOR_RGB2Lab)
        mapped = cv2.cvtColor(cv2.transform(lab8, affine), cv2.COLOR_Lab2RGB)
        # glass stays glass: full map below L8 BACKGROUND_L8[0], none above BACKGROUND_L8[1]
        lo, hi = BACKGROUND_L8
        w = np.clip((hi - lab8[..., 0].astype(np.float32)) / np.float32(hi - lo), 0.0, 1.0)
        return cv2.blendLinear(mapped, grid, w, 1.0 - w).reshape(-1, 3)
