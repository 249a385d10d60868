"""Tests for wsiheat.evaluation.reports: ROC/AUC, patch and slide reports, the CAMELYON16 FROC and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _helpers import shared_path, write_patches
from PIL import Image
from scipy import ndimage as nd
from skimage import draw, measure

from wsiheat.cli.main import main
from wsiheat.errors import WsiheatError
from wsiheat.evaluation.froc import (
    SlideMatch,
    bootstrap_froc_ci,
    evaluation_mask,
    froc_curve,
    froc_from_arrays,
    froc_score,
    itc_labels,
    match_detections,
)
from wsiheat.evaluation.inputs import read_detections, read_patch_rows
from wsiheat.evaluation.metrics import (
    binary_metrics,
    bootstrap_auc_ci,
    bootstrap_patch_ci,
    roc_auc,
    roc_curve,
    youden_threshold,
)
from wsiheat.evaluation.reports import error_examples, evaluate_froc, patch_report
from wsiheat.evaluation.tuning import fit_scorer, tumor_cells, tune_postprocessing
from wsiheat.inference.predict import predict_patches
from wsiheat.postprocess.lesions import postprocess_scores

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
D = 32  # level-5 downsample


# ---------------------------------------------------------------------------------
# The official CAMELYON16 Evaluation_FROC.py, transcribed (Python 3 `//`, the mask
# given as a level-5 array with tumor = 255 instead of read through OpenSlide).
# Used as the independent reference the re-implementation must reproduce.
# ---------------------------------------------------------------------------------

def official_computeEvaluationMask(pixelarray, resolution, level):
    distance = nd.distance_transform_edt(255 - pixelarray)
    Threshold = 75 / (resolution * pow(2, level) * 2)
    binary = distance < Threshold
    filled_image = nd.binary_fill_holes(binary)
    evaluation_mask = measure.label(filled_image, connectivity=2)
    return evaluation_mask


def official_computeITCList(evaluation_mask, resolution, level):
    max_label = np.amax(evaluation_mask)
    properties = measure.regionprops(evaluation_mask)
    Isolated_Tumor_Cells = []
    threshold = 275 / (resolution * pow(2, level))
    for i in range(0, max_label):
        if properties[i].axis_major_length < threshold:
            Isolated_Tumor_Cells.append(i + 1)
    return Isolated_Tumor_Cells


def official_compute_FP_TP_Probs(Ycorr, Xcorr, Probs, is_tumor, evaluation_mask, Isolated_Tumor_Cells, level):
    max_label = np.amax(evaluation_mask)
    FP_probs = []
    TP_probs = np.zeros((max_label,), dtype=np.float32)
    if is_tumor:
        for i in range(0, len(Xcorr)):
            HittedLabel = evaluation_mask[Ycorr[i] // pow(2, level), Xcorr[i] // pow(2, level)]
            if HittedLabel == 0:
                FP_probs.append(Probs[i])
            elif HittedLabel not in Isolated_Tumor_Cells:
                if Probs[i] > TP_probs[HittedLabel - 1]:
                    TP_probs[HittedLabel - 1] = Probs[i]
    else:
        for i in range(0, len(Xcorr)):
            FP_probs.append(Probs[i])
    num_of_tumors = max_label - len(Isolated_Tumor_Cells)
    return FP_probs, TP_probs, num_of_tumors


def official_computeFROC(FROC_data):
    unlisted_FPs = [item for sublist in FROC_data[1] for item in sublist]
    unlisted_TPs = [item for sublist in FROC_data[2] for item in sublist]
    total_FPs, total_TPs = [], []
    all_probs = sorted(set(unlisted_FPs + unlisted_TPs))
    for Thresh in all_probs[1:]:
        total_FPs.append((np.asarray(unlisted_FPs) >= Thresh).sum())
        total_TPs.append((np.asarray(unlisted_TPs) >= Thresh).sum())
    total_FPs.append(0)
    total_TPs.append(0)
    total_FPs = np.asarray(total_FPs) / float(len(FROC_data[0]))
    total_sensitivity = np.asarray(total_TPs) / float(sum(FROC_data[3]))
    return total_FPs, total_sensitivity


def official_readCSVContent(csvDIR):
    Xcorr, Ycorr, Probs = ([] for i in range(3))
    csv_lines = open(csvDIR, "r").readlines()  # noqa: SIM115 (transcribed as is)
    for i in range(len(csv_lines)):
        line = csv_lines[i]
        elems = line.rstrip().split(",")
        Probs.append(float(elems[0]))
        Xcorr.append(int(elems[1]))
        Ycorr.append(int(elems[2]))
    return Probs, Xcorr, Ycorr


def official_read_mask(maskDIR, level):
    """The first lines of computeEvaluationMask: level ``level`` of the mask, channel 0, via OpenSlide."""
    import openslide

    slide = openslide.open_slide(str(maskDIR))
    dims = slide.level_dimensions[level]
    pixelarray = np.array(slide.read_region((0, 0), level, dims))
    return pixelarray[:, :, 0]


def official_froc(cases):
    """cases: list of (name, probs, xs, ys, level5 tumor mask or None); a bool mask is made 0/255,
    a uint8 one (as read by official_read_mask) is used as is."""
    FROC_data = [[], [], [], []]
    for name, probs, xs, ys, tumor in cases:
        is_tumor = tumor is not None
        if is_tumor:
            pixels = np.where(tumor, 255, 0).astype(np.uint8) if tumor.dtype == bool else tumor
            em = official_computeEvaluationMask(pixels, 0.243, 5)
            itc = official_computeITCList(em, 0.243, 5)
        else:
            em, itc = 0, []
        # Python floats and ints, as readCSVContent gives them (NumPy then compares the float32
        # TP array with a Python-float threshold in float32)
        probs, xs, ys = [float(p) for p in probs], [int(x) for x in xs], [int(y) for y in ys]
        fp, tp, n = official_compute_FP_TP_Probs(ys, xs, probs, is_tumor, em, itc, 5)
        FROC_data[0].append(name)
        FROC_data[1].append(fp)
        FROC_data[2].append(tp)
        FROC_data[3].append(n)
    fps, sens = official_computeFROC(FROC_data)
    eval_TPs = np.interp([.25, .5, 1, 2, 4, 8], fps[::-1], sens[::-1])
    return fps, sens, float(np.mean(eval_TPs))


# ---------------------------------------------------------------------------------
# ROC / AUC
# ---------------------------------------------------------------------------------

def brute_force_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (pos.size * neg.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 8 + y * 2) / 10  # many ties
    assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute_force_auc(y, s), abs=1e-12)
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_auc_extremes_and_single_class():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))
    with pytest.raises(WsiheatError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5, 0.05])
    m = binary_metrics(y, s, 0.5)  # predicted positive: .9 .6 .7 .5
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 2, 3)
    assert m["confusion_matrix"] == [[3, 2], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 5) / 2)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # Youden: J at thresholds .9: 1/3, .7: 1/3-1/5, .6: 2/3-1/5=.467, .5: 2/3-2/5, .3: 1-2/5=.6, ...
    assert youden_threshold(y, s) == 0.3


def test_bootstrap_interval_contains_auc_and_is_seeded():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 40)
    s = rng.normal(size=80) + y * 1.2
    auc = roc_auc(y, s)
    ci = bootstrap_auc_ci(y, s, n_boot=500, seed=3)
    assert ci["low"] < auc < ci["high"]
    assert 0 < ci["high"] - ci["low"] < 0.4
    assert ci == bootstrap_auc_ci(y, s, n_boot=500, seed=3)
    assert ci != bootstrap_auc_ci(y, s, n_boot=500, seed=4)


def test_patch_bootstrap_resamples_slides():
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(20), 50)
    y = rng.random(groups.size) < 0.35
    # a strong slide effect (stain, patient) shifts every score of a slide: patches are not independent
    s = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1.5, 20)[groups] + rng.normal(0, 0.8, groups.size))))
    auc = roc_auc(y, s)
    bacc = binary_metrics(y, s, 0.5)["balanced_accuracy"]
    by_slide = bootstrap_patch_ci(y, s, groups, n_boot=300, seed=1)
    by_patch = bootstrap_patch_ci(y, s, None, n_boot=300, seed=1)
    assert by_slide["unit"] == "slide" and by_slide["n_units"] == 20 and by_slide["n_used"] == 300
    assert by_patch["unit"] == "patch" and by_patch["n_units"] == groups.size
    for ci in (by_slide, by_patch):
        assert ci["auc"]["low"] < auc < ci["auc"]["high"]
        assert ci["balanced_accuracy"]["low"] < bacc < ci["balanced_accuracy"]["high"]

    def width(ci, key):
        return ci[key]["high"] - ci[key]["low"]

    # ignoring the slides understates the uncertainty
    assert width(by_slide, "auc") > 1.5 * width(by_patch, "auc")
    assert width(by_slide, "balanced_accuracy") > 1.2 * width(by_patch, "balanced_accuracy")
    assert by_slide == bootstrap_patch_ci(y, s, groups, n_boot=300, seed=1)
    # one slide: every resample is that slide, the interval is the figure itself
    one = bootstrap_patch_ci(y, s, np.zeros(groups.size, int), n_boot=20)
    assert one["auc"]["low"] == one["auc"]["high"] == auc
    assert one["balanced_accuracy"]["low"] == pytest.approx(bacc) == one["balanced_accuracy"]["high"]
    # one class only: no usable resample
    none = bootstrap_patch_ci(np.zeros(10), np.linspace(0, 1, 10), n_boot=5)
    assert none["n_used"] == 0 and np.isnan(none["auc"]["low"])
    with pytest.raises(WsiheatError, match="groups"):
        bootstrap_patch_ci(y, s, groups[:-1])
    with pytest.raises(WsiheatError, match="no patches"):
        bootstrap_patch_ci(np.zeros(0), np.zeros(0))
    with pytest.raises(WsiheatError, match="resamples"):
        bootstrap_patch_ci(y, s, groups, n_boot=0)
    # the patch report carries it, over slides
    rep = patch_report(y, s, groups, [f"s{i}" for i in range(20)])
    assert rep["ci"] == bootstrap_patch_ci(y, s, groups)
    assert patch_report(np.zeros(4), np.linspace(0, 1, 4))["ci"] is None


# ---------------------------------------------------------------------------------
# FROC building blocks, hand-computed
# ---------------------------------------------------------------------------------

def block_mask(shape, *blocks, points=()):
    m = np.zeros(shape, bool)
    for r0, r1, c0, c1 in blocks:
        m[r0:r1, c0:c1] = True
    for r, c in points:
        m[r, c] = True
    return m


def test_margin_is_distance_below_75um_over_2():
    tumor = block_mask((40, 40), points=[(20, 20)])
    labels = evaluation_mask(tumor)
    thr = 75 / (0.243 * 32 * 2)  # 4.82 level-5 pixels
    rr, cc = np.mgrid[:40, :40]
    assert np.array_equal(labels > 0, np.hypot(rr - 20, cc - 20) < thr)
    assert labels[20, 24] == 1 and labels[20, 25] == 0  # 4 px inside, 5 px outside
    assert labels[23, 23] == 1 and labels[24, 23] == 0  # sqrt(18) = 4.24 in, 5 out
    # another pixel size scales the margin: 0.5 µm/px -> 75/(0.5*64) = 2.34 px
    labels2 = evaluation_mask(tumor, mpp=0.5)
    assert labels2[20, 22] == 1 and labels2[20, 23] == 0


def test_holes_filled_and_8_connectivity():
    ring = np.zeros((60, 60), bool)
    ring[10:50, 10:50] = True
    ring[15:45, 15:45] = False  # a 30 px hole: wider than the margin, filled anyway
    labels = evaluation_mask(ring)
    assert labels.max() == 1 and labels[30, 30] == 1
    # two tumor pixels 5 rows and 9 columns apart: their grown discs touch only at a
    # corner, one lesion with 8-connectivity (it would be two with 4-connectivity)
    m = np.zeros((60, 60), bool)
    m[20, 20] = m[25, 29] = True
    lab = evaluation_mask(m)
    assert lab.max() == 1
    assert measure.label(lab > 0, connectivity=1).max() == 2
    m[25, 29] = False
    m[25, 30] = True  # one column further: two lesions
    assert evaluation_mask(m).max() == 2


def test_detection_hit_once_twice_margin_and_fp():
    tumor = block_mask((100, 100), (20, 50, 20, 60))  # a 30 x 40 px lesion at level 5
    labels = evaluation_mask(tumor)
    assert itc_labels(labels) == []
    y = 35 * D
    # once / twice on the same lesion: one TP at the max, no FP
    m1 = match_detections([0.6], [40 * D], [y], labels)
    # lesion scores are float32 as in the official code, false positives keep their value
    assert m1.tp_probs.dtype == np.float32 and m1.tp_probs.tolist() == [np.float32(0.6)] and m1.fp_probs.size == 0 and m1.num_tumors == 1
    m2 = match_detections([0.6, 0.9], [40 * D, 30 * D], [y, y], labels)
    assert m2.tp_probs.tolist() == [np.float32(0.9)] and m2.fp_probs.size == 0
    # tumor ends at column 59: column 63 (4 px, < 4.82) is inside, column 64 is outside
    inside_x, outside_x = 63 * D + D - 1, 64 * D
    m3 = match_detections([0.7, 0.8], [inside_x, outside_x], [y, y], labels)
    assert m3.tp_probs.tolist() == [np.float32(0.7)] and m3.fp_probs.tolist() == [0.8]
    # level-0 -> level-5 lookup is an integer division
    assert labels[y // D, inside_x // D] == 1 and labels[y // D, outside_x // D] == 0


def test_itc_lesion_is_ignored():
    tumor = block_mask((120, 120), (10, 50, 10, 60), points=[(100, 100)])
    labels = evaluation_mask(tumor)
    assert labels.max() == 2
    itc = itc_labels(labels)
    small = labels[100, 100]
    assert itc == [small]
    # a lesion just above / below 275 µm of major axis after growth
    thr = 275 / (0.243 * 32)
    for p in measure.regionprops(labels):
        assert (p.axis_major_length < thr) == (p.label in itc)
    m = match_detections([0.95, 0.4], [100 * D, 30 * D], [100 * D, 30 * D], labels, itc)
    assert m.fp_probs.size == 0  # the ITC hit is not a false positive
    assert m.num_tumors == 1  # nor a lesion to find
    assert m.tp_probs[small - 1] == 0  # the ITC entry stays 0, as in the official code
    assert m.tp_probs[labels[30, 30] - 1] == 0.4


def test_normal_slide_detections_are_false_positives():
    m = match_detections([0.2, 0.9], [5, 50_000], [7, 80_000], None)
    assert m.fp_probs.tolist() == [0.2, 0.9] and m.tp_probs.size == 0 and m.num_tumors == 0


def two_slide_case():
    """Slide A: lesions L1 (hit .9 and .6), L2 (hit .25), an ITC (hit .8), FP .7; slide B normal: FP .5 .3 .2."""
    tumor = block_mask((200, 200), (20, 50, 20, 60), (120, 150, 120, 160), points=[(100, 30)])
    a = (np.array([0.9, 0.6, 0.8, 0.25, 0.7]),
         np.array([40 * D + 5, 30 * D, 30 * D + 16, 140 * D, 100 * D]),
         np.array([35 * D + 7, 25 * D, 100 * D + 16, 135 * D, 180 * D]))
    b = (np.array([0.5, 0.3, 0.2]), np.array([100, 2000, 3000]), np.array([100, 4000, 5000]))
    return {"A": a, "B": b}, {"A": tumor, "B": None}


def test_froc_hand_computed():
    dets, masks = two_slide_case()
    res = froc_from_arrays(dets, masks)
    # pooled FP = .7 .5 .3 .2; TP = .9 (L1), .25 (L2), 0 (ITC); lowest (0) skipped:
    # t=.2: 4 FP -> 2.0/slide, 2/2 ; t=.25: 1.5, 1 ; t=.3: 1.5, .5 ; t=.5: 1.0, .5 ;
    # t=.7: .5, .5 ; t=.9: 0, .5 ; then (0, 0)
    assert res.fps_per_slide.tolist() == [2.0, 1.5, 1.5, 1.0, 0.5, 0.0, 0.0]
    assert res.sensitivity.tolist() == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0]
    # at .25 .5 1 -> .5 ; at 2 -> 1 ; at 4, 8 (past the curve) -> 1 ; mean .75
    assert res.sensitivities.tolist() == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert res.score == pytest.approx(0.75)
    # the official code gives the same
    cases = [(n, *dets[n], masks[n]) for n in sorted(dets)]
    fps, sens, score = official_froc(cases)
    assert np.array_equal(fps, res.fps_per_slide) and np.array_equal(sens, res.sensitivity)
    assert score == res.score


def test_froc_lowest_score_skipped_quirk():
    # one lesion found at .3, one FP at .6: the lowest unique score (.3) is not a
    # threshold, so the hit never counts: sensitivity 0 everywhere.
    tumor = block_mask((100, 100), (20, 60, 20, 60))
    res = froc_from_arrays({"T": (np.array([0.3, 0.6]), np.array([40 * D, 90 * D]), np.array([40 * D, 90 * D]))},
                             {"T": tumor})
    assert res.fps_per_slide.tolist() == [1.0, 0.0] and res.sensitivity.tolist() == [0.0, 0.0]
    assert res.score == 0.0


def random_matches(rng, n_slides, p_tumor=0.6):
    """SlideMatch objects: tumor slides with 1-4 lesions (some missed), false positives everywhere."""
    out = []
    for k in range(n_slides):
        fp = rng.random(int(rng.integers(0, 6)))
        if rng.random() < p_tumor:
            n_les = int(rng.integers(1, 5))
            tp = np.where(rng.random(n_les) < 0.8, 0.3 + 0.7 * rng.random(n_les), 0.0)
            out.append(SlideMatch(f"T{k}", fp, tp, n_les, [], np.zeros(0, np.int64)))
        else:
            out.append(SlideMatch(f"N{k}", fp, np.zeros(0), 0, [], None))
    return out


def test_froc_bootstrap_interval_resamples_slides():
    rng = np.random.default_rng(11)
    matches = random_matches(rng, 40)
    score = froc_score(*froc_curve(matches)[:2])[0]
    ci = bootstrap_froc_ci(matches, n_boot=400, seed=2)
    assert ci["low"] < score < ci["high"] and ci["high"] - ci["low"] < 0.5
    assert ci["n_used"] == 400 and ci["confidence"] == 0.95
    assert ci == bootstrap_froc_ci(matches, n_boot=400, seed=2)
    assert ci != bootstrap_froc_ci(matches, n_boot=400, seed=3)
    # more slides of the same kind: a narrower interval
    wide = bootstrap_froc_ci(matches[:10], n_boot=400, seed=2)
    assert wide["high"] - wide["low"] > ci["high"] - ci["low"]
    # copies of one slide: every resample is the same slides, the interval is the score itself
    tumor = next(m for m in matches if m.num_tumors and (m.tp_probs > 0).any())
    same = [tumor] * 5
    s_same = froc_score(*froc_curve(same)[:2])[0]
    c_same = bootstrap_froc_ci(same, n_boot=50)
    assert c_same["low"] == c_same["high"] == s_same
    # one tumor slide among normal ones: resamples without it have no lesion and are skipped
    normals = [m for m in matches if not m.num_tumors]
    few = bootstrap_froc_ci([tumor] + normals[:15], n_boot=300, seed=0)
    assert 0 < few["n_used"] < 300
    assert bootstrap_froc_ci(normals, n_boot=20)["n_used"] == 0
    assert np.isnan(bootstrap_froc_ci(normals, n_boot=20)["low"])
    with pytest.raises(WsiheatError, match="resamples"):
        bootstrap_froc_ci(matches, n_boot=0)
    with pytest.raises(WsiheatError, match="confidence"):
        bootstrap_froc_ci(matches, confidence=1.0)


def random_blobs(rng, shape, n):
    m = np.zeros(shape, bool)
    for _ in range(n):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, 30, 2)
        m[r:r + h, c:c + w] = True
    return m


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_official_code_on_random_slides(seed, tmp_path):
    """evaluate_froc on real files against the transcribed Evaluation_FROC.py reading the same files.

    Five slides per seed, always compared: slide 0 always holds a lesion too long to be an
    ITC; the others are a level-5 mask TIFF of a slide whose size is not a multiple of 32,
    a full-resolution pyramid of odd size (ceil sizes, as tests/_tiff.py writes), an ASAP
    pyramid (floor sizes), or a normal slide; scores have 6 decimals with ties across
    slides and between false positives and lesions.
    """
    import tifffile
    from _tiff import write_mask_tiff

    rng = np.random.default_rng(seed)
    (tmp_path / "gt").mkdir()
    kinds = ["level5", "ceil", "asap", "level5", "normal"]
    slides, masks, ref = {}, {}, ["slide,label"]
    for k, kind in enumerate(kinds):
        w5, h5 = int(rng.integers(50, 90)), int(rng.integers(50, 90))
        W, H = w5 * D - int(rng.integers(1, 32)), h5 * D - int(rng.integers(1, 32))  # never a multiple of 32
        name = f"{'Normal' if kind == 'normal' else 'Tumor'}_{k:03d}"
        ref.append(f"{name},{int(kind != 'normal')}")
        # the level-5 extent the official code can index (it reads the stored level only)
        ew, eh = (W // D, H // D) if kind == "asap" else (w5, h5)
        if kind != "normal":
            level0 = np.zeros((H, W), np.uint8)
            n_blobs = int(rng.integers(1, 8))
            for b in range(n_blobs):
                # level-0 rectangles off the 32-pixel grid, away from the right/bottom edge
                # (6 level-5 px: wsiheat's mask has ceil sizes, the stored ASAP level floor sizes)
                bw, bh = (int(rng.integers(1200, 1600)), 40) if k == 0 and b == 0 else rng.integers(1, 700, 2)
                x = int(rng.integers(0, max(1, (ew - 7) * D - bw)))
                y = int(rng.integers(0, max(1, (eh - 7) * D - bh)))
                level0[y:y + bh, x:x + bw] = 255
            path = tmp_path / "gt" / f"{name}_Mask.tif"
            if kind == "level5":
                write_mask_tiff(path, level0[::D, ::D], 1, tile=64)
            elif kind == "ceil":
                write_mask_tiff(path, level0, 6, tile=256)
            else:
                write_asap_mask_tiff(path, level0, 6, tile=256)
            masks[name] = path
            stored = level0[::D, ::D] if kind != "asap" else tifffile.imread(path, key=5)
            assert stored.shape == (eh, ew)
        n = int(rng.integers(1, 60))
        probs = np.round(rng.random(n), 6)
        tie = rng.random(n) < 0.3
        probs[tie] = rng.choice([0.3, 0.7, 0.1, 0.123457], tie.sum())  # float32 rounds some up, some down
        xmax, ymax = min(ew * D, W), min(eh * D, H)  # inside the slide and the stored level
        xs, ys = rng.integers(0, xmax, n), rng.integers(0, ymax, n)
        if kind != "normal":  # detections on and around the tumor too
            on = np.argwhere(stored > 0)
            pick = on[rng.integers(0, len(on), n // 2)]
            xs[: n // 2] = np.clip(pick[:, 1] * D + rng.integers(-200, 232, n // 2), 0, xmax - 1)
            ys[: n // 2] = np.clip(pick[:, 0] * D + rng.integers(-200, 232, n // 2), 0, ymax - 1)
        slides[name] = ((W, H), "".join(f"{p:.6f},{x},{y}\n" for p, x, y in zip(probs, xs, ys)))
    (tmp_path / "ref.csv").write_text("\n".join(ref) + "\n")
    rep = froc_files(tmp_path, slides, masks, reference=tmp_path / "ref.csv")
    assert rep["n_lesions"] >= 1
    # the official code: level 5 of each mask (level 0 of a level-5 mask), read by OpenSlide
    cases = []
    for name in sorted(slides):
        probs, xs, ys = official_readCSVContent(tmp_path / "results" / f"{name}_lesions.csv")
        tumor = None
        if name in masks:
            level = 0 if kinds[int(name[-3:])] == "level5" else 5
            tumor = official_read_mask(masks[name], level)
        cases.append((name, probs, xs, ys, tumor))
    fps, sens, score = official_froc(cases)
    curve = np.loadtxt(tmp_path / "eval" / "froc_curve.csv", delimiter=",", skiprows=1, ndmin=2)
    assert np.array_equal(fps, curve[:, 1])
    assert np.array_equal(sens, curve[:, 2])
    assert rep["froc_score"] == score


# ---------------------------------------------------------------------------------
# Issue 20: the same FROC as Evaluation_FROC.py on mask TIFFs of odd slide sizes,
# full-resolution mask pyramids and 6-decimal scores (real TIFF and CSV files)
# ---------------------------------------------------------------------------------

def write_asap_mask_tiff(path, level0, n_levels, tile=16):
    """A mask pyramid as ASAP's MultiResolutionImageWriter stores it: level k has
    floor(W / 2**k) x floor(H / 2**k) pixels, level[k][i, j] = level[k-1][2i, 2j]."""
    import tifffile

    H, W = level0.shape
    with tifffile.TiffWriter(path) as tw:
        for k in range(n_levels):
            d = 2 ** k
            tw.write(np.ascontiguousarray(level0[::d, ::d][:H // d, :W // d]), tile=(tile, tile),
                     photometric="minisblack", compression="zlib", subfiletype=1 if k else 0)


def froc_files(tmp_path, slides, masks, reference=None):
    """Write heatmap-style results (NAME.json with ``dimensions``, NAME_lesions.csv) for
    ``slides`` {name: ((W, H), csv text)} and run ``evaluate_froc`` on the ground-truth
    files ``masks`` {name: path}; returns the report."""
    res = tmp_path / "results"
    res.mkdir(exist_ok=True)
    for name, (dims, text) in slides.items():
        (res / f"{name}.json").write_text(json.dumps({"slide": name, "score": 0.5, "dimensions": list(dims)}))
        (res / f"{name}_lesions.csv").write_text(text)
    return evaluate_froc(res, sorted(str(p) for p in masks.values()), tmp_path / "eval", reference=reference,
                           progress=False)


def official_froc_files(tmp_path, slides, masks, level=5):
    """Evaluation_FROC.py on the same files: CSVs read by readCSVContent, masks by OpenSlide at ``level``."""
    cases = []
    for name in sorted(slides):
        probs, xs, ys = official_readCSVContent(tmp_path / "results" / f"{name}_lesions.csv")
        tumor = official_read_mask(masks[name], level) if name in masks else None
        cases.append((name, probs, xs, ys, tumor))
    return official_froc(cases)[2]


def bar_mask_level5():
    """The issue's minimal mask: 40 x 40 at level 5, a bar at row 20, columns 5-30 (0/255)."""
    m = np.zeros((40, 40), np.uint8)
    m[20, 5:31] = 255
    return m


