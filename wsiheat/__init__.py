"""wsiheat: tumor-probability heatmaps for whole-slide images (CAMELYON16 style).

Stages, one module each, data flowing one way::

    slide -> tissue -> annotations -> sampling -> store      (extract)
    store -> dataset -> model -> train                        (train)
    slide + model -> infer                                    (heatmap)
    infer outputs + annotations -> evaluate                   (evaluate)

The command-line interface (:mod:`wsiheat.cli`) is a thin layer over these.
"""

__version__ = "0.1.0"

import os as _os

# Quieten TensorFlow's C++ log lines (oneDNN/CUDA notes); Python exceptions
# are unaffected. Users can override by setting the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
