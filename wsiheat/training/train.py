"""Training: HDF5 patches -> a saved multi-tower model (one ``.keras`` file).

:func:`train` wires :mod:`wsiheat.training.dataset` (slide-level split, streaming and
augmentation) to :func:`wsiheat.models.model.build_model` and Keras ``fit``:

* Adam (learning rate ``lr``, optional per-epoch exponential decay), binary
  cross-entropy, metrics AUC, accuracy, sensitivity, specificity;
* fine-tuning in stages: stage 1 trains from ``trainable_from`` (e.g.
  ``mixed5``) upward, optional stage 2 unfreezes everything at ``second_stage_lr``;
* best weights by a monitored validation figure (``monitor``: loss or AUC),
  early stopping (``patience``), a CSV history and a
  training-curve PNG beside the model, a checkpoint folder ``MODEL.ckpt/``
  (last model with optimizer state, best weights, state) so that ``resume``
  continues after an interruption; the folder is removed after success;
* on GPUs: mixed precision and ``MirroredStrategy`` over the local GPUs
  (``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set); the same call
  runs on CPU.

The saved model is float32 whatever the training precision, with metadata
(window, center, stride, levels and downsamples per tower from the HDF5
attributes, class names, training-data fingerprint, weights source, epochs,
validation metrics, wsiheat version).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsiheat import __version__, defaults
from wsiheat.errors import PatchFileError, WsiheatError
from wsiheat.fileio import atomic_path, check_writable_dir
from wsiheat.models.model import INFER_PRECISIONS
from wsiheat.training.augment import AugmentConfig
from wsiheat.training.dataset import (
    PatchSummary,
    class_weights,
    make_dataset,
    open_patch_file,
    split_by_slide,
    steps_for,
)
from wsiheat.training.history import (
    MONITORS,
    best_so_far,
    drop_empty_checkpoint,
    make_checkpointer,
    monitored,
    plot_history,
    read_history,
    write_history,
    write_state,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from wsiheat.patches.stain import PatchStain

log = logging.getLogger(__name__)

METRIC_NAMES = ("loss", "auc", "accuracy", "sensitivity", "specificity")


@dataclass
class TrainConfig:
    """Training parameters (the CLI options of ``wsiheat train``)."""

    epochs: int = 10
    batch_size: int = 32
    steps_per_epoch: int | None = None
    lr: float | None = None  # default 1e-4 from pretrained weights, 1e-3 from scratch
    lr_decay: float = 1.0
    second_stage_lr: float | None = None
    second_stage_epochs: int | None = None
    trainable_from: str | None = None
    weights: str = "imagenet"
    shared_backbone: bool = False
    dropout: float = 0.5
    backbone: str = defaults.BACKBONE
    val_fraction: float = 0.15
    seed: int = 0
    balance: str = "weights"
    patience: int = 5
    monitor: str = "val_loss"
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    memory_budget: int | None = None
    precision: str = "auto"  # see PRECISIONS
    stain_normalize: str | None = None  # a wsiheat.wsi.stain normaliser name
    stain_reference: str | None = None  # reference image or JSON target (default: fitted on the training rows)

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise WsiheatError(f"--{name.replace('_', '-')} {v}: need an integer >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise WsiheatError(f"steps_per_epoch={self.steps_per_epoch}: need an integer >= 1")
        for name in ("lr", "second_stage_lr"):
            v = getattr(self, name)
            if v is not None and not (0 < v < 10):
                raise WsiheatError(f"--{name.replace('_', '-')} {v}: need a positive learning rate")
        if not 0 < self.lr_decay <= 1:
            raise WsiheatError(f"lr_decay={self.lr_decay}: need a factor in (0, 1]")
        if self.balance not in ("weights", "sampling"):
            raise WsiheatError(f"balance={self.balance}: choose weights or sampling")
        if self.patience < 1:
            raise WsiheatError(f"patience={self.patience}: need an integer >= 1")
        if self.monitor not in MONITORS:
            raise WsiheatError(f"monitor={self.monitor}: choose {' or '.join(MONITORS)}")
        if self.precision not in PRECISIONS:
            raise WsiheatError(f"precision={self.precision}: choose {', '.join(PRECISIONS)}")
        if self.stain_reference and not self.stain_normalize:
            raise WsiheatError(f"stain reference {self.stain_reference}: choose a stain normaliser too")


class BatchSizeWarning(UserWarning):
    """The batch size was lowered to the number of training rows."""


class MagnificationWarning(UserWarning):
    """Files at other magnifications were used together, as asked (``allow_mismatch``)."""


class PrecisionWarning(UserWarning):
    """A --precision that will run slowly on this machine."""


#: ``auto``: mixed_float16 on GPUs, float32 on CPUs. ``mixed_bfloat16`` speeds up training on CPUs
#: with bf16 instructions (AVX512-BF16 / AMX; ``tools/bench_precision.py``) and slows it
#: down elsewhere. The saved model is float32 whatever was used.
PRECISIONS = ("auto",) + INFER_PRECISIONS


def resolve_precision(precision: str, gpus: bool) -> str:
    """The Keras dtype policy for a ``--precision`` value (``auto``: by device)."""
    if precision not in PRECISIONS:
        raise WsiheatError(f"precision={precision}: choose {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "mixed_float16" if gpus else "float32"
    return precision


def cpu_has_bf16() -> bool | None:
    """Whether the CPU has bf16 instructions (Linux /proc/cpuinfo; None when unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def _specificity_class():
    import keras

    @keras.saving.register_keras_serializable(package="wsiheat", name="Specificity")
    class Specificity(keras.metrics.Metric):
        """True-negative rate TN / (TN + FP) at threshold 0.5."""

        def __init__(self, name="specificity", threshold=0.5, **kwargs):
            super().__init__(name=name, **kwargs)
            self.threshold = float(threshold)
            self.tn = self.add_variable(shape=(), initializer="zeros", name="tn")
            self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")

        def update_state(self, y_true, y_pred, sample_weight=None):
            from keras import ops

            neg = ops.cast(ops.reshape(y_true, (-1,)) < 0.5, "float32")
            pos_pred = ops.cast(ops.reshape(y_pred, (-1,)) >= self.threshold, "float32")
            self.tn.assign_add(ops.sum(neg * (1.0 - pos_pred)))
            self.fp.assign_add(ops.sum(neg * pos_pred))

        def result(self):
            from keras import ops

            return ops.divide_no_nan(self.tn, self.tn + self.fp)

        def reset_state(self):
            self.tn.assign(0.0)
            self.fp.assign(0.0)

        def get_config(self):
            return {"name": self.name, "threshold": self.threshold}

    return Specificity


_SPEC = None


def metrics() -> list:
    """Fresh metric objects: AUC, accuracy, sensitivity, specificity."""
    global _SPEC
    import keras

    if _SPEC is None:
        _SPEC = _specificity_class()
    return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.Recall(name="sensitivity"), _SPEC()]


