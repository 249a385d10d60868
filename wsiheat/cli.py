"""Command-line interface: a thin layer over the library functions.

Each subcommand parses its options, calls one library function and prints a
summary. User errors (:class:`wsiheat.errors.WsiheatError`, bad options) are
printed as one line ``wsiheat: error: ...`` with exit status 2, no traceback.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import WsiheatError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsiheat")
def cli() -> None:
    """Find breast-cancer metastases in whole-slide images (CAMELYON16 style).

    \b
    Pipeline:
      wsiheat extract slide.tif mask.tif -o patches.h5   windows at two magnifications -> HDF5
      wsiheat train patches.h5 -o model.keras            multi-tower InceptionV3
      wsiheat heatmap slide.tif -m model.keras -o heat.png
      wsiheat evaluate ...                               patch AUC, slide AUC, lesion FROC
    """


# --- extract / tissue (foundation) -------------------------------------------------
# (commands are added below by each stage; keep one section per stage)


# --- import / weights / train -------------------------------------------------------


# --- heatmap ----------------------------------------------------------------------


# --- evaluate ---------------------------------------------------------------------

@cli.group("evaluate")
def evaluate_group() -> None:
    """Patch AUC, slide-level AUC and the CAMELYON16 lesion FROC.

    \b
      wsiheat evaluate patches --model model.keras --patches test.h5 -o eval/
      wsiheat evaluate slides results/ --reference reference.csv -o eval/
      wsiheat evaluate froc results/ --ground-truth masks/ -o eval/
    """


@evaluate_group.command("patches")
@click.option("--model", "-m", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Saved wsiheat model.")
@click.option("--patches", "-p", "patches_path", required=True, type=click.Path(dir_okay=False),
              help="HDF5 patches file (wsiheat extract).")
@click.option("--out-dir", "-o", default="evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Windows per model call and per HDF5 read.")
def evaluate_patches_cmd(model_path: str, patches_path: str, out_dir: str, batch_size: int) -> None:
    """Patch-level AUC, accuracy, sensitivity, specificity, F1, confusion matrices.

    Metrics at 0.5 and at the Youden threshold, a ROC plot, a per-slide
    breakdown and every window's score (patch_report.json, patch_roc.png,
    patch_per_slide.csv, patch_predictions.csv).
    """
    from .evaluate import evaluate_patches

    rep = evaluate_patches(model_path, patches_path, out_dir, batch_size=batch_size)

    def f(v):
        return "n/a" if v is None or v != v else f"{v:.4f}"

    a, b = rep["at_0.5"], rep["at_youden"] or {}
    click.echo(f"patches: {rep['n']} ({rep['n_tumor']} tumor)  AUC {f(rep['auc'])}")
    click.echo(f"  at 0.5:    accuracy {f(a['accuracy'])}  sensitivity {f(a['sensitivity'])}  "
               f"specificity {f(a['specificity'])}  F1 {f(a['f1'])}")
    if b:
        click.echo(f"  at Youden {b['threshold']:.4g}: accuracy {f(b['accuracy'])}  sensitivity "
                   f"{f(b['sensitivity'])}  specificity {f(b['specificity'])}  F1 {f(b['f1'])}")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("slides")
@click.argument("results", type=click.Path())
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
def evaluate_slides_cmd(results: str, reference: str | None, ground_truth: tuple[str, ...], out_dir: str,
                        n_boot: int, seed: int) -> None:
    """Slide-level ROC AUC (bootstrap 95% CI) from heatmap results.

    RESULTS is the heatmap output folder (NAME.json with 'score') or a CSV
    'slide,score'. Writes slide_report.json, slide_roc.png, slide_table.csv.
    """
    from .evaluate import evaluate_slides

    rep = evaluate_slides(results, out_dir, reference=reference, ground_truth=list(ground_truth) or None,
                          n_boot=n_boot, seed=seed)
    ci = rep["auc_ci"]
    click.echo(f"slides: {rep['n']} ({rep['n_tumor']} tumor)  AUC {rep['auc']:.4f}  "
               f"95% CI [{ci['low']:.4f}, {ci['high']:.4f}]")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("froc")
@click.argument("results", type=click.Path())
@click.option("--ground-truth", "-g", multiple=True, required=True, type=click.Path(),
              help="Ground-truth file or folder (NAME_Mask.tif, NAME.xml, NAME.json, NAME.geojson). Repeatable.")
@click.option("--reference", "-r", type=click.Path(dir_okay=False),
              help="CSV 'slide,label': slides labeled normal need no ground-truth file.")
@click.option("--mpp", default=0.243, show_default=True, type=float,
              help="Level-0 pixel size in µm (CAMELYON16: 0.243); margins and ITC size scale with it.")
@click.option("--allow-empty", is_flag=True, help="Count an empty detection file as a slide without detections.")
@click.option("--out-dir", "-o", default="evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
def evaluate_froc_cmd(results: str, ground_truth: tuple[str, ...], reference: str | None, mpp: float,
                      allow_empty: bool, out_dir: str) -> None:
    """Lesion-level FROC exactly as CAMELYON16's Evaluation_FROC.py.

    RESULTS is a folder of detection CSVs (NAME_lesions.csv from heatmap, or
    NAME.csv as submitted to CAMELYON16; rows prob,x,y in level-0 pixels) or
    one CSV. Writes froc_report.json, froc.png, froc_curve.csv, froc_lesions.csv.
    """
    from .evaluate import evaluate_froc

    rep = evaluate_froc(results, list(ground_truth), out_dir, reference=reference, mpp=mpp,
                        allow_empty=allow_empty)
    sens = "  ".join(f"{k}:{v:.3f}" for k, v in rep["sensitivity_at"].items())
    click.echo(f"FROC: {rep['n_slides']} slides ({rep['n_tumor_slides']} with tumor), {rep['n_lesions']} lesions "
               f"({rep['n_itc']} ITC ignored)  score {rep['froc_score']:.4f}")
    click.echo(f"  sensitivity at FPs/slide  {sens}")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


# --- mosaic / demo ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn user errors into one line."""
    try:
        rv = cli.main(args=argv, prog_name="wsiheat", standalone_mode=False)
    except WsiheatError as exc:
        click.echo(f"wsiheat: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsUsage as exc:  # bare subcommand group: show help
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.ClickException as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        click.echo(f"wsiheat: error: {where}{exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