MINIMAL_DETECTIONS = "0.9,5,645\n0.1,1216,1216\n"  # 5 columns left of the bar: 5 px away, a FP


@pytest.mark.parametrize("dims", [(1280, 1280), (1279, 1280), (1249, 1262)])
def test_froc_level5_mask_of_a_slide_not_a_multiple_of_32(tmp_path, dims):
    # the mask is read as its own level (downsample 32), not at the mean ratio (31.99 for
    # 1279 x 1280), which used to grow it by a pixel towards the top-left and turn the
    # detection 5 px left of the bar into a hit: FROC 1.0 instead of 0.0
    from _tiff import write_mask_tiff

    from wsiheat.wsi.annotations import load_ground_truth

    (tmp_path / "gt").mkdir()
    mask = tmp_path / "gt" / "Tumor_001_Mask.tif"
    write_mask_tiff(mask, bar_mask_level5(), 1, tile=16)
    gt = load_ground_truth(mask, dims)
    assert gt.scale == 32
    assert np.array_equal(gt.level_mask(5, dims), bar_mask_level5() > 0)
    slides = {"Tumor_001": (dims, MINIMAL_DETECTIONS)}
    rep = froc_files(tmp_path, slides, {"Tumor_001": mask})
    assert rep["froc_score"] == 0.0
    assert rep["per_slide"][0]["false_positives"] == 2 and rep["n_lesions"] == 1
    assert official_froc_files(tmp_path, slides, {"Tumor_001": mask}, level=0) == 0.0


