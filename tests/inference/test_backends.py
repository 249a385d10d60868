"""Inference backends (wsiheat.inference.backends): OpenVINO against TensorFlow on a tiny real
model, the conversion cache keyed by the model file's hash, and the auto choices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import TINY_META, tiny_model, write_patches

from wsiheat.cli.main import main
from wsiheat.errors import WsiheatError
from wsiheat.inference import backends
from wsiheat.inference.engine import HeatmapModel


def windows(n: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (n, 1, 1, 1, 3))  # one colour per window (+ noise): varied probabilities
    return np.clip(base + rng.integers(-30, 31, (n, 2, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_openvino_matches_tensorflow(tmp_path):
    path = tiny_model(tmp_path / "tiny.keras", 1)
    x = windows()
    ref = HeatmapModel.load(path, backend="tensorflow", precision="float32", batch_size=32).predict_windows(x)
    assert ref.std() > 0.1  # a meaningful comparison: probabilities spread out
    f32 = HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32)
    assert (f32.backend, f32.precision) == ("openvino", "float32")
    np.testing.assert_allclose(f32.predict_windows(x), ref, atol=1e-4)
    bf16 = HeatmapModel.load(path, backend="openvino", precision="mixed_bfloat16", batch_size=32)
    assert np.abs(bf16.predict_windows(x) - ref).max() < 0.03
    # several asynchronous requests per batch: the same numbers
    two = HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32, requests=2)
    np.testing.assert_allclose(two.predict_windows(x[:50]), ref[:50], atol=1e-4)
    # TTA: the mean over the 8 dihedral transforms, as in TensorFlow
    tta_tf = HeatmapModel.load(path, backend="tensorflow", precision="float32", batch_size=32, tta=True)
    tta_ov = HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32, tta=True)
    np.testing.assert_allclose(tta_ov.predict_windows(x[:32]), tta_tf.predict_windows(x[:32]), atol=1e-4)


def test_openvino_cache_is_keyed_by_the_model_hash(tmp_path, monkeypatch):
    path = tiny_model(tmp_path / "m.keras", 1)
    x = windows(32)
    first = HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32)
    caches = sorted(tmp_path.glob("m.keras.openvino-*.xml"))
    assert len(caches) == 1 and caches[0].with_suffix(".bin").exists()
    assert caches[0] == backends.openvino_cache_path(path, backends.model_digest(path))
    p1 = first.predict_windows(x)

    def no_conversion(*a, **k):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(backends, "convert_to_openvino", no_conversion)
    np.testing.assert_array_equal(
        HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32).predict_windows(x), p1)
    monkeypatch.undo()
    # the same file name, other weights: the stale cache is not used, and is removed
    tiny_model(path, 2)
    new = HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32).predict_windows(x)
    ref = HeatmapModel.load(path, backend="tensorflow", precision="float32", batch_size=32).predict_windows(x)
    np.testing.assert_allclose(new, ref, atol=1e-4)
    assert np.abs(new - p1).max() > 0.01
    now = sorted(tmp_path.glob("m.keras.openvino-*"))
    assert len(now) == 2 and caches[0] not in now


def test_auto_choices(monkeypatch):
    assert backends.resolve_precision("auto", "openvino", {"avx2", "avx512_bf16"})[0] == "mixed_bfloat16"
    assert backends.resolve_precision("auto", "openvino", {"amx_bf16", "amx_tile"})[0] == "mixed_bfloat16"
    assert backends.resolve_precision("auto", "openvino", {"avx2", "avx512f"}) == (
        "float32", "auto: CPU has no amx_bf16/avx512_bf16")
    assert backends.resolve_precision("auto", "tensorflow", {"avx512_bf16"})[0] == "float32"
    assert backends.resolve_precision("mixed_float16", "tensorflow")[0] == "mixed_float16"
    with pytest.raises(WsiheatError, match="mixed_float16 with backend openvino"):
        backends.resolve_precision("mixed_float16", "openvino")
    with pytest.raises(WsiheatError, match="int8"):
        backends.resolve_precision("int8", "openvino")
    monkeypatch.setattr(backends, "gpu_visible", lambda: True)
    assert backends.resolve_backend("auto")[0] == "tensorflow"
    monkeypatch.setattr(backends, "gpu_visible", lambda: False)
    assert backends.resolve_backend("auto")[0] == "openvino"
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    assert backends.resolve_backend("auto") == ("tensorflow", "auto: openvino not installed")
    with pytest.raises(WsiheatError, match="openvino package is not installed"):
        backends.resolve_backend("openvino")
    with pytest.raises(WsiheatError, match="backend 'onnx'"):
        backends.resolve_backend("onnx")


def test_cpu_flags_reads_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert backends.cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert backends.bf16_flags({"fpu", "avx512_bf16"}) == ["avx512_bf16"]
    assert backends.cpu_flags(str(tmp_path / "none")) == set()


def test_evaluate_patches_backends_agree(tmp_path, capsys):
    path = tiny_model(tmp_path / "tiny.keras", 1)
    x = windows(40)
    labels = (x[:, 0, 16, 16, 0] > 128).astype(np.uint8)
    write_patches(tmp_path / "p.h5", x, labels, np.zeros(40, np.int64), ["s"], downsamples=TINY_META["downsamples"])
    reports = {}
    for backend, precision in (("tensorflow", "float32"), ("openvino", "float32"), ("openvino", "auto")):
        out = tmp_path / f"{backend}_{precision}"
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "patches", "-m", str(path), "-p", str(tmp_path / "p.h5"), "-o", str(out),
                  "--backend", backend, "--precision", precision, "--batch-size", "16"])
        so = capsys.readouterr().out
        assert exc.value.code == 0 and f"inference: {backend} " in so
        reports[backend, precision] = json.loads((out / "patch_report.json").read_text())
    ref, ov = reports["tensorflow", "float32"], reports["openvino", "float32"]
    assert ov["backend"] == "openvino" and ov["precision"] == "float32"
    assert abs(ov["auc"] - ref["auc"]) < 1e-6
    assert abs(reports["openvino", "auto"]["auc"] - ref["auc"]) < 0.01


def test_openvino_streaming_heatmap_matches_tensorflow(tmp_path):
    """The heatmap pipeline hands OpenVINO each batch and goes on reading (submit / wait): every
    probability still lands on its own cell, the short last batch included, on a real slide."""
    from _helpers import CMU_SVS

    from wsiheat.inference.backends import OpenVINOPredict
    from wsiheat.inference.heatmap import compute_heatmap

    path = tiny_model(tmp_path / "tiny.keras", 1)
    opts = {"max_cells": 600, "block": 256, "readers": 2, "thumbnail_size": 256,  # 600 = 18 x 32 + 24
            "downsamples": (1.0, 2.0)}
    ref = HeatmapModel.load(path, backend="tensorflow", precision="float32", batch_size=32)
    p_ref = ref.predict_slide(CMU_SVS, **opts).probabilities
    ov = HeatmapModel.load(path, backend="openvino", precision="float32", batch_size=32, requests=2)
    fn = ov.predict_fn()
    assert isinstance(fn, OpenVINOPredict) and fn.streaming and callable(fn.submit)
    p_ov = ov.predict_slide(CMU_SVS, **opts).probabilities
    assert (p_ref > 0).sum() == 600 and p_ref[p_ref > 0].std() > 0.02  # 600 cells, spread probabilities
    np.testing.assert_allclose(p_ov, p_ref, atol=1e-4)
    # the waiting path (stream=False) gives the same map
    batch = OpenVINOPredict(ov.model, 32, "float32", requests=2, stream=False)
    assert getattr(batch, "submit", None) is None
    hm = compute_heatmap(CMU_SVS, None, ov.metadata, predict=batch, batch_size=32, backend="openvino",
                         precision="float32", **opts)
    np.testing.assert_allclose(hm.probabilities, p_ov, atol=1e-6)
