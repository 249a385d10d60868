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


def _parse_floats(value: str | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise WsiheatError(f"{what}: expected comma-separated numbers, got {value!r}") from None


@cli.command("heatmap")
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-m", "--model", "model_path", required=True, type=click.Path(path_type=str),
              help="Saved wsiheat model (.keras).")
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Heatmap PNG of a single slide; the other outputs are named from its stem, in its folder.")
@click.option("--out-dir", type=click.Path(path_type=str), default=None,
              help="Output folder for many slides (outputs named after each slide). Default: current folder.")
@click.option("--overwrite", is_flag=True, help="Redo slides whose outputs already exist (default: skip them).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Windows per model call.")
@click.option("--tta", is_flag=True, help="Average the 8 rotations/flips of every window (8x slower).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Background reader threads.")
@click.option("--block", default=1024, show_default=True, type=click.IntRange(min=128),
              help="Side of the regions read at once, tower-0 pixels.")
@click.option("--tissue-threshold", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="A cell is evaluated when the tissue fraction of its centre exceeds this.")
@click.option("--lesion-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum probability of a lesion point in the CSV.")
@click.option("--nms-radius", default=None, type=click.FloatRange(min=0),
              help="Non-maximum suppression radius, level-0 pixels [default: 4 cells].")
@click.option("--nms-radius-um", default=None, type=click.FloatRange(min=0),
              help="Same in µm (needs the slide's µm/px).")
@click.option("--area-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Probability above which a cell counts as tumor area.")
@click.option("--topk", default=10, show_default=True, type=click.IntRange(min=1),
              help="Cells averaged for the top-k mean score.")
@click.option("--downsamples", default=None,
              help="Override the model's tower downsamples (relative to level 0), e.g. '2,4'.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
def heatmap_cmd(slides, model_path, output, out_dir, overwrite, batch_size, tta, workers, block,
                tissue_threshold, lesion_threshold, nms_radius, nms_radius_um, area_threshold, topk,
                downsamples, progress) -> int:
    """Tumor-probability heatmaps of SLIDES with a trained model.

    \b
    Examples:
      wsiheat heatmap slide.svs -m model.keras -o heat.png
      wsiheat heatmap slides/*.svs -m model.keras --out-dir results/
    \b
    Per slide NAME: NAME.png (heatmap + colorbar), NAME_overlay.png,
    NAME.h5 (raw probabilities, tissue, geometry), NAME_heatmap.tif
    (pyramidal TIFF aligned to the slide), NAME_lesions.csv (prob,x,y
    level-0 px) and NAME.json (score = max probability, ...).
    """
    import warnings
    from pathlib import Path

    from .model import read_metadata

    if output is not None and out_dir is not None:
        raise WsiheatError("give either -o/--output (one slide) or --out-dir, not both")
    if output is not None:
        if len(slides) != 1:
            raise WsiheatError(f"-o/--output names the outputs of one slide, got {len(slides)} slides; "
                               f"use --out-dir")
        if not output.lower().endswith(".png"):
            raise WsiheatError(f"{output}: -o/--output must be a .png file")
        out = Path(output)
        folder, names = (out.parent if str(out.parent) else Path(".")), [out.stem]
    else:
        folder = Path(out_dir if out_dir is not None else ".")
        names = [None] * len(slides)
    if not folder.is_dir():
        raise WsiheatError(f"{folder}: output folder does not exist")
    meta = read_metadata(model_path)  # fast: a foreign file fails before TensorFlow loads
    ds = _parse_floats(downsamples, "--downsamples")

    from .infer import (HeatmapWarning, check_model, heatmap_slide, make_predict_fn, outputs_exist,
                        slide_name_of, spec_from_metadata)

    def out_name(path: str, given: str | None) -> str:
        return given or slide_name_of(path)

    seen: dict[str, str] = {}
    for s, n in zip(slides, names):
        nm = out_name(s, n)
        if nm in seen:
            raise WsiheatError(f"{s}: same output name {nm!r} as {seen[nm]}; process them into different folders")
        seen[nm] = s
    todo = []
    for s, n in zip(slides, names):
        nm = out_name(s, n)
        if not overwrite and outputs_exist(folder, nm):
            click.echo(f"{nm}: skipped, outputs exist in {folder} (--overwrite to redo)")
        else:
            todo.append((s, nm))
    if not todo:
        return 0
    spec = spec_from_metadata(meta, None, ds)
    from .model import load_model

    model, meta = load_model(model_path)
    check_model(model, spec, model_path)
    predict = make_predict_fn(model, spec, batch_size, tta)
    show = sys.stderr.isatty() if progress is None else progress
    failed = 0
    for s, nm in todo:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", HeatmapWarning)
                r = heatmap_slide(s, model, meta, folder, nm, batch_size=batch_size, tta=tta, workers=workers,
                                  block=block, tissue_threshold=tissue_threshold,
                                  lesion_threshold=lesion_threshold, nms_radius=nms_radius,
                                  nms_radius_um=nms_radius_um, area_threshold=area_threshold, topk=topk,
                                  downsamples=ds, model_path=model_path, predict=predict, progress=show)
        except WsiheatError as exc:
            failed += 1
            click.echo(f"wsiheat: error: {exc}", err=True)
            continue
        for w in r["warnings"]:
            click.echo(f"wsiheat: warning: {w}", err=True)
        click.echo(f"{nm}: score {r['score']:.3f}, top-{r['topk']} mean {r['topk_mean']:.3f}, "
                   f"tumor area {r['tumor_area']:.4g} {r['tumor_area_unit']}, {r['lesions']} lesion points, "
                   f"{r['cells_evaluated']} windows in {r['seconds']:.1f} s "
                   f"({r['patches_per_second']:.1f} patches/s) -> {folder / (nm + '.png')}")
    if failed:
        click.echo(f"wsiheat: {failed} of {len(todo)} slides failed", err=True)
        return 2
    return 0


# --- evaluate ---------------------------------------------------------------------


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
