"""wsiheat: tumor-probability heatmaps for whole-slide images (CAMELYON16 style).

One package per stage, data flowing one way::

    wsi/  ->  patches/  ->  models/  ->  training/  ->  inference/  ->  postprocess/  ->  evaluation/
                                                      scale/ and cli/ on top

The public API (importing it is cheap: names load on first use, TensorFlow only
when a model is built or loaded)::

    import wsiheat
    wsiheat.extract("tumor_001.tif", "tumor_001.xml", "patches.h5", levels=(2, 3))
    wsiheat.train("patches.h5", "model.keras", epochs=10)
    model = wsiheat.HeatmapModel.load("model.keras")
    hm = model.predict_slide("test_001.tif")     # in memory: probabilities, tissue, score, lesions
    hm.save("results/")                          # the nine files `wsiheat heatmap` writes
    wsiheat.evaluate_froc("results/", ["masks/"], out_dir="eval/")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    # errors
    "WsiheatError": "wsiheat.errors", "SlideError": "wsiheat.errors", "GroundTruthError": "wsiheat.errors",
    "PatchFileError": "wsiheat.errors", "ModelError": "wsiheat.errors", "StainError": "wsiheat.errors",
    # wsi
    "Slide": "wsiheat.wsi.slide", "open_slide": "wsiheat.wsi.slide", "tissue_mask": "wsiheat.wsi.tissue",
    "load_ground_truth": "wsiheat.wsi.annotations", "register_ground_truth_format": "wsiheat.wsi.annotations",
    "StainNormalizer": "wsiheat.wsi.stain", "get_stain_normalizer": "wsiheat.wsi.stain",
    "register_stain_normalizer": "wsiheat.wsi.stain",
    # patches
    "extract": "wsiheat.api", "import_patches": "wsiheat.patches.importing", "open_patches": "wsiheat.patches.store",
    "build_mosaic_set": "wsiheat.patches.mosaic",
    # models and training
    "train": "wsiheat.api", "build_model": "wsiheat.models.model", "load_model": "wsiheat.models.model",
    "register_backbone": "wsiheat.models.backbones",
    # inference and post-processing
    "HeatmapModel": "wsiheat.inference.engine", "Heatmap": "wsiheat.inference.outputs",
    "read_heatmap": "wsiheat.inference.outputs", "register_slide_score": "wsiheat.postprocess.scores",
    # evaluation
    "evaluate_patches": "wsiheat.evaluation.reports", "evaluate_slides": "wsiheat.evaluation.reports",
    "evaluate_froc": "wsiheat.evaluation.reports",
}
_ALIASES = {"register_backbone": "register", "register_slide_score": "register",
            "register_ground_truth_format": "register_format", "get_stain_normalizer": "get_normalizer",
            "register_stain_normalizer": "register_normalizer"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wsiheat' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
