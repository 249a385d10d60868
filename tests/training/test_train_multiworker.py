"""`wsiheat train` under MultiWorkerMirroredStrategy: two real worker processes on loopback.

Each worker is a real ``python -m wsiheat train`` subprocess with its own
``TF_CONFIG`` (worker 0 is the chief) and its own output folder (as on two
machines that do not share a disk): the chief writes the model, history CSV
and PNG; the other worker writes nothing at its ``-o`` path and removes its
scratch folder. Plus the pieces of the custom loop's metrics against the
Keras metrics used by the single-machine ``fit`` path.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import loopback_hosts, run_tf_workers
from test_train import make_data, write_patches

REPO = Path(__file__).resolve().parents[2]


def test_tf_config_chief_rule():
    from wsiheat.errors import WsiheatError
    from wsiheat.training.distribute import tf_config_is_chief, tf_config_task

    def env(cluster, kind, index):
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}

    workers = {"worker": ["a:1", "b:1"]}
    assert tf_config_is_chief(env(workers, "worker", 0))
    assert not tf_config_is_chief(env(workers, "worker", 1))
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert tf_config_is_chief(env(with_chief, "chief", 0))
    assert not tf_config_is_chief(env(with_chief, "worker", 0))
    assert tf_config_is_chief({}) and tf_config_task({}) == (None, 0)
    assert tf_config_task(env(workers, "worker", 1)) == ("worker", 1)
    with pytest.raises(WsiheatError, match="TF_CONFIG"):
        tf_config_task({"TF_CONFIG": json.dumps({"cluster": workers, "task": {"index": "x"}})})


def test_loop_metrics_match_keras_metrics():
    """Binned training statistics and numpy validation metrics agree with the Keras metrics of `fit`."""
    import tensorflow as tf

    from wsiheat.evaluation.metrics import roc_auc
    from wsiheat.training.distribute import binned_stats, metrics_from_stats
    from wsiheat.training.train import metrics, numpy_metrics

    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.3).astype(np.float32)
    p = np.clip(rng.random(300) * 0.6 + 0.4 * y, 0, 1).astype(np.float32)
    p[:4] = 0.5  # the threshold itself
    keras_m = {}
    for m in metrics():
        m.update_state(y[:, None], p[:, None])
        keras_m[m.name] = float(m.result())
    stats = sum(np.asarray(binned_stats(tf.constant(y[i:i + 64, None]), tf.constant(p[i:i + 64, None])))
                for i in range(0, 300, 64))
    from_stats = metrics_from_stats(stats)
    exact = numpy_metrics(y, p)
    for k in ("accuracy", "sensitivity", "specificity"):
        assert from_stats[k] == pytest.approx(keras_m[k], abs=1e-6), k
        assert exact[k] == pytest.approx(keras_m[k], abs=1e-6), k
    assert exact["auc"] == pytest.approx(roc_auc(y, p))
    assert from_stats["auc"] == pytest.approx(exact["auc"], abs=0.01)
    assert keras_m["auc"] == pytest.approx(exact["auc"], abs=0.01)
    import keras

    bce = float(keras.losses.BinaryCrossentropy()(y[:, None], p[:, None]))
    assert exact["loss"] == pytest.approx(bce, rel=1e-4)


def test_cli_train_two_workers_on_loopback(tmp_path):
    from wsiheat.models.model import load_model
    from wsiheat.training.dataset import open_patch_file

    patches = write_patches(tmp_path / "p.h5", *make_data())
    hosts = loopback_hosts(2)
    outs = [tmp_path / f"machine{i}" / "model.keras" for i in range(2)]
    scratch = [tmp_path / f"tmp{i}" for i in range(2)]
    for i in range(2):
        outs[i].parent.mkdir()
        scratch[i].mkdir()
    logs = run_tf_workers(
        [[sys.executable, "-m", "wsiheat", "train", str(patches), "-o", str(outs[i]), "--backbone", "tiny",
          "--weights", "none", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8",
          "--val-fraction", "0.34"] for i in range(2)],
        hosts, timeout=120, cwd=tmp_path, extra_env=[{"TMPDIR": str(d)} for d in scratch])
    assert "the chief writes" in logs[1] and "2 epoch(s)" in logs[0]

    # the chief: model with complete metadata, 2-epoch history, curve PNG, no checkpoint left
    model, meta = load_model(outs[0])
    pf = open_patch_file(patches)
    assert meta["towers"] == 2 and meta["window"] == 16 and meta["downsamples"] == [1.0, 4.0]
    assert meta["levels"] == [0, 2] and meta["epochs"] == 2
    assert meta["training_data"]["fingerprint"] == pf.fingerprint()
    assert set(meta["val_metrics"]) >= {"loss", "auc", "accuracy", "sensitivity", "specificity",
                                        "balanced_accuracy"}
    assert all(np.isfinite(v) for k, v in meta["val_metrics"].items() if k != "auc")
    assert meta["multi_worker"] == {"workers": 2, "replicas": 2}
    with open(outs[0].with_name("model.history.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "auc", "val_loss", "val_auc", "val_specificity"} <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert outs[0].with_name("model.history.png").read_bytes()[:4] == b"\x89PNG"
    assert not outs[0].with_name("model.ckpt").exists()
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    assert np.isfinite(np.asarray(model(x))).all()

    # the other worker: nothing at its output path, scratch folder removed
    assert list(outs[1].parent.iterdir()) == []
    assert list(scratch[1].iterdir()) == []


def test_resume_is_refused_under_multi_worker(tmp_path, monkeypatch):
    from wsiheat.errors import WsiheatError
    from wsiheat.training.train import TrainConfig, train

    patches = write_patches(tmp_path / "p.h5", *make_data())
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(WsiheatError, match="resuming is not supported"):
        train(patches, tmp_path / "m.keras", TrainConfig(weights="none", backbone="tiny"), resume=True)
