"""The demo: the whole pipeline on the embedded data in ``data/``.

``wsiheat demo data/ -o demo-out`` runs, on a CPU in a few minutes:

1. **extract** the training mosaics (``data/mosaics/train``, real IDC tissue
   with exact tumor masks) into ``patches.h5`` and the held-out test mosaics
   into ``test_patches.h5`` (two towers: levels 0 and 1);
2. **train** a two-tower InceptionV3 from ImageNet weights (when they are
   cached; otherwise it says so and falls back to random initialisation)
   into ``model.keras``;
3. **heatmap** every test mosaic into ``heatmaps/`` and the real slide(s)
   in ``data/slides`` into ``heatmaps_real/``;
4. **evaluate** patch AUC, slide AUC and the CAMELYON16 lesion FROC into
   ``reports/``.

``--quick`` is a reduced run for tests: a tiny backbone and a few steps.
The library reports its steps through ``say`` (logging by default); it never prints.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wsiheat.errors import WsiheatError

log = logging.getLogger(__name__)

#: Tower levels of the demo mosaics (2.5 and 5 µm/px).
DEMO_LEVELS = (0, 1)


@dataclass(frozen=True)
class DemoSlide:
    slide: Path
    mask: Path | None
    ground_truth: Path | None
    label: int | None


def read_mosaic_folder(folder: Path) -> list[DemoSlide]:
    """Slides of a mosaic folder from its ``manifest.csv`` (and ``labels.csv``)."""
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        raise WsiheatError(f"{manifest}: no such file (is {folder.parent.parent} the demo data folder?)")
    labels = {}
    if (folder / "labels.csv").exists():
        with open(folder / "labels.csv", newline="") as fh:
            labels = {Path(r["slide"]).stem: int(r["label"]) for r in csv.DictReader(fh)}
    out = []
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            slide = folder / row["slide"]
            gt = folder / row["ground_truth"] if row.get("ground_truth") else None
            mask = folder / row["mask"] if row.get("mask") else None
            out.append(DemoSlide(slide, mask, gt, labels.get(slide.stem)))
    return out


def _log(line: str) -> None:
    log.info(line.strip())


def run_demo(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, quick: bool = False,
             epochs: int | None = None, steps_per_epoch: int | None = None, seed: int = 0,
             weights: str = "auto", say: Callable[[str], None] = _log) -> dict:
    """Run extract -> train -> heatmap -> evaluate on the demo data.

    Parameters
    ----------
    data_dir : path-like
        The embedded data folder (``mosaics/train``, ``mosaics/test``, ``slides``).
    out_dir : path-like
        Output folder (created; existing outputs are overwritten).
    quick : bool
        Reduced run (tiny backbone, a few training steps) for tests.
    weights : {"auto", "imagenet", "none"}
        ``auto``: ImageNet weights when cached, else random init (said clearly).
    say : callable
        Receives one line per step and per slide (steps start with ``"== "``);
        default: the module's logger at INFO level. The CLI prints them.

    Returns
    -------
    dict
        Summary with the output paths and the headline metrics.
    """
    def step(title: str) -> float:
        say(f"== {title}")
        return time.time()

    def done(t0: float, what: str) -> None:
        say(f"   {what} ({time.time() - t0:.0f} s)")

    return _run(Path(data_dir), Path(out_dir), quick, epochs, steps_per_epoch, seed, weights, say, step, done)


def _run(data_dir: Path, out: Path, quick: bool, epochs, steps_per_epoch, seed: int, weights: str,
         say: Callable[[str], None], _step: Callable[[str], float], _done: Callable[[float, str], None]) -> dict:
    from wsiheat.evaluation.reports import evaluate_froc, evaluate_patches, evaluate_slides
    from wsiheat.inference.engine import HeatmapModel
    from wsiheat.inference.heatmap import HeatmapWarning
    from wsiheat.patches.extract import extract_to_file
    from wsiheat.training.train import TrainConfig, train

    if not data_dir.is_dir():
        raise WsiheatError(f"{data_dir}: no such folder")
    train_slides = read_mosaic_folder(data_dir / "mosaics" / "train")
    test_slides = read_mosaic_folder(data_dir / "mosaics" / "test")
    real_slides = sorted(p for p in (data_dir / "slides").glob("*") if p.is_file()) \
        if (data_dir / "slides").is_dir() else []
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    summary: dict = {"output": str(out)}

    # 1. extract ---------------------------------------------------------------
    t0 = _step("1/4 extract: windows at two magnifications -> HDF5")
    for h5, slides in ((out / "patches.h5", train_slides), (out / "test_patches.h5", test_slides)):
        if h5.exists():
            h5.unlink()
        for s in slides:
            st = extract_to_file(s.slide, s.ground_truth if s.label else None, h5, levels=DEMO_LEVELS,
                                 tissue_threshold=0.5, max_normal=200 if quick else 400, seed=seed,
                                 progress=False)
            say(f"   {s.slide.name}: {st.get('kept_tumor', 0)} tumor + "
                f"{st.get('kept_normal', 0)} normal windows -> {h5.name}")
    _done(t0, "extracted")

    # 2. train -----------------------------------------------------------------
    t0 = _step("2/4 train: multi-tower InceptionV3")
    weights_used, why = _choose_weights(weights, quick)
    say(f"   weights: {weights_used}{' (' + why + ')' if why else ''}")
    cfg = TrainConfig(
        epochs=epochs or (1 if quick else 6),
        steps_per_epoch=steps_per_epoch or (3 if quick else 40),
        batch_size=16 if quick else 32, lr=None if quick else 2e-4,
        weights=weights_used if weights_used != "tiny" else "none",
        backbone="tiny" if weights_used == "tiny" else "inception_v3",
        trainable_from=None if weights_used in ("none", "tiny") else "mixed5",
        seed=seed, val_fraction=0.2)
    model_path = out / "model.keras"
    # validation: a by-slide split of the training mosaics; the test mosaics stay unseen
    tr = train(out / "patches.h5", model_path, cfg, progress=False)
    summary["train"] = {k: tr[k] for k in ("epochs", "best_epoch", "val_metrics") if k in tr}
    summary["weights"] = weights_used + (f" ({why})" if why else "")
    _done(t0, f"model -> {model_path}")

    # 3. heatmap ---------------------------------------------------------------
    t0 = _step("3/4 heatmap: tissue-only inference")
    hm_dir, real_dir = out / "heatmaps", out / "heatmaps_real"
    hm_dir.mkdir(exist_ok=True)
    real_dir.mkdir(exist_ok=True)
    engine = HeatmapModel.load(model_path)
    jobs = [(s.slide, hm_dir) for s in test_slides] + [(p, real_dir) for p in real_slides]
    for path, folder in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HeatmapWarning)  # reported from res["warnings"]
            res = engine.predict_slide(path).save(folder)
        for w in res["warnings"]:
            say(f"   note: {w}")
        say(f"   {path.name}: score {res['score']:.3f}, {res['cells_evaluated']} cells, "
            f"{res['patches_per_second']:.0f} patches/s")
    _done(t0, f"heatmaps -> {hm_dir} (test mosaics), {real_dir} (real slides)")

    # 4. evaluate --------------------------------------------------------------
    t0 = _step("4/4 evaluate: patch AUC, slide AUC, lesion FROC")
    rep = out / "reports"
    masks = [s.mask for s in test_slides if s.mask is not None]
    pr = evaluate_patches(model_path, out / "test_patches.h5", rep / "patches", progress=False)
    sr = evaluate_slides(hm_dir, rep / "slides", ground_truth=masks)
    fr = evaluate_froc(hm_dir, masks, rep / "froc", mpp=_mosaic_mpp(test_slides),
                                level=2, allow_empty=True, progress=False)
    summary["patch_auc"] = pr.get("auc")
    summary["patch_balanced_accuracy"] = pr.get("at_0.5", {}).get("balanced_accuracy")
    summary["patch_ci"] = pr.get("ci")
    summary["slide_auc"] = sr.get("auc")
    summary["slide_auc_ci"] = sr.get("auc_ci")
    summary["froc"] = fr.get("froc_score")
    summary["froc_ci"] = fr.get("froc_ci")
    summary["test_slides"] = len(test_slides)
    summary["overlays"] = sorted(str(p) for d in (hm_dir, real_dir) for p in d.glob("*_overlay.png"))
    summary["reports"] = str(rep)
    _done(t0, f"reports -> {rep}")
    summary["seconds"] = round(time.time() - t_start, 1)
    from wsiheat.fileio import atomic_path

    with atomic_path(out / "demo_summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _mosaic_mpp(slides: list[DemoSlide]) -> float:
    from wsiheat.wsi.slide import Slide

    with Slide(slides[0].slide) as s:
        return s.mpp or 2.5


def _choose_weights(weights: str, quick: bool) -> tuple[str, str]:
    """Decide the training weights; returns (weights, reason shown to the user)."""
    if quick:
        return "tiny", "--quick: tiny backbone, random initialisation"
    if weights == "none":
        return "none", "random initialisation, as asked"
    from wsiheat.models.weights import ensure_imagenet_weights

    try:
        ensure_imagenet_weights(download=False)
        return "imagenet", ""
    except WsiheatError as exc:
        if weights == "imagenet":
            raise
        return "none", (f"FELL BACK to random initialisation: ImageNet weights are not cached ({exc}); "
                        f"run `wsiheat weights` once to get them")