@pytest.mark.parametrize("pyramid", ["ceil", "asap"])
def test_froc_full_resolution_mask_pyramid_of_odd_size(tmp_path, pyramid):
    # a 1279 x 1280 mask pyramid: OpenSlide's level-5 downsample is 31.9875 (ceil sizes) or
    # 32.39 (ASAP's floor sizes, 39 x 40); level 5 must be read as stored (26 tumor pixels),
    # not pooled from level 4 or dilated (54)
    import tifffile
    from _tiff import write_mask_tiff

    from wsiheat.wsi.annotations import load_ground_truth

    level0 = np.zeros((1280, 1279), np.uint8)
    level0[640:672, 160:992] = 255  # level 5: row 20, columns 5-30
    (tmp_path / "gt").mkdir()
    mask = tmp_path / "gt" / "Tumor_001_Mask.tif"
    if pyramid == "ceil":
        write_mask_tiff(mask, level0, 6, tile=64)
    else:
        write_asap_mask_tiff(mask, level0, 6)
    stored = tifffile.imread(mask, key=5) > 0
    assert stored.sum() == 26
    gt = load_ground_truth(mask, (1279, 1280))
    got = gt.level_mask(5, (1279, 1280))
    assert got.shape == (40, 40) and got.sum() == 26
    assert np.array_equal(got[:stored.shape[0], :stored.shape[1]], stored)
    # a region away from the origin reads the same stored pixels
    assert np.array_equal(gt.tumor_mask(20 * 32, 19 * 32, 20, 3, 32.0), got[19:22, 20:40])
    slides = {"Tumor_001": ((1279, 1280), MINIMAL_DETECTIONS)}
    rep = froc_files(tmp_path, slides, {"Tumor_001": mask})
    assert rep["froc_score"] == official_froc_files(tmp_path, slides, {"Tumor_001": mask}) == 0.0


