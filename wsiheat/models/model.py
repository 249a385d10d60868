"""Multi-tower InceptionV3 model and the saved-model contract.

Saved-model contract (read by ``heatmap`` and ``evaluate``):

* one ``.keras`` file (Keras 3 zip) holding the model, plus an extra member
  ``wsiheat.json`` with the metadata dict (see :func:`save_model`);
* the model takes a uint8 batch shaped ``(B, T, W, W, 3)`` -- exactly rows of
  the HDF5 ``images`` dataset, T towers, tower 0 the finest -- and returns
  ``(B, 1)`` float tumor probabilities; preprocessing is inside the model.
* metadata keys: ``window``, ``center``, ``stride``, ``levels`` (per tower,
  may hold nulls), ``downsamples`` (per tower, relative to level 0),
  ``mpps`` (per-tower µm/px when the training slides knew theirs, else null),
  ``towers``, ``preprocessing``, ``class_names``, ``training_data``
  (fingerprint), ``wsiheat_version``, plus free-form training details.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from wsiheat import __version__, defaults
from wsiheat.errors import ModelError
from wsiheat.fileio import atomic_path
from wsiheat.models import backbones as _backbones
from wsiheat.models.backbones import backbones

if TYPE_CHECKING:  # pragma: no cover
    import keras

METADATA_MEMBER = "wsiheat.json"
REQUIRED_METADATA = ("window", "center", "stride", "downsamples", "towers")


def import_tensorflow_quietly(run_op: bool = True) -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probes, oneDNN notes) hidden.

    TensorFlow writes those lines straight to file descriptor 2 before its own
    logging is set up, so environment variables cannot silence them; stderr
    is pointed at /dev/null for the import only. Import errors still surface.
    Used by the CLI and by Dask worker processes before they load a model.
    ``run_op=False`` skips the first op (device discovery), which a process
    about to create a MultiWorkerMirroredStrategy must not run yet.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        if run_op:
            tensorflow.constant(0)  # device discovery happens on first use
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def save_model(model: keras.Model, path: str | os.PathLike, metadata: dict) -> Path:
    """Save a Keras model with wsiheat metadata into one ``.keras`` file, atomically.

    Parameters
    ----------
    model : keras.Model
        Takes uint8 ``(B, T, W, W, 3)``, returns ``(B, 1)`` probabilities.
    path : path-like
        Destination, must end in ``.keras``.
    metadata : dict
        JSON-serialisable; must hold at least :data:`REQUIRED_METADATA`.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"{path}: model files must end in .keras")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    meta = dict(metadata)
    meta.setdefault("wsiheat_version", __version__)
    meta.setdefault("class_names", ["normal", "tumor"])
    meta.setdefault("preprocessing", "uint8 RGB in; scaled to [-1, 1] inside the model")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(METADATA_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """Read only the wsiheat metadata of a saved model (fast, no TensorFlow)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            if METADATA_MEMBER not in zf.namelist():
                raise ModelError(f"{path}: a Keras file without wsiheat metadata, not a wsiheat model")
            meta = json.loads(zf.read(METADATA_MEMBER))
    except (zipfile.BadZipFile, IsADirectoryError, json.JSONDecodeError):
        raise ModelError(f"{path}: not a wsiheat model (.keras file)") from None
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelError(f"{path}: wsiheat metadata lacks {', '.join(missing)}")
    return meta


#: Compute precisions a saved (float32) model can run in: ``float32`` as saved;
#: ``mixed_bfloat16`` (faster on CPUs with AVX512-BF16/AMX) and ``mixed_float16`` (GPUs) keep the
#: float32 weights and the float32 sigmoid head and compute everything else in 16 bits.
INFER_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def load_model(path: str | os.PathLike, compile: bool = False,
               precision: str = "float32") -> tuple[keras.Model, dict]:
    """Load a wsiheat model and its metadata.

    Parameters
    ----------
    precision : str
        One of :data:`INFER_PRECISIONS` (see :func:`with_precision`).

    Returns
    -------
    model : keras.Model
    metadata : dict
    """
    if precision not in INFER_PRECISIONS:
        raise ModelError(f"precision={precision}: choose {', '.join(INFER_PRECISIONS)}")
    meta = read_metadata(path)
    import keras

    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=False)
    except Exception as exc:  # a corrupt or foreign Keras file
        raise ModelError(f"{path}: cannot load the Keras model ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if precision != "float32":
        model = with_precision(model, precision)
    return model, meta


def with_precision(model: keras.Model, precision: str,
                   keep_float32: tuple[str, ...] = ("tumor",)) -> keras.Model:
    """A copy of ``model`` whose layers compute in ``precision`` (same weights, float32 variables).

    Every Keras layer (recursively, towers included) gets the dtype policy
    ``precision`` except those named in ``keep_float32`` (the sigmoid head:
    probabilities stay float32). For inference: a ``mixed_bfloat16`` copy
    gives probabilities about 0.01 from the float32 model's on average (IDC
    test patches: mean 0.007, 99 % within 0.04, same AUC), faster on
    CPUs with bf16 instructions.
    """
    import keras

    if precision == "float32":
        return model

    def clone(layer):
        cfg = layer.get_config()
        if ("dtype" in cfg and isinstance(layer, keras.layers.Layer)
                and not isinstance(layer, keras.layers.InputLayer) and layer.name not in keep_float32):
            cfg["dtype"] = keras.DTypePolicy(precision)
        return layer.__class__.from_config(cfg)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def model_precision(model: keras.Model) -> str:
    """The compute dtype policy of most weighted layers of a model (``float32``, ``mixed_bfloat16``...)."""
    names = [layer.dtype_policy.name for layer in model._flatten_layers(include_self=False, recursive=True)
             if layer.weights and hasattr(layer, "dtype_policy")]
    return max(set(names), key=names.count) if names else "float32"


def _imagenet_source(download: bool = False):
    """Return ``(path, variant)`` of the ImageNet Inception-v3 weights or raise WsiheatError."""
    try:
        from wsiheat.models.weights import ensure_imagenet_weights
    except ImportError:
        raise ModelError("imagenet: ImageNet Inception-v3 weights are not available in this "
                           "installation (wsiheat.models.weights is missing); use --weights none or "
                           "--weights PATH") from None
    return ensure_imagenet_weights(download=download)


def build_model(towers: int, window: int = defaults.WINDOW, *, weights: str = "imagenet",
                shared_backbone: bool = False, dropout: float = 0.5, variant: str = "tf2015",
                backbone: str = defaults.BACKBONE, head_dtype: str = "float32") -> keras.Model:
    """Build the multi-tower tumor classifier.

    Parameters
    ----------
    towers : int
        Number of magnifications (T), >= 1; tower 0 is the finest.
    window : int
        Window side W in pixels (InceptionV3 needs >= 75).
    weights : str
        ``"imagenet"`` (real ImageNet Inception-v3 weights; a WsiheatError when
        they cannot be had -- never a silent random start), ``"none"`` (random
        initialisation) or a path: a Keras weights file (whole model or one
        backbone, e.g. Keras's ``inception_v3_..._notop.h5``) or a previous
        wsiheat ``.keras`` model with the same number of towers.
    shared_backbone : bool
        One backbone (same weights) for every tower instead of one per tower.
    dropout : float
        Dropout rate in [0, 1) before the sigmoid head.
    variant : str
        Backbone graph variant passed to :func:`wsiheat.models.inception.inception_v3_backbone`
        (overridden by the variant of the ImageNet weights when ``weights="imagenet"``).
    backbone : str
        ``"inception_v3"`` or ``"tiny"`` (a two-convolution network for tests).
    head_dtype : str
        dtype of the sigmoid head (float32 also under mixed precision).

    Returns
    -------
    keras.Model
        Input uint8 ``(B, T, W, W, 3)`` named ``windows``, output ``(B, 1)``
        tumor probability. Preprocessing (``x / 127.5 - 1``) is inside. The
        backbones are the sub-models named ``tower0``, ``tower1``, ... (or
        ``backbone`` when shared).
    """
    import keras

    if not isinstance(towers, (int,)) or isinstance(towers, bool) or towers < 1:
        raise ModelError(f"towers={towers!r}: need an integer >= 1")
    if not isinstance(window, int) or window < 8:
        raise ModelError(f"window={window!r}: need an integer >= 8")
    spec = _backbones.get(backbone)
    if window < spec.min_window:
        raise ModelError(f"window={window}: backbone {backbone} needs windows of at least "
                           f"{spec.min_window} px")
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(f"dropout={dropout!r}: need a value in [0, 1)")
    weights = str(weights)
    imagenet = None
    if weights == "imagenet":
        if not spec.imagenet:
            raise ModelError(f"weights=imagenet: only for the inception_v3 backbone, not {backbone}")
        imagenet = _imagenet_source()
        variant = imagenet[1]
    elif weights != "none" and not Path(weights).exists():
        raise ModelError(f"{weights}: no such weights file (use imagenet, none or a path)")

    inp = keras.Input((towers, window, window, 3), dtype="uint8", name="windows")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inp)
    if shared_backbone:
        nets = [spec.build(window, variant, "backbone")] * towers
    else:
        nets = [spec.build(window, variant, f"tower{t}") for t in range(towers)]
    if imagenet is not None:
        from wsiheat.models.weights import load_imagenet_weights

        for net in dict.fromkeys(nets):  # each distinct backbone once
            load_imagenet_weights(net, imagenet[0], imagenet[1])
    feats = [nets[t](x[:, t]) for t in range(towers)]
    y = feats[0] if towers == 1 else keras.layers.Concatenate(name="features")(feats)
    y = keras.layers.Dropout(float(dropout), name="dropout")(y)
    out = keras.layers.Dense(1, activation="sigmoid", dtype=head_dtype, name="tumor")(y)
    model = keras.Model(inp, out, name=f"wsiheat_{towers}tower_{backbone}")
    if weights not in ("imagenet", "none"):
        load_weights_into(model, weights, towers)
    return model


def load_weights_into(model: keras.Model, path: str | os.PathLike, towers: int) -> None:
    """Load ``path`` (a wsiheat model or a Keras weights file) into ``model``.

    A wsiheat ``.keras`` model must have the same number of towers and the same
    architecture; a Keras weights file is tried on the whole model, then on
    each backbone (e.g. Keras's ImageNet ``..._notop.h5``).
    """
    path = Path(path)
    if path.suffix == ".keras":
        meta = read_metadata(path)
        if int(meta["towers"]) != towers:
            raise ModelError(f"{path}: the weights model has {meta['towers']} tower(s) but the "
                               f"training data has {towers}")
        old, _ = load_model(path)
        new_w, old_w = model.get_weights(), old.get_weights()
        if len(new_w) != len(old_w) or any(a.shape != b.shape for a, b in zip(new_w, old_w)):
            raise ModelError(f"{path}: its architecture differs from the model being built "
                               "(backbone or --shared-backbone differ)")
        model.set_weights(old_w)
        return
    errors = []
    try:
        model.load_weights(path)
        return
    except Exception as exc:  # not whole-model weights: try per backbone
        errors.append(exc)
    try:
        for net in backbones(model):
            net.load_weights(path)
        return
    except Exception as exc:
        errors.append(exc)
    raise ModelError(f"{path}: not a Keras weights file for this model or its backbone "
                       f"({type(errors[-1]).__name__})")


def _inbound_layers(layer) -> list:
    out = []
    for node in getattr(layer, "_inbound_nodes", [])[:1]:
        for t in node.input_tensors:
            hist = getattr(t, "_keras_history", None)
            if hist is not None:
                out.append(hist[0])
    return out


def set_trainable_from(model: keras.Model, block_name: str | None) -> int:
    """Freeze every backbone layer below block ``block_name`` (e.g. ``"mixed5"``).

    The block ``mixedN`` starts right after the single layer through which all
    of its inputs pass (the previous ``mixed`` concatenation, or the stem);
    that layer and everything before it are frozen (batch normalisation then
    runs in inference mode), the block and all layers above it are trainable.
    ``None``, ``"all"`` or ``""`` makes everything trainable; ``"none"``
    freezes the backbones entirely (only the head trains).

    Returns
    -------
    int
        Number of trainable weight tensors after the change.
    """
    nets = backbones(model)
    model.trainable = True
    for net in nets:
        net.trainable = True
        for layer in net.layers:
            layer.trainable = True
    if block_name in (None, "", "all"):
        return len(model.trainable_weights)
    for net in nets:
        layers = net.layers
        if block_name == "none":
            net.trainable = False
            continue
        names = [layer.name for layer in layers]
        if block_name not in names:
            blocks = [n for n in names if re.fullmatch(r"mixed\d+", n)]
            raise ModelError(f"trainable_from={block_name}: no such block in the backbone "
                               f"(choose one of {', '.join(blocks) or 'none'}, all, none)")
        end = names.index(block_name)
        index = {id(layer): i for i, layer in enumerate(layers)}
        # the block input: the previous ``mixed`` layer, else (the stem) the highest
        # layer i such that every layer in (i, end] takes its inputs from index >= i
        previous = [i for i, n in enumerate(names[:end]) if re.fullmatch(r"mixed\d+", n)]
        lowest, cut = end, 0
        for i in ([] if previous else range(end - 1, -1, -1)):
            for src in _inbound_layers(layers[i + 1]):
                lowest = min(lowest, index.get(id(src), 0))
            if lowest >= i:
                cut = i
                break
        if previous:
            cut = previous[-1]
        for layer in layers[: cut + 1]:
            layer.trainable = False
    return len(model.trainable_weights)
