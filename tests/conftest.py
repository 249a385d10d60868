"""Shared pytest fixtures for wsiheat.

* ``shared_data``: the read-only real data folder ``../shared/data`` (a test that
  needs it fails when it is absent; see ``tests/_helpers.py``).
* ``write_pyramid_tiff`` / ``write_mask_tiff`` (from ``tests/_tiff.py``, also
  importable as ``from _tiff import write_pyramid_tiff``): small pyramidal
  tiled TIFFs that OpenSlide opens with all their levels.
* ``pyramid_slide``: a factory fixture writing such a slide into ``tmp_path``.

Plain helper functions (``shared_path``, ``write_patches``, ``loopback_hosts``,
``run_tf_workers``) live in ``tests/_helpers.py``: import them from there, not from a
conftest (each test folder may have its own conftest).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import missing_shared, shared_path  # noqa: E402
from _tiff import write_mask_tiff, write_pyramid_tiff  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (real slides, IDC patches, CAMELYON16 annotations)."""
    return shared_path()


@pytest.fixture(scope="session")
def real_slides(shared_data: Path) -> dict[str, Path]:
    """The two real SVS slides: keys 'tcga' (2 levels, no mpp) and 'cmu' (1 level, 0.499 µm/px)."""
    d = shared_data / "slides"
    out = {"tcga": d / "tcga-cr-7395-01a-01-ts1.svs", "cmu": d / "cmu-1-small-region.svs"}
    missing = [str(p) for p in out.values() if not p.exists()]
    if missing:
        missing_shared(f"real slides not available: {missing}")
    return out


@pytest.fixture
def pyramid_slide(tmp_path: Path):
    """Factory: ``pyramid_slide(level0, n_levels=3, name='slide.tif', **kw) -> Path``."""

    def make(level0, n_levels: int = 3, name: str = "slide.tif", **kw) -> Path:
        path = tmp_path / name
        write_pyramid_tiff(path, level0, n_levels, **kw)
        return path

    return make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
