"""CLI command group ``evaluate``: ``patches``, ``slides``, ``froc``, ``tune``, ``fit-scorer``."""

from __future__ import annotations

import sys

import click

from wsiheat import defaults
from wsiheat.cli.main import cli
from wsiheat.cli.options import bounds_text, ci_text, float_list, lesion_ground_truth_options
from wsiheat.inference.backends import BACKENDS, PRECISIONS  # light: no TensorFlow at import

# --- evaluate ---------------------------------------------------------------------

@cli.group("evaluate")
def evaluate_group() -> None:
    """Patch AUC, slide-level AUC and the CAMELYON16 lesion FROC.

    \b
      wsiheat evaluate patches --model model.keras --patches test.h5 -o eval/
      wsiheat evaluate slides results/ --reference reference.csv -o eval/
      wsiheat evaluate froc results/ --ground-truth masks/ -o eval/
      wsiheat evaluate tune val_results/ --ground-truth val_masks/ -o tune/
    """


@evaluate_group.command("patches")
@click.option("--model", "-m", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Saved wsiheat model.")
@click.option("--patches", "-p", "patches_path", required=True, type=click.Path(dir_okay=False),
              help="HDF5 patches file (wsiheat extract).")
@click.option("--out-dir", "-o", default="evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
@click.option("--batch-size", default=defaults.PREDICT_BATCH_SIZE, show_default=True, type=click.IntRange(min=1),
              help="Windows per model call and per HDF5 read.")
@click.option("--tta", is_flag=True, help="Average the 8 rotations/flips of every window (8x slower).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Inference backend (see heatmap --help).")
@click.option("--precision", type=click.Choice(PRECISIONS),
              default="auto", show_default=True, help="Compute precision of the model (see heatmap --help).")
@click.option("--allow-mismatch", is_flag=True,
              help="Accept windows at other magnifications than the model's (a warning, not an error).")
def evaluate_patches_cmd(model_path: str, patches_path: str, out_dir: str, batch_size: int, tta: bool,
                         backend: str, precision: str, allow_mismatch: bool) -> None:
    """Patch-level AUC, accuracy, sensitivity, specificity, F1, confusion matrices.

    Metrics at 0.5 and at the Youden threshold, a ROC plot, a per-slide
    breakdown and every window's score (patch_report.json, patch_roc.png,
    patch_per_slide.csv, patch_predictions.csv).
    """
    from wsiheat.evaluation.reports import evaluate_patches

    rep = evaluate_patches(model_path, patches_path, out_dir, batch_size=batch_size, tta=tta, precision=precision,
                           backend=backend, allow_mismatch=allow_mismatch)
    if rep.get("magnification_mismatch"):
        click.echo(f"wsiheat: warning: {rep['magnification_mismatch']}", err=True)

    def f(v):
        return "n/a" if v is None or v != v else f"{v:.4f}"

    a, b, ci = rep["at_0.5"], rep["at_youden"] or {}, rep.get("ci")

    def interval(key):
        return bounds_text(ci and ci[key], f)

    click.echo(f"patches: {rep['n']} ({rep['n_tumor']} tumor)  AUC {f(rep['auc'])}{interval('auc')}")
    click.echo(f"  at 0.5:    balanced accuracy {f(a['balanced_accuracy'])}{interval('balanced_accuracy')}  "
               f"accuracy {f(a['accuracy'])}  sensitivity {f(a['sensitivity'])}  "
               f"specificity {f(a['specificity'])}  F1 {f(a['f1'])}")
    if b:
        click.echo(f"  at Youden {b['threshold']:.4g}: accuracy {f(b['accuracy'])}  sensitivity "
                   f"{f(b['sensitivity'])}  specificity {f(b['specificity'])}  F1 {f(b['f1'])}")
    if ci:
        click.echo(f"  [ ]: {ci['confidence'] * 100:g}% bootstrap intervals over {ci['n_units']} "
                   f"{ci['unit']}s (of imported patches: patients)")
    click.echo(f"inference: {rep['backend']} {rep['precision']} ({rep['precision_reason']})")
    if rep.get("stain"):
        st = rep["stain"]
        left = st["unnormalised_slides"]
        click.echo(f"stain normalisation {st['method']} (the model's): {st['fitted_slides']} slide(s) fitted"
                   + (f", {len(left)} left unnormalised (no stained tissue)" if left else ""))
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("slides")
@click.argument("results", type=click.Path())
@click.argument("more_ground_truth", metavar="[GROUND_TRUTH]...", nargs=-1, type=click.Path())
@click.option("--reference", "-r", type=click.Path(dir_okay=False),
              help="CSV 'slide,label' (0/1 or Normal/Tumor; CAMELYON16 reference.csv works).")
@click.option("--ground-truth", "-g", multiple=True, type=click.Path(),
              help="Ground-truth file or folder (masks, ASAP XML, JSON, GeoJSON); a slide is tumor when it "
                   "marks any tumor. Repeatable.")
@click.option("--out-dir", "-o", default="evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Bootstrap resamples for the 95% interval.")
@click.option("--seed", default=0, show_default=True, type=int, help="Bootstrap seed.")
@click.option("--score", "score_field", default="score", show_default=True,
              help="Slide score to rank by: 'score' = maximum of the smoothed heatmap, 'max_probability', "
                   "'topk_mean' = mean of the top-k cells, or a score registered with "
                   "wsiheat.postprocess.scores.register.")
def evaluate_slides_cmd(results: str, more_ground_truth: tuple[str, ...], reference: str | None,
                        ground_truth: tuple[str, ...], out_dir: str, n_boot: int, seed: int,
                        score_field: str) -> None:
    """Slide-level ROC AUC (bootstrap 95% CI) from heatmap results.

    RESULTS is the heatmap output folder (NAME.json with 'score') or a CSV
    'slide,score'. Ground truth files may follow RESULTS (a shell glob) or
    come with -g. Writes slide_report.json, slide_roc.png, slide_table.csv.
    """
    from wsiheat.evaluation.reports import evaluate_slides

    ground_truth = tuple(ground_truth) + tuple(more_ground_truth)

    rep = evaluate_slides(results, out_dir, reference=reference, ground_truth=list(ground_truth) or None,
                          n_boot=n_boot, seed=seed, score=score_field)
    click.echo(f"slides: {rep['n']} ({rep['n_tumor']} tumor), score {score_field}  AUC {rep['auc']:.4f}  "
               f"{ci_text(rep['auc_ci'])}")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("froc")
@lesion_ground_truth_options
@click.option("--allow-empty", is_flag=True, help="Count an empty detection file as a slide without detections.")
@click.option("--out-dir", "-o", default="evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
def evaluate_froc_cmd(results: str, more_ground_truth: tuple[str, ...], ground_truth: tuple[str, ...],
                      reference: str | None, mpp: float, level: int, allow_empty: bool, out_dir: str) -> None:
    """Lesion-level FROC exactly as CAMELYON16's Evaluation_FROC.py.

    RESULTS is a folder of detection CSVs (NAME_lesions.csv from heatmap, or
    NAME.csv as submitted to CAMELYON16; rows prob,x,y in level-0 pixels) or
    one CSV. Ground truth files/folders follow RESULTS (a shell glob works) or
    come with -g. Writes froc_report.json, froc.png, froc_curve.csv,
    froc_lesions.csv.
    """
    from wsiheat.evaluation.reports import evaluate_froc

    ground_truth = tuple(ground_truth) + tuple(more_ground_truth)
    if not ground_truth:
        raise click.UsageError("no ground truth: give files or folders after RESULTS, or -g FILE")

    rep = evaluate_froc(results, list(ground_truth), out_dir, reference=reference, mpp=mpp, level=level,
                        allow_empty=allow_empty)
    sens = "  ".join(f"{k}:{v:.3f}" for k, v in rep["sensitivity_at"].items())
    click.echo(f"FROC: {rep['n_slides']} slides ({rep['n_tumor_slides']} with tumor), {rep['n_lesions']} lesions "
               f"({rep['n_itc']} ITC ignored)  score {rep['froc_score']:.4f}  "
               f"{ci_text(rep['froc_ci'])} (bootstrap over slides)")
    click.echo(f"  sensitivity at FPs/slide  {sens}")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("tune")
@lesion_ground_truth_options
@click.option("--smooth", default="0,0.5,0.75,1,1.5", show_default=True, callback=float_list,
              help="Smoothing sigmas to try, cells.")
@click.option("--lesion-threshold", default="0.5,0.3,0.1", show_default=True, callback=float_list,
              help="Lesion-point thresholds to try.")
@click.option("--nms-radius", default="2,4,6", show_default=True, callback=float_list,
              help="Non-maximum suppression radii to try, cells.")
@click.option("--lesion-scorer", "lesion_scorer_path", default=None, type=click.Path(dir_okay=False),
              help="Also try this lesion scorer's map (from `evaluate fit-scorer`, fitted on OTHER slides).")
@click.option("--out-dir", "-o", default="evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
def evaluate_tune_cmd(results: str, more_ground_truth: tuple[str, ...], ground_truth: tuple[str, ...],
                      reference: str | None, mpp: float, level: int, smooth: list[float],
                      lesion_threshold: list[float], nms_radius: list[float], lesion_scorer_path: str | None,
                      out_dir: str) -> None:
    """Choose the heatmap post-processing on VALIDATION slides (no model runs).

    Re-scores the raw maps (NAME.h5) of a heatmap folder for every
    combination of --smooth, --lesion-threshold and --nms-radius and reports
    the slide AUC (max of the smoothed map) and lesion FROC of each. Pass the
    best values to `wsiheat heatmap` (--smooth, --lesion-threshold,
    --nms-radius in level-0 px = cells x cell size). Writes tune_table.csv,
    tune_report.json, tune.png.
    """
    from wsiheat.evaluation.tuning import tune_postprocessing
    from wsiheat.postprocess.scorer import load_scorer

    ground_truth = tuple(ground_truth) + tuple(more_ground_truth)
    if not ground_truth and reference is None:
        raise click.UsageError("no ground truth: give files or folders after RESULTS, or -g FILE")
    scorer = load_scorer(lesion_scorer_path) if lesion_scorer_path else None
    rep = tune_postprocessing(results, list(ground_truth), out_dir, reference=reference, mpp=mpp, level=level,
                              smooth=smooth, lesion_threshold=lesion_threshold, nms_radius=nms_radius,
                              scorer=scorer, progress=sys.stderr.isatty())
    click.echo(f"tune: {rep['n_slides']} slides ({rep['n_tumor_slides']} with tumor), {len(rep['rows'])} settings; "
               f"best first:")
    click.echo(f"  {'smooth':>6} {'threshold':>9} {'radius':>6} {'slide AUC':>9} {'FROC':>6}")
    for r in rep["rows"][:10]:
        sig = "scorer" if r["map"] == "scorer" else f"{r['smooth']:g}"
        click.echo(f"  {sig:>6} {r['lesion_threshold']:>9g} {r['nms_radius']:>6g} "
                   f"{r['slide_auc']:>9.4f} {r['froc']:>6.4f}")
    b = rep["best_slide_auc"]
    where = "with the lesion scorer" if b["map"] == "scorer" else f"at smooth {b['smooth']:g}"
    click.echo(f"best slide AUC {b['slide_auc']:.4f} {where} (FROC there {b['froc']:.4f})")
    f = rep["best_froc"]
    click.echo(f"best FROC {f['froc']:.4f} {ci_text(rep['best_froc_ci'])} (bootstrap over slides)")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("fit-scorer")
@lesion_ground_truth_options
@click.option("-o", "--output", default="lesion_scorer.json", show_default=True, type=click.Path(dir_okay=False),
              help="Scorer file to write (JSON).")
@click.option("--c", "c", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Inverse L2 regularisation strength of the logistic regression.")
@click.option("--smooth", default=defaults.SMOOTH_SIGMA, show_default=True, type=click.FloatRange(min=0),
              help="Smoothing sigma of the map the scorer is compared with.")
@click.option("--lesion-threshold", default=defaults.LESION_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Lesion-point threshold of the comparison.")
@click.option("--nms-radius", default=defaults.NMS_RADIUS_CELLS, show_default=True, type=click.FloatRange(min=0),
              help="Non-maximum suppression radius of the comparison, cells.")
def evaluate_fit_scorer_cmd(results: str, more_ground_truth: tuple[str, ...], ground_truth: tuple[str, ...],
                            reference: str | None, mpp: float, level: int, output: str, c: float, smooth: float,
                            lesion_threshold: float, nms_radius: float) -> None:
    """Fit a lesion scorer on VALIDATION heatmaps (no model runs).

    A logistic regression over the neighbourhood of every tissue cell of
    the raw maps (NAME.h5): its own probability, its strongest neighbour,
    the map smoothed at 4 sigmas and the share of confident cells around.
    Lone confident cells, the classifier's usual false positives, score
    low; groups of cells high. Use it with `wsiheat heatmap
    --lesion-scorer FILE`. The figures printed are on the fitting slides
    (optimistic): check it on other slides with `evaluate tune
    --lesion-scorer FILE`.
    """
    from wsiheat.evaluation.tuning import fit_scorer

    ground_truth = tuple(ground_truth) + tuple(more_ground_truth)
    if not ground_truth and reference is None:
        raise click.UsageError("no ground truth: give files or folders after RESULTS, or -g FILE")
    rep = fit_scorer(results, list(ground_truth), output, reference=reference, mpp=mpp, level=level, c=c,
                     smooth=smooth, lesion_threshold=lesion_threshold, nms_radius=nms_radius,
                     progress=sys.stderr.isatty())
    fit = rep["scorer"]["fitted"]
    click.echo(f"fit-scorer: {rep['n_slides']} slides ({rep['n_tumor_slides']} with tumor), {fit['cells']} tissue "
               f"cells ({fit['tumor_cells']} tumor)")
    for key, label in (("smoothed", f"smoothed map (sigma {smooth:g})"), ("scorer", "lesion scorer")):
        f = rep["fitting_slides"][key]
        click.echo(f"  {label:<28} slide AUC {f['slide_auc']:.4f}  FROC {f['froc']:.4f}")
    click.echo("  (on the fitting slides: check on other slides with `evaluate tune --lesion-scorer`)")
    click.echo(f"scorer: {rep['path']}")