def test_froc_six_decimal_ties_are_ranked_as_float32(tmp_path):
    # a FP and a lesion tie at 0.300000 in the CSV; the official code keeps the lesion's
    # score as float32(0.3) > 0.3, so they are two thresholds: FROC 2/3 (float64: 0.5)
    from _tiff import write_mask_tiff

    (tmp_path / "gt").mkdir()
    mask = tmp_path / "gt" / "Tumor_001_Mask.tif"
    write_mask_tiff(mask, bar_mask_level5(), 1, tile=16)
    text = "0.300000,320,640\n0.300000,64,64\n0.500000,1216,1216\n0.100000,64,1216\n"
    slides = {"Tumor_001": ((1280, 1280), text)}
    rep = froc_files(tmp_path, slides, {"Tumor_001": mask})
    official = official_froc_files(tmp_path, slides, {"Tumor_001": mask}, level=0)
    assert official == pytest.approx(2 / 3)
    assert rep["froc_score"] == official
    # the same in the pure function: a lesion counts at t when float32(score) >= float32(t)
    m = SlideMatch("T", np.array([0.3, 0.5, 0.1]), np.array([0.3]), 1, [], np.zeros(0, np.int64))
    _, sens, thr = froc_curve([m])
    assert thr[:3].tolist() == [0.3, float(np.float32(0.3)), 0.5]
    assert sens.tolist() == [1.0, 1.0, 0.0, 0.0]
    # a tie whose float32 value is below the CSV value: the lesion counts at both thresholds
    assert float(np.float32(0.7)) < 0.7
    m = SlideMatch("T", np.array([0.7, 0.9]), np.array([0.7, 0.0]), 2, [], np.zeros(0, np.int64))
    _, sens, thr = froc_curve([m])
    assert thr[:2].tolist() == [float(np.float32(0.7)), 0.7] and sens[:2].tolist() == [0.5, 0.5]


def test_read_detections_header_blank_lines_and_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("prob,x,y\n0.5,10,20\n\n0.25,30.7,40\n")
    probs, xs, ys = read_detections(p)
    assert probs.tolist() == [0.5, 0.25] and xs.tolist() == [10, 30] and ys.tolist() == [20, 40]
    p.write_text("0.5,10,20\n")  # no header, the CAMELYON16 submission format
    assert read_detections(p)[1].tolist() == [10]
    for bad, msg in [("nan,1,2\n", "not in \\[0, 1\\]"), ("1.5,1,2\n", "not in \\[0, 1\\]"),
                     ("-0.1,1,2\n", "not in \\[0, 1\\]"), ("0.5,a,2\n", "expected numbers"),
                     ("0.5,1\n", "expected 'prob,x,y'"), ("0.5,-3,2\n", "coordinates"), ("", "no detections"),
                     ("prob,x,y\n", "no detections")]:
        p.write_text(bad)
        with pytest.raises(WsiheatError, match=msg):
            read_detections(p)
    assert read_detections(p, allow_empty=True)[0].size == 0


# ---------------------------------------------------------------------------------
# Real CAMELYON16 annotations
# ---------------------------------------------------------------------------------

@pytest.fixture
def shared(shared_data):
    return shared_data


def skimage_level5_mask(json_path, shape):
    """Independent rasterization: skimage.draw.polygon (pixel centres inside) plus the
    outline pixels (skimage.draw.polygon_perimeter), union of positives minus negatives."""
    data = json.loads(Path(json_path).read_text())
    m = np.zeros(shape, bool)
    for key, value in (("positive", True), ("negative", False)):
        for poly in data[key]:
            v = np.asarray(poly["vertices"], float) / D - 0.5  # pixel-centre coordinates
            rr, cc = draw.polygon(v[:, 1], v[:, 0], shape)
            m[rr, cc] = value
            rr, cc = draw.polygon_perimeter(np.round(v[:, 1]), np.round(v[:, 0]), shape)
            m[rr, cc] = value
    return m


