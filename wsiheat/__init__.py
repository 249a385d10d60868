"""wsiheat: tumor-probability heatmaps for whole-slide images (CAMELYON16 style).

Stages, one module each, data flowing one way::

    slide -> tissue -> annotations -> sampling -> store      (extract)
    store -> dataset -> model -> train                        (train)
    slide + model -> infer                                    (heatmap)
    infer outputs + annotations -> evaluate                   (evaluate)

The command-line interface (:mod:`wsiheat.cli`) is a thin layer over these.
"""

__version__ = "0.1.0"
