"""Multi-tower InceptionV3 model and the saved-model contract.

Saved-model contract (read by ``heatmap`` and ``evaluate``):

* one ``.keras`` file (Keras 3 zip) holding the model, plus an extra member
  ``wsiheat.json`` with the metadata dict (see :func:`save_model`);
* the model takes a uint8 batch shaped ``(B, T, W, W, 3)`` -- exactly rows of
  the HDF5 ``images`` dataset, T towers, tower 0 the finest -- and returns
  ``(B, 1)`` float tumor probabilities; preprocessing is inside the model.
* metadata keys: ``window``, ``center``, ``stride``, ``levels`` (per tower,
  may hold nulls), ``downsamples`` (per tower, relative to level 0),
  ``towers``, ``preprocessing``, ``class_names``, ``training_data``
  (fingerprint), ``wsiheat_version``, plus free-form training details.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from . import __version__
from .errors import WsiheatError
from .fileio import atomic_path

METADATA_MEMBER = "wsiheat.json"
REQUIRED_METADATA = ("window", "center", "stride", "downsamples", "towers")


def save_model(model, path: str | os.PathLike, metadata: dict) -> Path:
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
        raise WsiheatError(f"{path}: model files must end in .keras")
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
        raise WsiheatError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            if METADATA_MEMBER not in zf.namelist():
                raise WsiheatError(f"{path}: a Keras file without wsiheat metadata, not a wsiheat model")
            meta = json.loads(zf.read(METADATA_MEMBER))
    except (zipfile.BadZipFile, IsADirectoryError, json.JSONDecodeError):
        raise WsiheatError(f"{path}: not a wsiheat model (.keras file)") from None
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise WsiheatError(f"{path}: wsiheat metadata lacks {', '.join(missing)}")
    return meta


def load_model(path: str | os.PathLike, compile: bool = False):
    """Load a wsiheat model and its metadata.

    Returns
    -------
    model : keras.Model
    metadata : dict
    """
    meta = read_metadata(path)
    import keras

    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=False)
    except Exception as exc:  # a corrupt or foreign Keras file
        raise WsiheatError(f"{path}: cannot load the Keras model ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return model, meta