@pytest.mark.parametrize("name", ["Tumor_071", "Tumor_023"])
def test_real_annotations_lesion_count(shared, name):
    from wsiheat.wsi.annotations.groundtruth import load_ground_truth

    path = shared_path("camelyon16-annotations", f"{name}.json")
    n_polys = len(json.loads(path.read_text())["positive"])
    gt = load_ground_truth(path)
    W, H = gt.extent
    shape = (math.ceil(H / D), math.ceil(W / D))
    ours = evaluation_mask(gt.tumor_mask(0, 0, shape[1], shape[0], D))
    ours_itc = itc_labels(ours)
    ref = official_computeEvaluationMask(np.where(skimage_level5_mask(path, shape), 255, 0).astype(np.uint8),
                                         0.243, 5)
    ref_itc = official_computeITCList(ref, 0.243, 5)
    assert ours.max() == ref.max()
    assert len(ours_itc) == len(ref_itc)
    assert 1 <= ours.max() <= n_polys  # polygons merge once grown by 37.5 µm, never split
    if name == "Tumor_071":
        assert n_polys == 41


# ---------------------------------------------------------------------------------
# Files and CLI
# ---------------------------------------------------------------------------------

def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def write_froc_folder(tmp_path, dets=None, masks=None):
    """Heatmap-style results (NAME.json + NAME_lesions.csv) and level-5 PNG masks."""
    if dets is None:
        dets, masks = two_slide_case()
    res, gt = tmp_path / "results", tmp_path / "gt"
    res.mkdir(exist_ok=True)
    gt.mkdir(exist_ok=True)
    for name, (probs, xs, ys) in dets.items():
        shape = masks[name].shape if masks[name] is not None else (200, 200)
        (res / f"{name}.json").write_text(json.dumps({"slide": name, "score": float(probs.max()),
                                                      "dimensions": [shape[1] * D, shape[0] * D], "mpp": 0.243}))
        (res / f"{name}_lesions.csv").write_text("".join(f"{float(p)!r},{x},{y}\n" for p, x, y in zip(probs, xs, ys)))
        m = masks[name] if masks[name] is not None else np.zeros(shape, bool)
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(gt / f"{name}_Mask.png")
    return res, gt


def test_cli_froc_end_to_end(tmp_path, capsys):
    res, gt = write_froc_folder(tmp_path)
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", str(out)], capsys)
    assert code == 0, err
    rep = json.loads((out / "froc_report.json").read_text())
    assert rep["froc_score"] == pytest.approx(0.75)
    assert rep["n_lesions"] == 2 and rep["n_itc"] == 1 and rep["n_slides"] == 2
    assert "0.7500" in stdout
    ci = rep["froc_ci"]
    assert ci["low"] <= 0.75 <= ci["high"] and ci["n_boot"] == 1000
    assert f"95% CI [{ci['low']:.4f}, {ci['high']:.4f}]" in stdout
    png = Image.open(out / "froc.png")
    assert png.size[0] > 100
    curve = (out / "froc_curve.csv").read_text().splitlines()
    assert curve[0] == "threshold,fps_per_slide,sensitivity" and len(curve) == 8
    lesions = (out / "froc_lesions.csv").read_text().splitlines()
    assert len(lesions) == 4  # header + L1, L2, ITC
    assert not list(out.glob(".*part*"))
    # ground-truth files after RESULTS (as a shell glob gives them) instead of -g: the same report
    out2 = tmp_path / "eval2"
    code, _, err = run_cli(["evaluate", "froc", str(res), *sorted(str(p) for p in gt.glob("*_Mask.png")),
                            "-o", str(out2)], capsys)
    assert code == 0, err
    rep2 = json.loads((out2 / "froc_report.json").read_text())
    assert rep2["froc_score"] == rep["froc_score"] and rep2["per_slide"] == rep["per_slide"]
    assert len(rep2["ground_truth"]) == 2
    code, _, err = run_cli(["evaluate", "froc", str(res), "-o", str(out2)], capsys)
    assert code == 2 and "no ground truth" in err
    # the same for slide AUC: a slide is tumor when its mask marks tumor
    code, _, err = run_cli(["evaluate", "slides", str(res), *sorted(str(p) for p in gt.glob("*_Mask.png")),
                            "-o", str(tmp_path / "es")], capsys)
    assert code == 0, err
    srep = json.loads((tmp_path / "es" / "slide_report.json").read_text())
    assert srep["n"] == 2 and srep["n_tumor"] == 1
    # a reference CSV lets the normal slide go without ground truth
    (gt / "B_Mask.png").unlink()
    ref = tmp_path / "ref.csv"
    ref.write_text("slide,label\nA,Tumor\nB,Normal\n")
    code, _, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-r", str(ref), "-o", str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "froc_report.json").read_text())["froc_score"] == pytest.approx(0.75)


def one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsiheat: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_froc_bad_input(tmp_path, capsys):
    res, gt = write_froc_folder(tmp_path)
    out = str(tmp_path / "eval")
    # detections without ground truth
    (res / "C_lesions.csv").write_text("0.5,1,1\n")
    (res / "C.json").write_text(json.dumps({"slide": "C", "score": 0.5, "dimensions": [100, 100]}))
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2], "C",
                   "no match")
    (res / "C_lesions.csv").unlink()
    (res / "C.json").unlink()
    # ground truth without detections
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(gt / "D_Mask.png")
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2], "D",
                   "no match")
    (gt / "D_Mask.png").unlink()
    # empty detection file, then accepted with --allow-empty
    good = (res / "B_lesions.csv").read_text()
    (res / "B_lesions.csv").write_text("")
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2],
                   "B_lesions.csv", "no detections")
    code, _, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out, "--allow-empty"], capsys)
    assert code == 0, err
    # ... and accepted without the flag when the heatmap JSON says it found no lesion
    meta_b = json.loads((res / "B.json").read_text()) if (res / "B.json").exists() else {"slide": "B"}
    (res / "B.json").write_text(json.dumps({**meta_b, "lesions": 0}))
    code, _, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)
    assert code == 0, err
    (res / "B.json").write_text(json.dumps({**meta_b, "lesions": 3}))
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2],
                   "B_lesions.csv", "no detections")
    # NaN and out-of-range probabilities
    for bad in ("nan,10,10\n", "1.01,10,10\n"):
        (res / "B_lesions.csv").write_text(good + bad)
        one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2],
                       "B_lesions.csv", "not in [0, 1]")
    (res / "B_lesions.csv").write_text(good)
    # a detection outside the slide
    (res / "A_lesions.csv").write_text("0.5,6400,10\n")
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2],
                   "A_lesions.csv", "outside")
    (res / "A_lesions.csv").write_text("0.5,10,10\n")
    # a mask whose size does not fit the slide (not proportional)
    Image.fromarray(np.zeros((200, 120), np.uint8)).save(gt / "A_Mask.png")
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2],
                   "A_Mask.png", "not proportional")
    # polygons beyond the slide
    (gt / "A_Mask.png").unlink()
    (gt / "A.json").write_text(json.dumps({"positive": [{"name": "t", "vertices": [[100, 100], [20000, 100],
                                                                                   [20000, 9000]]}],
                                           "negative": []}))
    one_line_error(*run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out], capsys)[::2],
                   "A.json", "outside the slide")
    # mpp must be positive
    code, _, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", out, "--mpp", "0"], capsys)
    one_line_error(code, err, "pixel size")


def test_cli_froc_polygon_ground_truth_and_mpp(tmp_path, capsys):
    # the same lesion as a JSON polygon; a detection 4.5 level-5 px right of the
    # tumor edge is a hit at 0.243 µm/px (margin 4.82 px) and a FP at 0.3 µm/px (3.9 px)
    res, gt = tmp_path / "r", tmp_path / "g"
    res.mkdir()
    gt.mkdir()
    # vertices a quarter pixel off the level-5 grid: columns 20..59, rows 20..49 whatever
    # the rasterizer does with pixels its outline touches
    poly = [[20 * D + 8, 20 * D + 8], [60 * D - 8, 20 * D + 8], [60 * D - 8, 50 * D - 8], [20 * D + 8, 50 * D - 8]]
    (gt / "T.json").write_text(json.dumps({"positive": [{"name": "t", "vertices": poly}], "negative": []}))
    (gt / "N.json").write_text(json.dumps({"positive": [], "negative": []}))
    x_edge = 64 * D + 16  # tumor pixels end at column 59: column 64 is 5 px away -> FP at any mpp
    x_in = 63 * D + 16  # 4 px: inside at 0.243 (4.82), outside at 0.3 (3.9)
    (res / "T_lesions.csv").write_text(f"prob,x,y\n0.9,{x_in},{35 * D}\n0.4,{x_edge},{35 * D}\n")
    (res / "N_lesions.csv").write_text("0.2,100,100\n")
    for name in "TN":
        (res / f"{name}.json").write_text(json.dumps({"slide": name, "score": 0.9, "dimensions": [6400, 6400]}))
    out = tmp_path / "o"
    code, _, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", str(out)], capsys)
    assert code == 0, err
    rep = json.loads((out / "froc_report.json").read_text())
    t = next(s for s in rep["per_slide"] if s["slide"] == "T")
    assert (t["lesions"], t["lesions_hit"], t["false_positives"]) == (1, 1, 1)
    code, _, err = run_cli(["evaluate", "froc", str(res), "-g", str(gt), "-o", str(out), "--mpp", "0.3"], capsys)
    assert code == 0, err
    rep = json.loads((out / "froc_report.json").read_text())
    t = next(s for s in rep["per_slide"] if s["slide"] == "T")
    assert (t["lesions"], t["lesions_hit"], t["false_positives"]) == (1, 0, 2)
    assert rep["margin_threshold_px"] == pytest.approx(75 / (0.3 * 64))


