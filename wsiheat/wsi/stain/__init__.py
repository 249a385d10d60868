"""Stain normalisation: a small registry of normalisers (Reinhard, Macenko, Vahadane).

Used identically by training (:mod:`wsiheat.training.dataset`), inference
(``heatmap``, ``evaluate patches``) and the viewer: the target lives in the
model's metadata (``stain``: :meth:`StainNormalizer.to_dict`), the source is
fitted once per slide or patient, and every tile is mapped with the same
function (see :mod:`wsiheat.wsi.stain.base`).

Example
-------
>>> norm = get_normalizer("macenko").fit(reference_rgb)          # doctest: +SKIP
>>> src = norm.source(sample_of_slide_windows, "slide.tif")      # doctest: +SKIP
>>> out = norm.transform(tile_rgb, src)                          # doctest: +SKIP

A new normaliser subclasses :class:`StainNormalizer` and is added with
:func:`register_normalizer`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from wsiheat.errors import StainError
from wsiheat.wsi.stain.base import StainNormalizer, tissue_pixels
from wsiheat.wsi.stain.macenko import Macenko
from wsiheat.wsi.stain.reinhard import Reinhard
from wsiheat.wsi.stain.vahadane import Vahadane

_REGISTRY: dict[str, type[StainNormalizer]] = {}


def register_normalizer(cls: type[StainNormalizer]) -> type[StainNormalizer]:
    """Add a normaliser class under its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (Reinhard, Macenko, Vahadane):
    register_normalizer(_cls)


def normalizer_names() -> list[str]:
    """Registered normaliser names."""
    return sorted(_REGISTRY)


def get_normalizer(name: str, target: dict | None = None) -> StainNormalizer:
    """A normaliser by name, with an optional target."""
    if name not in _REGISTRY:
        raise StainError(f"stain normaliser {name!r}: choose one of {', '.join(normalizer_names())}")
    return _REGISTRY[name](target)


def normalizer_from_dict(d: dict | None, what: str = "model") -> StainNormalizer | None:
    """The normaliser stored by :meth:`StainNormalizer.to_dict` (None when ``d`` is None)."""
    if not d:
        return None
    if not isinstance(d, dict) or "method" not in d or not isinstance(d.get("target"), dict):
        raise StainError(f"{what}: not a stain normaliser record (need method and target)")
    return get_normalizer(str(d["method"]), d["target"])


def load_target(path: str | os.PathLike, method: str) -> StainNormalizer:
    """A normaliser of ``method`` with its target from a reference image or a saved target.

    Parameters
    ----------
    path : path-like
        A reference image (PNG, JPEG, TIFF: its stained pixels are fitted), or a
        JSON file holding a stored normaliser (``{"method": ..., "target": ...}``,
        e.g. the ``stain`` entry of a model's metadata).
    method : str
        The normaliser wanted; a JSON target of another normaliser is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise StainError(f"{p}: no such reference image or stain target file")
    if p.suffix.lower() == ".json":
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise StainError(f"{p}: not a JSON stain target ({e})") from None
        d = d.get("stain", d) if isinstance(d, dict) else d
        norm = normalizer_from_dict(d, str(p))
        if norm.name != method:
            raise StainError(f"{p}: a {norm.name} target, but the normaliser is {method}")
        return norm
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                raise StainError(f"{p}: a {im.mode} image (grayscale?); the reference must be colour H&E")
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise StainError(f"{p}: not an image ({e})") from None
    return get_normalizer(method).fit(rgb, str(p))


__all__ = ["StainNormalizer", "Reinhard", "Macenko", "Vahadane", "register_normalizer", "normalizer_names",
           "get_normalizer", "normalizer_from_dict", "load_target", "tissue_pixels"]
