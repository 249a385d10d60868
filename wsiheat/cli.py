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


# --- heatmap ----------------------------------------------------------------------


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