def test_cli_slides(tmp_path, capsys):
    rng = np.random.default_rng(0)
    res = tmp_path / "res"
    res.mkdir()
    names = [f"S{i:02d}" for i in range(30)]
    labels = np.array([i % 3 == 0 for i in range(30)], int)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    for n, s in zip(names, scores):
        (res / f"{n}.json").write_text(json.dumps({"slide": n, "score": float(s), "dimensions": [640, 640]}))
    (res / "unrelated.json").write_text(json.dumps({"something": 1}))  # not a heatmap result: ignored
    ref = tmp_path / "ref.csv"
    ref.write_text("slide,label\n" + "".join(f"{n}.tif,{'Tumor' if l else 'Normal'}\n" for n, l in zip(names, labels)))
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["evaluate", "slides", str(res), "-r", str(ref), "-o", str(out), "--seed", "1"],
                                capsys)
    assert code == 0, err
    rep = json.loads((out / "slide_report.json").read_text())
    assert rep["auc"] == pytest.approx(brute_force_auc(labels, scores))
    assert rep["auc_ci"]["low"] <= rep["auc"] <= rep["auc_ci"]["high"]
    table = (out / "slide_table.csv").read_text().splitlines()
    assert table[0] == "rank,slide,score,label" and len(table) == 31
    top = table[1].split(",")
    assert top[0] == "1" and top[1] == names[int(np.argmax(scores))]
    assert Image.open(out / "slide_roc.png").size[0] > 100
    # --score topk_mean ranks by the top-k mean field instead of the maximum
    topk = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    for n, s, t in zip(names, scores, topk):
        (res / f"{n}.json").write_text(json.dumps({"slide": n, "score": float(s), "topk_mean": float(t),
                                                   "dimensions": [640, 640]}))
    code, _, err = run_cli(["evaluate", "slides", str(res), "-r", str(ref), "-o", str(tmp_path / "evk"),
                            "--score", "topk_mean"], capsys)
    assert code == 0, err
    repk = json.loads((tmp_path / "evk" / "slide_report.json").read_text())
    assert repk["score_field"] == "topk_mean"
    assert repk["auc"] == pytest.approx(brute_force_auc(labels, topk))
    assert repk["auc"] != pytest.approx(rep["auc"])
    # ground truth as reference: tumor when any tumor; here three slides
    gt = tmp_path / "gt"
    gt.mkdir()
    for n, l in zip(names[:3], labels[:3]):
        m = np.zeros((20, 20), np.uint8)
        m[5, 5] = 255 * l
        Image.fromarray(m).save(gt / f"{n}_Mask.png")
    res3 = tmp_path / "res3"
    res3.mkdir()
    for n in names[:3]:
        (res3 / f"{n}.json").write_text((res / f"{n}.json").read_text())
    code, _, err = run_cli(["evaluate", "slides", str(res3), "-g", str(gt), "-o", str(out)], capsys)
    assert code == 0, err
    rep = json.loads((out / "slide_report.json").read_text())
    assert [r["label"] for r in sorted(rep["slides"], key=lambda r: r["slide"])] == labels[:3].tolist()
    # unmatched names, both directions
    ref.write_text("slide,label\n" + "".join(f"{n},{l}\n" for n, l in zip(names[1:], labels[1:])))
    one_line_error(*run_cli(["evaluate", "slides", str(res), "-r", str(ref), "-o", str(out)], capsys)[::2],
                   "S00", "no match")
    ref.write_text("slide,label\nX99,1\n" + "".join(f"{n},{l}\n" for n, l in zip(names, labels)))
    one_line_error(*run_cli(["evaluate", "slides", str(res), "-r", str(ref), "-o", str(out)], capsys)[::2],
                   "X99", "no match")
    # a NaN score
    (res / "S05.json").write_text(json.dumps({"slide": "S05", "score": float("nan")}))
    ref.write_text("slide,label\n" + "".join(f"{n},{l}\n" for n, l in zip(names, labels)))
    one_line_error(*run_cli(["evaluate", "slides", str(res), "-r", str(ref), "-o", str(out)], capsys)[::2],
                   "S05.json", "probability")


# ---------------------------------------------------------------------------------
# Patch level with a tiny real Keras model
# ---------------------------------------------------------------------------------

def tiny_model(T=2, W=8):
    import keras

    inp = keras.Input(shape=(T, W, W, 3), dtype="uint8")
    x = keras.layers.Rescaling(1.0 / 255.0)(keras.ops.cast(inp, "float32"))
    x = keras.layers.Reshape((T * W * W, 3))(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid")
    out = dense(x)
    dense.set_weights([np.array([[8.0], [0.0], [0.0]], np.float32), np.array([-4.0], np.float32)])
    return keras.Model(inp, out)


def test_cli_patches(tmp_path, capsys):

    from wsiheat.models.model import save_model

    rng = np.random.default_rng(0)
    N, T, W = 70, 2, 8
    labels = (rng.random(N) < 0.4).astype(np.uint8)
    red = np.clip(rng.normal(100 + 60 * labels, 40), 0, 255)
    images = np.zeros((N, T, W, W, 3), np.uint8)
    images[..., 0] = red[:, None, None, None].astype(np.uint8)
    images[..., 1] = 128
    slide_ids = (np.arange(N) >= 50).astype(np.int32)
    labels[50:] = 0  # slide 1 is normal
    h5p = tmp_path / "p.h5"
    write_patches(h5p, images, labels, slide_ids, ["alpha", "beta"], chunk=16)
    model = tiny_model(T, W)
    mp = tmp_path / "m.keras"
    save_model(model, mp, {"window": W, "center": 4, "stride": 4, "downsamples": [1, 4], "towers": T})
    expected = model.predict(images, verbose=0)[:, 0].astype(np.float64)
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["evaluate", "patches", "-m", str(mp), "-p", str(h5p), "-o", str(out),
                                 "--batch-size", "16", "--backend", "tensorflow", "--precision", "float32"], capsys)
    assert code == 0, err
    rep = json.loads((out / "patch_report.json").read_text())
    assert rep["n"] == N and rep["n_tumor"] == int(labels.sum())
    assert rep["auc"] == pytest.approx(brute_force_auc(labels, expected), abs=1e-6)
    cm = rep["at_0.5"]["confusion_matrix"]
    pred = expected >= 0.5
    assert cm == [[int((~pred & (labels == 0)).sum()), int((pred & (labels == 0)).sum())],
                  [int((~pred & (labels == 1)).sum()), int((pred & (labels == 1)).sum())]]
    assert rep["at_youden"]["balanced_accuracy"] >= rep["at_0.5"]["balanced_accuracy"] - 1e-12
    per = {p["slide"]: p for p in rep["per_slide"]}
    assert per["alpha"]["n"] == 50 and per["beta"]["n"] == 20 and per["beta"]["auc"] is None
    # intervals over the 2 slides, printed beside the figures
    ci = rep["ci"]
    assert ci["unit"] == "slide" and ci["n_units"] == 2 and 0 < ci["n_used"] < ci["n_boot"]
    assert ci["auc"]["low"] <= rep["auc"] <= ci["auc"]["high"]
    assert f"AUC {rep['auc']:.4f} [{ci['auc']['low']:.4f}, {ci['auc']['high']:.4f}]" in stdout
    bacc = rep["at_0.5"]["balanced_accuracy"]
    assert f"balanced accuracy {bacc:.4f} [" in stdout and "bootstrap intervals over 2 slides" in stdout
    preds = (out / "patch_predictions.csv").read_text().splitlines()
    assert len(preds) == N + 1
    assert np.allclose([float(r.split(",")[-1]) for r in preds[1:]], expected, atol=1e-6)
    assert Image.open(out / "patch_roc.png").size[0] > 100
    # the error gallery: the most confident mistakes, as the scores say
    fp_rows = [i for i in np.argsort(-expected, kind="stable") if labels[i] == 0 and expected[i] >= 0.5][:16]
    fn_rows = [i for i in np.argsort(expected, kind="stable") if labels[i] == 1 and expected[i] < 0.5][:16]
    assert fp_rows and fn_rows
    assert rep["errors_shown"] == {"false_positives": fp_rows, "false_negatives": fn_rows}
    assert rep["files"]["errors"] == "patch_errors.png" and Image.open(out / "patch_errors.png").size[0] > 400
    # a patches file that does not fit the model
    bad = tmp_path / "bad.h5"
    write_patches(bad, np.zeros((4, T, 10, 10, 3), np.uint8), np.zeros(4, np.uint8), np.zeros(4, np.int32), ["s"])
    one_line_error(*run_cli(["evaluate", "patches", "-m", str(mp), "-p", str(bad), "-o", str(out)], capsys)[::2],
                   "bad.h5", "do not fit")
    noth5 = tmp_path / "x.h5"
    noth5.write_text("hello")
    one_line_error(*run_cli(["evaluate", "patches", "-m", str(mp), "-p", str(noth5), "-o", str(out)], capsys)[::2],
                   "x.h5", "not an HDF5")


