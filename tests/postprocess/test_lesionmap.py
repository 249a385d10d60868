"""Tests of the learned lesion map (wsiheat.postprocess.scorer): features, fitting, the scorer file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsiheat.errors import WsiheatError
from wsiheat.postprocess.lesions import lesion_map, smooth_heatmap
from wsiheat.postprocess.scorer import (
    FEATURES,
    LesionScorer,
    fit_lesion_scorer,
    load_scorer,
    neighbourhood_features,
    save_scorer,
)


def test_features_by_hand():
    tissue = np.ones((7, 7), bool)
    tissue[:, 6] = False
    prob = np.zeros((7, 7))
    prob[1, 1] = 0.95              # a lone confident cell
    prob[4, 2] = prob[4, 3] = 0.9  # two confident neighbours
    prob[4, 4] = 0.6
    prob[0, 6] = 1.0               # off tissue: ignored
    f = neighbourhood_features(prob, tissue)
    assert f.shape == (7, 7, len(FEATURES))
    col = {name: f[..., i] for i, name in enumerate(FEATURES)}
    np.testing.assert_array_equal(col["prob"][1, 1], 0.95)
    assert col["best_neighbour"][1, 1] == 0.0                    # its neighbours are all 0
    assert col["best_neighbour"][4, 2] == col["best_neighbour"][4, 3] == 0.9
    assert col["best_neighbour"][4, 4] == 0.6                     # capped by itself
    assert col["share_3x3_0.5"][4, 3] == pytest.approx(3 / 9)    # 0.9, 0.9, 0.6
    assert col["share_3x3_0.9"][4, 3] == pytest.approx(2 / 9)
    assert col["share_3x3_0.9"][0, 5] == 0.0                      # the off-tissue 1.0 does not count
    np.testing.assert_allclose(col["smooth_0.75"], smooth_heatmap(prob, tissue, 0.75))
    assert not f[~tissue].any()
    with pytest.raises(ValueError, match="one shape"):
        neighbourhood_features(prob, tissue[:, :5])


def synthetic_map(rng, n=24, lesions=3, lone=6):
    """Normal tissue with lone confident false positives and a few confident blocks (the lesions)."""
    prob = rng.beta(1.2, 6.0, (n, n))
    tumor = np.zeros((n, n), bool)
    for _ in range(lesions):
        h, w = rng.integers(1, 4, 2) + 1
        r, c = rng.integers(1, n - 5, 2)
        tumor[r:r + h, c:c + w] = True
    prob[tumor] = rng.uniform(0.55, 0.95, tumor.sum())
    free = np.flatnonzero(~tumor)
    prob.ravel()[rng.choice(free, lone, replace=False)] = rng.uniform(0.9, 1.0, lone)
    return prob, np.ones((n, n), bool), tumor


def test_fit_ranks_groups_above_lone_cells(tmp_path):
    rng = np.random.default_rng(0)
    scorer = fit_lesion_scorer([synthetic_map(rng) for _ in range(20)], fitted={"what": "synthetic"})
    assert scorer.fitted["what"] == "synthetic" and scorer.fitted["class_weight"] == "balanced"
    assert scorer.fitted["tumor_cells"] > 0 and scorer.fitted["cells"] == 20 * 24 * 24
    # a fresh map: a lone 0.99 cell and a 2x2 block at 0.8; the raw map ranks the lone cell first
    prob = np.full((12, 12), 0.1)
    prob[2, 2] = 0.99
    prob[7:9, 7:9] = 0.8
    tissue = np.ones_like(prob, bool)
    m = scorer.apply(prob, tissue)
    assert m.shape == prob.shape and 0 <= m.min() and m.max() <= 1
    assert m[7:9, 7:9].min() > 0.5 > m[2, 2]
    assert lesion_map(prob, tissue, scorer=scorer) is not None
    np.testing.assert_array_equal(lesion_map(prob, tissue, scorer=scorer), m)
    np.testing.assert_array_equal(lesion_map(prob, tissue, 0.75), smooth_heatmap(prob, tissue, 0.75))
    # off tissue: 0
    tissue[7, 7] = False
    assert scorer.apply(prob, tissue)[7, 7] == 0.0
    # on fresh maps the scorer separates tumor cells better than the smoothed map
    from wsiheat.evaluation.metrics import roc_auc
    tests = [synthetic_map(rng) for _ in range(10)]
    y = np.concatenate([t.ravel() for _, _, t in tests])
    auc_scorer = roc_auc(y, np.concatenate([scorer.apply(p, ti).ravel() for p, ti, _ in tests]))
    auc_smooth = roc_auc(y, np.concatenate([smooth_heatmap(p, ti, 0.75).ravel() for p, ti, _ in tests]))
    assert auc_scorer > auc_smooth


def test_fit_needs_both_classes():
    prob = np.full((6, 6), 0.2)
    with pytest.raises(ValueError, match="tumor and normal"):
        fit_lesion_scorer([(prob, np.ones((6, 6), bool), np.zeros((6, 6), bool))])
    with pytest.raises(ValueError, match="c must be"):
        fit_lesion_scorer([(prob, np.ones((6, 6), bool), np.eye(6, dtype=bool))], c=0)


def test_scorer_file_round_trip_and_errors(tmp_path):
    s = LesionScorer(tuple(np.linspace(-1, 2, len(FEATURES))), -0.5, FEATURES, {"slides": 3})
    p = save_scorer(tmp_path / "s.json", s)
    assert [q.name for q in tmp_path.iterdir()] == ["s.json"]
    back = load_scorer(p)
    assert back == s and back.fitted == {"slides": 3}
    import pickle  # travels to Dask workers
    assert pickle.loads(pickle.dumps(s)) == s
    prob = np.random.default_rng(1).uniform(size=(9, 9))
    np.testing.assert_array_equal(back.apply(prob, prob > 0.2), s.apply(prob, prob > 0.2))
    d = json.loads(p.read_text())
    cases = {
        "missing.json": None,
        "junk.json": "{not json",
        "other.json": json.dumps({"format": "something-else"}),
        "version.json": json.dumps({**d, "version": 99}),
        "features.json": json.dumps({**d, "features": ["prob"] * len(FEATURES)}),
        "coef.json": json.dumps({**d, "coef": [1.0, 2.0]}),
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(WsiheatError) as exc:
            load_scorer(tmp_path / name)
        assert name in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="finite"):
        LesionScorer((float("nan"),) * len(FEATURES), 0.0)