def compile_model(model: keras.Model, lr: float, mixed: bool) -> None:
    """Compile for training: Adam at ``lr``, binary cross-entropy, the metrics of :func:`metrics`
    (wrapped in a loss-scale optimizer under ``mixed_float16``)."""
    import keras

    opt = keras.optimizers.Adam(learning_rate=lr)
    if mixed:
        opt = keras.mixed_precision.LossScaleOptimizer(opt)
    model.compile(optimizer=opt, loss="binary_crossentropy", metrics=metrics())


def _strategy():
    """MultiWorkerMirrored with TF_CONFIG, Mirrored over local GPUs, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if os.environ.get("TF_CONFIG"):
        from wsiheat.training.distribute import multiworker_strategy

        return multiworker_strategy(), bool(gpus)
    if gpus:
        for g in gpus:
            try:
                tf.config.experimental.set_memory_growth(g, True)
            except RuntimeError:
                pass
        return tf.distribute.MirroredStrategy(), True
    return tf.distribute.get_strategy(), False


def _oom_message(patches: Path, cfg: TrainConfig) -> str:
    return (f"{patches}: a batch of {cfg.batch_size} does not fit in memory: lower --batch-size"
            " (or use --shared-backbone)")


def train(patches: str | os.PathLike, output: str | os.PathLike, config: TrainConfig = TrainConfig(),
          *, val: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, callbacks: list | None = None, allow_mismatch: bool = False) -> dict:
    """Train a tumor classifier on an HDF5 patches file and save it as ``output`` (.keras).

    Parameters
    ----------
    patches : path-like
        HDF5 patches file (training data; also the validation source unless ``val``).
    output : path-like
        ``.keras`` file to write; ``OUTPUT.history.csv``, ``OUTPUT.history.png``
        are written beside it and ``OUTPUT.ckpt/`` while training.
    config : TrainConfig
    val : path-like, optional
        Separate validation patches file (instead of a by-slide split).
    resume : bool
        Continue from ``OUTPUT.ckpt/`` after an interruption.
    progress : bool
        Keras progress output (a bar on a terminal, one line per epoch otherwise).
    callbacks : list of keras.callbacks.Callback, optional
        Extra callbacks, run after the checkpointing one.
    allow_mismatch : bool
        Accept a validation file whose towers are at other magnifications
        (a warning instead of an error).

    Returns
    -------
    dict
        Summary: output paths, rows, epochs, best epoch, validation metrics, seconds.
    """
    import keras
    import tensorflow as tf

    t_start = time.perf_counter()
    config.validate()
    patches, output = Path(patches), Path(output)
    if output.suffix != ".keras":
        raise WsiheatError(f"{output}: the model file must end in .keras")
    from wsiheat.training.distribute import tf_config_is_chief, tf_config_task, tf_config_workers

    multi = tf_config_workers() > 1
    chief = not multi or tf_config_is_chief()
    if multi and resume:
        raise WsiheatError(f"{output}: resuming is not supported with a multi-worker TF_CONFIG; "
                           "start the training again without resuming")
    if chief:
        check_writable_dir(output)
    pf = open_patch_file(patches)
    if len(np.unique(pf.labels)) < 2:
        raise WsiheatError(f"{patches}: only one class (all labels {int(pf.labels[0])}); training "
                           "needs tumor and normal windows")
    if val is not None:
        vf = open_patch_file(val)
        if (vf.towers, vf.window) != (pf.towers, pf.window):
            raise WsiheatError(f"{val}: {vf.towers} tower(s) of {vf.window} px but the training "
                               f"file has {pf.towers} of {pf.window} px")
        from wsiheat.patches.store import tower_mismatch

        towers = {"levels": pf.levels, "downsamples": pf.downsamples, "mpps": pf.tower_mpps}
        diff = tower_mismatch(towers, {"levels": vf.levels, "downsamples": vf.downsamples, "mpps": vf.tower_mpps})
        if diff:
            msg = f"{val}: validation windows at another magnification than {patches}: {diff}"
            if not allow_mismatch:
                raise WsiheatError(f"{msg}; extract them at the training file's levels (or allow the mismatch)")
            warnings.warn(msg, MagnificationWarning, stacklevel=2)
        train_rows, val_rows, val_slides = np.arange(pf.n), np.arange(vf.n), list(vf.slides)
    else:
        vf = pf
        train_rows, val_rows, val_slides = split_by_slide(pf.slide_ids, pf.labels, pf.slides,
                                                          config.val_fraction, config.seed)
    if len(np.unique(pf.labels[train_rows])) < 2:
        raise WsiheatError(f"{patches}: the training slides hold only one class after the "
                           "validation split; add slides or give a validation file")
    if not multi and config.batch_size > len(train_rows):
        warnings.warn(f"batch size {config.batch_size} is above the {len(train_rows)} training rows of {patches}; "
                      f"using {len(train_rows)}", BatchSizeWarning, stacklevel=2)
        config = dataclasses.replace(config, batch_size=int(len(train_rows)))
    pretrained = config.weights != "none"
    lr = config.lr if config.lr is not None else (1e-4 if pretrained else 1e-3)

    # a non-chief worker writes everything into a scratch folder that is deleted at the end
    # (TensorFlow's multi-worker recipe: all workers run the same saving code)
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="wsiheat-worker-"))
    if scratch is not None:  # removed at the end, or at exit after an error
        atexit.register(shutil.rmtree, scratch, True)
    base = output if chief else scratch / output.name
    ckpt = base.with_name(output.stem + ".ckpt")
    history_path = base.with_name(output.stem + ".history.csv")
    plot_path = base.with_name(output.stem + ".history.png")
    fingerprint = pf.fingerprint()
    state = {"epoch": 0, "stage": 0, "monitor": config.monitor, "best": math.inf, "best_epoch": None, "wait": 0,
             "fingerprint": fingerprint, "val_fingerprint": vf.fingerprint()}
    history: list[dict] = []
    if resume:
        if not (ckpt / "state.json").exists() or not (ckpt / "last.keras").exists():
            raise WsiheatError(f"{ckpt}: no checkpoint to resume from (start without resuming)")
        state = json.loads((ckpt / "state.json").read_text())
        if state.get("fingerprint") != fingerprint:
            raise WsiheatError(f"{ckpt}: the checkpoint was trained on other data than {patches}")
        if state.get("monitor", "val_loss") != config.monitor:
            raise WsiheatError(f"{ckpt}: the checkpoint picks its best epoch by "
                               f"{state.get('monitor', 'val_loss')}; resume with monitor="
                               f"{state.get('monitor', 'val_loss')}")
        history = [r for r in read_history(history_path) if int(float(r["epoch"])) < state["epoch"]]
    else:
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.mkdir()
        write_state(ckpt, state)

    strategy, gpus = _strategy()
    policy = resolve_precision(config.precision, gpus)
    if policy == "mixed_bfloat16" and not gpus and cpu_has_bf16() is False:
        warnings.warn("--precision mixed_bfloat16: this CPU has no bf16 instructions (AVX512-BF16/AMX); "
                      "training will be slower than float32", PrecisionWarning, stacklevel=2)
    mixed = policy == "mixed_float16"  # float16 needs loss scaling; bfloat16 has float32's range
    keras.mixed_precision.set_global_policy(policy)
    build_args = dict(towers=pf.towers, window=pf.window, shared_backbone=config.shared_backbone,
                      dropout=config.dropout, backbone=config.backbone)
    # datasets (global batch; the strategy splits it over replicas)
    n_train = len(train_rows)
    steps = config.steps_per_epoch or steps_for(n_train, config.batch_size)
    try:  # rows that fit in memory are read here
        stain, val_stain = training_stain(config, pf, vf, train_rows, val_rows)
        train_ds = None if multi else make_dataset(  # multi-worker: one pipeline per worker, below
            pf, train_rows, config.batch_size, training=True, augment=config.augment,
            balance=config.balance, seed=config.seed, memory_budget=config.memory_budget, stain=stain)
        val_ds = make_dataset(vf, val_rows, config.batch_size, training=False,
                              memory_budget=config.memory_budget, stain=val_stain)
    except WsiheatError:
        drop_empty_checkpoint(ckpt, state, resume)
        raise
    val_steps = steps_for(len(val_rows), config.batch_size)
    cw = class_weights(pf.labels[train_rows]) if config.balance == "weights" else None

    e1 = config.epochs
    stages = [(0, e1, lr, config.trainable_from)]
    if config.second_stage_lr:
        stages.append((e1, e1 + (config.second_stage_epochs or e1), config.second_stage_lr, "all"))
    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
    model = None
    try:
        if multi:
            model, val_metrics = _fit_multiworker(
                strategy, pf, vf, train_rows, val_rows, config, stages, build_args, mixed, cw,
                steps, val_ds, ckpt, history_path, state, history, progress, stain)
        else:
            with strategy.scope():
                for stage, (s0, s1, slr, tfrom) in enumerate(stages):
                    start = int(state["epoch"])
                    if start >= s1:
                        continue
                    if start > s0:  # resume inside this stage: model + optimizer state
                        metrics()  # registers the custom metric for loading
                        model = keras.saving.load_model(ckpt / "last.keras", compile=True)
                    else:
                        if model is None:
                            if stage == 0:
                                model = _build(build_args, config.weights)
                            else:
                                model = _build(build_args, "none")
                        if stage > 0 and (ckpt / "best.weights.h5").exists():
                            model.load_weights(ckpt / "best.weights.h5")
                        from wsiheat.models.model import set_trainable_from

                        set_trainable_from(model, tfrom)
                        compile_model(model, slr, mixed)
                        state["wait"] = 0
                    cb = make_checkpointer(ckpt, history_path, state, history, stage, s0, s1, slr,
                                            config.lr_decay, config.patience, config.monitor)
                    model.fit(train_ds, epochs=s1, initial_epoch=start, steps_per_epoch=steps,
                              validation_data=val_ds, validation_steps=val_steps, class_weight=cw,
                              callbacks=[cb, *(callbacks or [])], shuffle=False, verbose=verbose)
                    state["epoch"] = max(int(state["epoch"]), s1)
                    write_state(ckpt, state)
                if model is None:  # everything done before an interruption at the very end
                    metrics()
                    model = keras.saving.load_model(ckpt / "last.keras", compile=True)
                if (ckpt / "best.weights.h5").exists():
                    model.load_weights(ckpt / "best.weights.h5")
                val_metrics = model.evaluate(val_ds, steps=val_steps, verbose=0, return_dict=True)
    except tf.errors.ResourceExhaustedError:
        drop_empty_checkpoint(ckpt, state, resume)
        raise WsiheatError(_oom_message(patches, config)) from None
    except MemoryError:
        drop_empty_checkpoint(ckpt, state, resume)
        raise WsiheatError(_oom_message(patches, config)) from None
    except tf.errors.OpError as exc:  # an error of ours inside the input pipeline (a damaged file)
        m = re.search(r"(?:PatchFileError|WsiheatError): (.+)", str(exc))
        if not m:
            raise
        drop_empty_checkpoint(ckpt, state, resume)
        raise PatchFileError(m.group(1).strip()) from None
    except WsiheatError:
        drop_empty_checkpoint(ckpt, state, resume)
        raise
    val_metrics = {k: float(v) for k, v in val_metrics.items()}
    if "sensitivity" in val_metrics and "specificity" in val_metrics:
        val_metrics["balanced_accuracy"] = 0.5 * (val_metrics["sensitivity"]
                                                  + val_metrics["specificity"])

    # save a clean float32 copy (no optimizer; loads on any device)
    keras.mixed_precision.set_global_policy("float32")
    final = _build(build_args, "none")
    final.set_weights(model.get_weights())
    from wsiheat.models.model import save_model

    levels = pf.levels
    meta = {
        "window": pf.window, "center": int(pf.attrs.get("center", pf.window)),
        "stride": int(pf.attrs.get("stride", pf.window)), "levels": levels,
        "downsamples": pf.downsamples, "towers": pf.towers, "mpps": pf.tower_mpps,
        "class_names": ["normal", "tumor"],
        "preprocessing": "uint8 RGB (B, T, W, W, 3) in; x / 127.5 - 1 inside the model",
        "training_data": {"file": str(patches.resolve()), "fingerprint": fingerprint,
                          "rows": pf.n, "train_rows": int(n_train), "val_rows": int(len(val_rows)),
                          "val_file": str(Path(val).resolve()) if val else None,
                          "val_slides": val_slides,
                          "train_tumor": int(pf.labels[train_rows].sum()),
                          "params": pf.attrs.get("params")},
        "weights": config.weights, "backbone": config.backbone,
        "shared_backbone": config.shared_backbone,
        "epochs": int(len(history)), "best_epoch": state.get("best_epoch"),
        "val_metrics": val_metrics,
        "train_config": {k: v for k, v in asdict(config).items() if k != "augment"},
        "augment": asdict(config.augment) if config.augment else None,
        "precision": policy, "mixed_precision": policy != "float32", "wsiheat_version": __version__,
        "stain": None if stain is None else stain.record(),
    }
    if multi:
        meta["multi_worker"] = {"workers": tf_config_workers(),
                                "replicas": int(strategy.num_replicas_in_sync)}
    save_model(final, base, meta)  # a non-chief worker saves into its scratch folder
    plot_history(history, plot_path)
    shutil.rmtree(ckpt, ignore_errors=True)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    summary_extra = {}
    if multi:
        kind, index = tf_config_task()
        summary_extra = {"chief": chief, "task": f"{kind}:{index}",
                         "replicas": int(strategy.num_replicas_in_sync)}
    return {**summary_extra, "output": str(output), "history": str(history_path), "plot": str(plot_path),
            "train_rows": int(n_train), "val_rows": int(len(val_rows)),
            "val_slides": len(val_slides), "epochs": len(history),
            "best_epoch": state.get("best_epoch"), "val_metrics": val_metrics,
            "stain": None if stain is None else stain.record(),
            "seconds": round(time.perf_counter() - t_start, 1)}


def training_stain(config: TrainConfig, pf: PatchSummary, vf: PatchSummary, train_rows: np.ndarray,
                   val_rows: np.ndarray) -> tuple[PatchStain | None, PatchStain | None]:
    """The stain normalisation of training and validation rows, or ``(None, None)``.

    The normaliser is ``config.stain_normalize`` with its target from
    ``config.stain_reference`` (an image or a JSON target) or, by default, fitted
    on the training rows (:func:`wsiheat.patches.stain.fit_target`). Starting from
    a wsiheat model (``config.weights``) that was trained with a normaliser, that
    normaliser and its target are kept; asking for another is an error.
    Every slide's source is then fitted once on its own rows.
    """
    from wsiheat.errors import StainError
    from wsiheat.patches.stain import PatchStain, fit_target
    from wsiheat.wsi.stain import get_normalizer, load_target, normalizer_from_dict

    inherited = None
    w = Path(str(config.weights))
    if w.suffix == ".keras" and w.is_file():
        from wsiheat.models.model import read_metadata

        inherited = normalizer_from_dict(read_metadata(w).get("stain"), str(w))
    if inherited is not None:
        if config.stain_normalize and config.stain_normalize != inherited.name:
            raise StainError(f"{w}: trained with the {inherited.name} stain normaliser, not "
                             f"{config.stain_normalize}; keep {inherited.name} or start from other weights")
        if config.stain_reference:
            raise StainError(f"{w}: its {inherited.name} stain target is kept; a new reference "
                             f"({config.stain_reference}) would change what the weights were trained on")
        norm = inherited
    elif config.stain_normalize:
        if config.stain_reference:
            norm = load_target(config.stain_reference, config.stain_normalize)
        else:
            norm = fit_target(get_normalizer(config.stain_normalize), pf.path, train_rows)
    else:
        return None, None
    if vf.path == pf.path:  # one fit per slide; the split keeps slides apart
        both = PatchStain.fit(norm, pf.path, np.concatenate([train_rows, val_rows]))
        return both, both
    return PatchStain.fit(norm, pf.path, train_rows), PatchStain.fit(norm, vf.path, val_rows)


def numpy_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Validation metrics as ``model.evaluate`` gives them, from labels and predicted probabilities.

    Loss: mean binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7]);
    AUC: exact (Mann-Whitney); accuracy and sensitivity count a prediction > 0.5
    as tumor, specificity one >= 0.5 (as the Keras metrics do).
    """
    from wsiheat.evaluation.metrics import roc_auc

    y = np.asarray(labels, np.float64).reshape(-1)
    p = np.clip(np.asarray(scores, np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    pos, neg = y >= 0.5, y < 0.5
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) if y.size else float("nan")
    return {"loss": float(loss), "auc": roc_auc(pos, p) if y.size else float("nan"),
            "accuracy": float(np.mean((p > 0.5) == pos)) if y.size else float("nan"),
            "sensitivity": float(np.mean(p[pos] > 0.5)) if pos.any() else 0.0,
            "specificity": float(np.mean(p[neg] < 0.5)) if neg.any() else 0.0}


def _predict_all(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Labels and float32 predictions over one pass of a finite ``(x, y)`` dataset (local, no collectives)."""
    import tensorflow as tf

    fn = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
    ys, ps = [], []
    for x, y in dataset:
        ys.append(np.asarray(y).reshape(-1))
        ps.append(np.asarray(fn(x)).reshape(-1))
    if not ys:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(ys), np.concatenate(ps)


def _fit_multiworker(strategy, pf: PatchSummary, vf: PatchSummary, train_rows, val_rows,
                     config: TrainConfig, stages: list, build_args: dict, mixed: bool,
                     cw: dict | None, steps: int, val_ds, ckpt: Path, history_path: Path,
                     state: dict, history: list, progress: bool, stain=None):
    """The stages and epochs of :func:`train` under ``MultiWorkerMirroredStrategy``.

    A custom ``strategy.run`` loop (:class:`wsiheat.training.distribute.StepRunner`)
    replaces ``Model.fit`` (keras-team/keras#20585). Every worker runs one
    input pipeline over all training rows with its own seed (different
    shuffles, sampling and augmentation, so the workers' batches differ) and
    evaluates the whole validation set locally; the validation loss that
    drives best weights and early stopping is averaged over the workers so
    that all take the same decisions. Writes the same history rows, best
    weights and state as the ``fit`` path (no ``last.keras``: no resume).

    Returns
    -------
    (keras.Model, dict)
        The model with the best weights and its validation metrics.
    """
    import keras

    from wsiheat.models.model import set_trainable_from
    from wsiheat.training.distribute import StepRunner, all_reduce_mean, metrics_from_stats

    replicas = int(strategy.num_replicas_in_sync)
    if config.batch_size % replicas:
        raise WsiheatError(f"batch_size={config.batch_size}: must be a multiple of the "
                           f"{replicas} replicas of the multi-worker cluster")

    def dataset_fn(ctx):
        return make_dataset(pf, train_rows, ctx.get_per_replica_batch_size(config.batch_size),
                            training=True, augment=config.augment, balance=config.balance,
                            seed=config.seed + 7919 * ctx.input_pipeline_id,
                            memory_budget=config.memory_budget, stain=stain)

    bce = keras.losses.BinaryCrossentropy(reduction=None)
    model = None
    for stage, (s0, s1, slr, tfrom) in enumerate(stages):
        with strategy.scope():
            if model is None:
                model = _build(build_args, config.weights if stage == 0 else "none")
            if stage > 0 and (ckpt / "best.weights.h5").exists():
                model.load_weights(ckpt / "best.weights.h5")
            set_trainable_from(model, tfrom)
            opt = keras.optimizers.Adam(learning_rate=slr)
            if mixed:
                opt = keras.mixed_precision.LossScaleOptimizer(opt)
        runner = StepRunner(model, dataset_fn, strategy, optimizer=opt, loss_fn=bce,
                            global_batch_size=config.batch_size, class_weight=cw, stats=True)
        inner = getattr(opt, "inner_optimizer", opt)
        state["wait"] = 0
        for epoch in range(s0, s1):
            lr_e = slr * config.lr_decay ** (epoch - s0)
            inner.learning_rate.assign(lr_e)
            t0 = time.perf_counter()
            losses, stats = runner.run(steps)
            row = {"epoch": epoch, "stage": stage, "lr": float(lr_e)}
            logs = {"loss": float(np.mean(losses)), **metrics_from_stats(stats)}
            logs.update({f"val_{k}": v for k, v in numpy_metrics(*_predict_all(model, val_ds)).items()})
            row["seconds"] = round(time.perf_counter() - t0, 2)
            row.update(logs)
            history.append(row)
            write_history(history_path, history)
            value = all_reduce_mean(strategy, monitored(config.monitor, logs))  # same decision everywhere
            if not math.isfinite(value):
                value = math.inf
            if value < best_so_far(state):
                state.update(best=value, best_epoch=epoch, wait=0)
                with atomic_path(ckpt / "best.weights.h5", suffix=".weights.h5") as tmp:
                    model.save_weights(tmp)
            else:
                state["wait"] = state.get("wait", 0) + 1
            state.update(epoch=epoch + 1, stage=stage)
            if progress:
                log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, s1,
                         ", ".join(f"{k} {v:.4f}" for k, v in logs.items()), row["seconds"])
            stop = state["wait"] >= config.patience
            if stop:
                state["epoch"] = s1
                state["wait"] = 0
                log.info("early stopping: %s did not improve for %d epoch(s)", config.monitor, config.patience)
            write_state(ckpt, state)
            if stop:
                break
        state["epoch"] = max(int(state["epoch"]), s1)
        write_state(ckpt, state)
    if (ckpt / "best.weights.h5").exists():
        with strategy.scope():
            model.load_weights(ckpt / "best.weights.h5")
    return model, numpy_metrics(*_predict_all(model, val_ds))


def _build(build_args: dict, weights: str):
    from wsiheat.models.model import build_model

    return build_model(weights=weights, **build_args)