def test_error_examples_by_hand():
    labels = np.array([0, 0, 1, 1, 0, 1, 0])
    scores = np.array([0.9, 0.6, 0.1, 0.7, 0.9, 0.4, 0.2])
    fp, fn = error_examples(labels, scores, k=16)
    assert fp.tolist() == [0, 4, 1] and fn.tolist() == [2, 5]  # ties keep row order
    fp, fn = error_examples(labels, scores, k=1)
    assert fp.tolist() == [0] and fn.tolist() == [2]
    fp, fn = error_examples(labels, scores, threshold=0.05)
    assert fp.tolist() == [0, 4, 1, 6] and fn.size == 0


def test_read_patch_rows_any_order(tmp_path):

    images = np.random.default_rng(0).integers(0, 256, (10, 2, 4, 4, 3), dtype=np.uint8)
    write_patches(tmp_path / "p.h5", images, np.zeros(10, np.uint8), np.zeros(10, np.int32), ["s"], chunk=3)
    rows = [7, 2, 7, 0]
    np.testing.assert_array_equal(read_patch_rows(tmp_path / "p.h5", rows), images[rows])


def test_predict_patches_tta_averages_the_eight_views(tmp_path):
    """--tta: the mean over the 8 rotations/flips, each applied to all towers alike."""
    import keras

    from wsiheat.inference.predict import dihedral

    rng = np.random.default_rng(3)
    N, T, W = 20, 2, 8
    images = rng.integers(0, 256, (N, T, W, W, 3), dtype=np.uint8)
    h5p = tmp_path / "p.h5"
    write_patches(h5p, images, (np.arange(N) % 2).astype(np.uint8), np.zeros(N, np.int32), ["s"])
    # position-dependent model (a dense layer over all pixels): not rotation invariant
    inp = keras.Input(shape=(T, W, W, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(keras.ops.cast(inp, "float32")))
    dense = keras.layers.Dense(1, activation="sigmoid")
    out = dense(x)
    dense.set_weights([rng.normal(0, 0.05, (T * W * W * 3, 1)).astype(np.float32), np.zeros(1, np.float32)])
    model = keras.Model(inp, out)
    plain = predict_patches(model, h5p, batch_size=8, progress=False)["scores"]
    tta = predict_patches(model, h5p, batch_size=8, progress=False, tta=True)["scores"]
    views = [dihedral(images, k, f) for f in (False, True) for k in range(4)]
    expected = np.mean([model.predict(v, verbose=0)[:, 0] for v in views], axis=0)
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    np.testing.assert_allclose(plain, model.predict(images, verbose=0)[:, 0], atol=1e-6)
    assert np.abs(tta - plain).max() > 1e-3  # the views really differ for this model


# --------------------------------------------------------------------------- evaluate tune
def write_tune_case(tmp_path):
    """Two raw heatmaps as `wsiheat heatmap` writes them (NAME.h5) and the tumor slide's mask TIFF.

    T: a 6x6-cell tumor block at p 0.8 in tissue at 0.05, matching its mask.
    N: normal tissue at 0.05 with one isolated cell at 0.95 (a lone false positive).
    """
    from _tiff import write_mask_tiff

    from wsiheat.inference.outputs import HEATMAP_FORMAT, write_raw

    res, gt = tmp_path / "hm", tmp_path / "gt"
    res.mkdir()
    gt.mkdir()
    cell, n = 64, 32
    tissue = np.zeros((n, n), bool)
    tissue[4:28, 4:28] = True
    for name in ("T", "N"):
        prob = np.where(tissue, 0.05, 0.0).astype(np.float32)
        if name == "T":
            prob[10:16, 10:16] = 0.8
        else:
            prob[20, 20] = 0.95
        write_raw(res / f"{name}.h5", prob, tissue, {
            "format": HEATMAP_FORMAT, "cell_size": float(cell), "origin": [0.0, 0.0], "slide": name,
            "slide_dimensions": [n * cell, n * cell]})
    mask = np.zeros((n * cell, n * cell), np.uint8)
    mask[10 * cell:16 * cell, 10 * cell:16 * cell] = 1
    write_mask_tiff(gt / "T_mask.tif", mask, n_levels=3)
    ref = tmp_path / "ref.csv"
    ref.write_text("slide,label\nT,1\nN,0\n")
    return res, gt, ref


def test_tune_smoothing_removes_a_lone_false_positive(tmp_path):
    res, gt, ref = write_tune_case(tmp_path)
    rep = tune_postprocessing(res, [gt], tmp_path / "tune", reference=ref, mpp=1.0, level=2,
                                smooth=[0.0, 1.0], lesion_threshold=[0.15], nms_radius=[4.0], progress=False)
    by = {r["smooth"]: r for r in rep["rows"]}
    # raw map: the lone 0.95 cell outranks the lesion (0.8): slide AUC 0, the first detection is a false positive
    assert by[0.0]["slide_auc"] == 0.0 and by[0.0]["froc"] < 1.0
    assert by[0.0]["sensitivity_at_0.25"] == 0.0
    # smoothed: the lone cell drops to about 0.19, below the block's centre (about 0.79); it is the lowest
    # detection, which the CAMELYON16 FROC skips
    assert by[1.0]["slide_auc"] == 1.0 and by[1.0]["froc"] == 1.0
    assert rep["best_froc"]["smooth"] == 1.0 and rep["rows"][0] == rep["best_froc"]
    # its interval over the resamples of 2 slides: N, N has no lesion and is skipped; T, N gives 1; T, T
    # gives 0 (T's detection is then the lowest score, which the CAMELYON16 FROC skips): [0, 1]
    ci = rep["best_froc_ci"]
    assert ci["low"] == 0.0 and ci["high"] == 1.0 and 600 < ci["n_used"] < 900
    # the same figures as `evaluate froc` on the detections written by hand from the smoothed map
    from wsiheat.inference.outputs import read_heatmap
    for name in ("T", "N"):
        hm = read_heatmap(res / f"{name}.h5")
        _, (p, x, y) = postprocess_scores(hm.probabilities, hm.tissue, hm.cell_size, hm.origin, 1.0, 0.15, 4.0)
        (res / f"{name}_lesions.csv").write_text("".join(f"{a:.6f},{b},{c}\n" for a, b, c in zip(p, x, y)))
    fr = evaluate_froc(res, [gt], tmp_path / "froc", reference=ref, mpp=1.0, level=2, allow_empty=True,
                         progress=False)
    assert fr["froc_score"] == by[1.0]["froc"]
    table = (tmp_path / "tune" / "tune_table.csv").read_text().splitlines()
    assert table[0].startswith("smooth,lesion_threshold,nms_radius,slide_auc,froc") and len(table) == 3
    assert Image.open(tmp_path / "tune" / "tune.png").size[0] > 500
    assert json.loads((tmp_path / "tune" / "tune_report.json").read_text())["n_tumor_slides"] == 1


def test_cli_tune_and_bad_input(tmp_path, capsys):
    res, gt, ref = write_tune_case(tmp_path)
    code, out, err = run_cli(["evaluate", "tune", str(res), str(gt / "T_mask.tif"), "-r", str(ref), "--mpp", "1",
                              "--level", "2", "--smooth", "0,1", "--lesion-threshold", "0.5,0.2",
                              "--nms-radius", "4", "-o", str(tmp_path / "t")], capsys)
    assert code == 0, err
    assert "4 settings" in out and "best slide AUC 1.0000 at smooth 1" in out
    rep = json.loads((tmp_path / "t" / "tune_report.json").read_text())
    ci = rep["best_froc_ci"]
    assert ci["low"] <= rep["best_froc"]["froc"] <= ci["high"]
    assert f"best FROC {rep['best_froc']['froc']:.4f} 95% CI [{ci['low']:.4f}, {ci['high']:.4f}]" in out
    # normal slide N without ground truth and without a reference: one-line error naming it
    code, _, err = run_cli(["evaluate", "tune", str(res), "-g", str(gt), "-o", str(tmp_path / "t2")], capsys)
    one_line_error(code, err, "'N'", "no ground truth")
    code, _, err = run_cli(["evaluate", "tune", str(res), "-g", str(gt), "-r", str(ref), "--lesion-threshold",
                            "0.5,1.5", "-o", str(tmp_path / "t2")], capsys)
    one_line_error(code, err, "--lesion-threshold", "[0, 1]")
    code, _, err = run_cli(["evaluate", "tune", str(tmp_path / "gt"), "-r", str(ref), "-o", str(tmp_path / "t2")],
                           capsys)
    one_line_error(code, err, "no raw heatmap")
    code, _, err = run_cli(["evaluate", "tune", str(res), "-r", str(ref), "--smooth", "a,b"], capsys)
    assert code == 2 and "expected comma-separated numbers" in err
    assert not (tmp_path / "t2").exists() or not any((tmp_path / "t2").iterdir())


# --------------------------------------------------------------------------- lesion scorer
def test_fit_scorer_and_tune_with_it(tmp_path, capsys):
    from wsiheat.inference.outputs import read_heatmap
    from wsiheat.postprocess.scorer import load_scorer

    res, gt, ref = write_tune_case(tmp_path)
    # tumor cells: the cells whose centre lies in the mask (the 6x6 block)
    hm = read_heatmap(res / "T.h5")
    mask = np.zeros((32 * 64 // 4, 32 * 64 // 4), bool)
    mask[10 * 16:16 * 16, 10 * 16:16 * 16] = True
    cells = tumor_cells(hm, mask, level=2)
    assert cells.sum() == 36 and cells[10:16, 10:16].all()
    assert not tumor_cells(hm, None, level=2).any()

    # a low lesion threshold keeps the false positive as a (low) detection: the CAMELYON16 FROC skips the
    # lowest detection probability, so a lone true detection would score 0
    rep = fit_scorer(res, [gt], tmp_path / "scorer.json", reference=ref, mpp=1.0, level=2,
                       lesion_threshold=0.01, progress=False)
    scorer = load_scorer(tmp_path / "scorer.json")
    assert rep["n_slides"] == 2 and rep["scorer"] == scorer.to_dict()
    assert scorer.fitted["tumor_cells"] == 36 and scorer.fitted["slides"] == 2
    # on its fitting slides the scorer keeps the lesion and drops the lone false positive
    assert rep["fitting_slides"]["scorer"]["slide_auc"] == 1.0 and rep["fitting_slides"]["scorer"]["froc"] == 1.0
    n = read_heatmap(res / "N.h5")
    m = scorer.apply(n.probabilities, n.tissue)
    assert m[20, 20] < 0.5 and scorer.apply(hm.probabilities, hm.tissue)[12, 12] > 0.5

    tune = tune_postprocessing(res, [gt], tmp_path / "tune", reference=ref, mpp=1.0, level=2, smooth=[0.0],
                                 lesion_threshold=[0.01], nms_radius=[4.0], scorer=scorer, progress=False)
    by = {r["map"]: r for r in tune["rows"]}
    assert set(by) == {"smoothed", "scorer"} and np.isnan(by["scorer"]["smooth"])
    assert by["scorer"]["froc"] == 1.0 and by["smoothed"]["slide_auc"] == 0.0  # raw map: the lone cell wins
    table = (tmp_path / "tune" / "tune_table.csv").read_text().splitlines()
    assert table[0].endswith(",map") and len(table) == 3 and any(r.endswith(",scorer") for r in table)

    # the same through the CLI, and its errors
    code, out, err = run_cli(["evaluate", "fit-scorer", str(res), str(gt / "T_mask.tif"), "-r", str(ref),
                              "--mpp", "1", "--level", "2", "-o", str(tmp_path / "cli.json")], capsys)
    assert code == 0, err
    assert "2 slides (1 with tumor)" in out and "36 tumor" in out and load_scorer(tmp_path / "cli.json") == scorer
    code, out, err = run_cli(["evaluate", "tune", str(res), str(gt / "T_mask.tif"), "-r", str(ref), "--mpp", "1",
                              "--level", "2", "--smooth", "0", "--lesion-threshold", "0.01", "--nms-radius", "4",
                              "--lesion-scorer", str(tmp_path / "cli.json"), "-o", str(tmp_path / "t")], capsys)
    assert code == 0, err
    assert "best slide AUC 1.0000 with the lesion scorer" in out
    code, _, err = run_cli(["evaluate", "tune", str(res), "-g", str(gt), "-r", str(ref), "--lesion-scorer",
                            str(gt / "T_mask.tif"), "-o", str(tmp_path / "t3")], capsys)
    one_line_error(code, err, "T_mask.tif", "not a lesion scorer file")
    # only normal slides: nothing to learn tumor from; the earlier scorer file is kept
    only_normal = tmp_path / "n_only"
    only_normal.mkdir()
    (only_normal / "N.h5").write_bytes((res / "N.h5").read_bytes())
    before = (tmp_path / "cli.json").read_bytes()
    code, _, err = run_cli(["evaluate", "fit-scorer", str(only_normal), "-g", str(gt / "T_mask.tif"), "-r",
                            str(ref), "--mpp", "1", "--level", "2", "-o", str(tmp_path / "cli.json")], capsys)
    one_line_error(code, err, "T")
    code, _, err = run_cli(["evaluate", "fit-scorer", str(only_normal), "--mpp", "1", "--level",
                            "2", "-o", str(tmp_path / "cli.json")], capsys)
    assert code == 2 and "no ground truth" in err
    (tmp_path / "only_n.csv").write_text("slide,label\nN,0\n")
    code, _, err = run_cli(["evaluate", "fit-scorer", str(only_normal), "-r", str(tmp_path / "only_n.csv"),
                            "--mpp", "1", "--level", "2", "-o", str(tmp_path / "cli.json")], capsys)
    one_line_error(code, err, "cannot fit a lesion scorer", "tumor and normal")
    assert (tmp_path / "cli.json").read_bytes() == before


# --------------------------------------------------------------------------- faults (issue 18, case 3)
def _froc_in_subprocess(results, gt, out, level, limit_gb=8):
    """`wsiheat evaluate froc` in a child with an 8 GB address-space limit: a mask sized from a far detection
    fails there (MemoryError) instead of exhausting the machine."""
    import os
    import subprocess
    import sys

    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit_gb << 30}, {limit_gb << 30}))\n"
            "from wsiheat.cli.main import main\n"
            f"main(['evaluate', 'froc', {str(results)!r}, '-g', {str(gt)!r}, '-o', {str(out)!r}, "
            f"'--level', '{level}'])\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("level", [0, 5])
