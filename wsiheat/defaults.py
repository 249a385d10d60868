"""Every default shared by more than one stage, in one place (cheap to import: no dependencies).

The command-line options, the library functions and the demo all read their
defaults from here, so changing one changes it everywhere.
"""

from __future__ import annotations

# -- sampling (extract, import, heatmap geometry) ----------------------------------------
#: window side W in pixels of every tower
WINDOW = 80
#: side C of the central square whose tumor pixels make a window's label tumor
CENTER = 50
#: grid step S in tower-0 pixels (one heatmap cell)
STRIDE = 50
#: a window is kept for training when its centre box's tissue fraction is at least this
TISSUE_THRESHOLD = 0.75
#: normal windows kept per tumor window, and at most this many per slide
NORMAL_RATIO = 1.0
MAX_NORMAL = 1000
#: downsample (relative to level 0) at which the Otsu tissue mask is computed
TISSUE_MASK_DOWNSAMPLE = 32.0

# -- model and training ------------------------------------------------------------------
#: backbone of every tower (see :mod:`wsiheat.models.backbones`)
BACKBONE = "inception_v3"
#: initial weights of the backbones
WEIGHTS = "imagenet"
EPOCHS = 10
#: sigma of the HED stain augmentation in training (0: off); the default since it halved the AUC lost under
#: a +-50 % stain shift at unchanged accuracy (docs/experiments/stain-robustness.md, round 2)
HED_JITTER = 0.35
BATCH_SIZE = 32

# -- slide reading -----------------------------------------------------------------------
#: bytes of decoded tiles kept per open slide by the direct TIFF tile reader (wsi/tiff_tiles.py);
#: OpenSlide's own default cache is the same size
TILE_CACHE_BYTES = 32 << 20

# -- inference and post-processing -------------------------------------------------------
#: windows per model call when predicting
PREDICT_BATCH_SIZE = 64
#: Gaussian sigma, in cells, of the map that ranks lesions and gives the slide score
SMOOTH_SIGMA = 0.75
#: minimum probability of a lesion point
LESION_THRESHOLD = 0.5
#: suppression radius of lesion points, in cells (when not given in pixels or µm)
NMS_RADIUS_CELLS = 4.0
#: probability at or above which a cell counts as tumor area
AREA_THRESHOLD = 0.5
#: cells averaged for the ``topk_mean`` slide score
TOPK = 10
#: the slide score written as ``score`` (see :mod:`wsiheat.postprocess.scores`)
SLIDE_SCORE = "max"
