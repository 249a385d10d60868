"""Vahadane et al. 2016: the stain matrix by sparse non-negative dictionary learning.

scikit-learn's :class:`~sklearn.decomposition.MiniBatchDictionaryLearning`
(Mairal et al.'s online dictionary learning, the algorithm of the SPAMS library
the paper used; positive dictionary and codes, L1 penalty on the codes) learns
it; concentrations and the mapping are Macenko's (least squares, as TIAToolbox
does), so the map is again one 3x3 matrix per slide.
"""

from __future__ import annotations

import numpy as np

from wsiheat.wsi.stain.macenko import Macenko, order_stains

SPARSITY = 0.1
"""L1 penalty on the concentrations (lambda of the paper)."""
FIT_PIXELS = 4000
"""Stained pixels (a fixed random sample) the dictionary is learnt on."""


class Vahadane(Macenko):
    """Sparse non-negative matrix factorisation of optical density into two stains."""

    name = "vahadane"

    def stain_matrix(self, od: np.ndarray) -> np.ndarray:
        import warnings

        from sklearn.decomposition import MiniBatchDictionaryLearning
        from sklearn.exceptions import ConvergenceWarning

        rng = np.random.default_rng(0)
        sample = od[rng.choice(len(od), min(len(od), FIT_PIXELS), replace=False)] if len(od) > FIT_PIXELS else od
        dl = MiniBatchDictionaryLearning(n_components=2, alpha=SPARSITY, batch_size=256, max_iter=20,
                                         fit_algorithm="cd", transform_algorithm="lasso_cd", positive_dict=True,
                                         positive_code=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            dl.fit(sample.astype(np.float64))
        return order_stains(dl.components_)