def test_froc_mask_is_never_sized_from_a_far_detection(tmp_path, level):
    from wsiheat.evaluation.reports import evaluate_froc

    res, gt = tmp_path / "res", tmp_path / "gt"
    res.mkdir()
    gt.mkdir()
    (gt / "T.json").write_text(json.dumps({"positive": [{"name": "a", "vertices": [[100, 100], [3100, 100],
                                                                                    [3100, 3100], [100, 3100]]}]}))
    (res / "T.csv").write_text("0.9,1600,1600\n0.8,300000,300000\n")
    rep = evaluate_froc(res, [gt], tmp_path / "out", level=level, progress=False)  # a polygon: far point = FP
    assert rep["per_slide"][0]["false_positives"] == 1 and rep["froc_score"] == 1.0
    # a mask TIFF gives the slide size: a detection outside it is an error naming the file and row
    from _tiff import write_mask_tiff

    (gt / "T.json").unlink()
    mask = np.zeros((4096, 4096), np.uint8)
    mask[100:3100, 100:3100] = 1
    write_mask_tiff(gt / "T_mask.tif", mask, n_levels=1)
    r = _froc_in_subprocess(res, gt, tmp_path / "out2", level)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "T.csv:2" in lines[0] and "outside" in lines[0], lines[0]


def test_froc_huge_coordinate_is_an_error(tmp_path):
    res, gt = tmp_path / "res", tmp_path / "gt"
    res.mkdir()
    gt.mkdir()
    (gt / "T.json").write_text(json.dumps({"positive": [{"name": "a", "vertices": [[1, 1], [3000, 1], [3000, 3000]]}]}))
    (res / "T.csv").write_text("0.9,20,20\n0.5,1e300,5\n")
    r = _froc_in_subprocess(res, gt, tmp_path / "out", 5)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "T.csv:2" in lines[0], r.stderr[-3000:]
