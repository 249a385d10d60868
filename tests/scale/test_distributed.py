"""Tests of wsiheat.scale.batch: many slides on a real local Dask cluster, resumable runs,
failures isolated, multi-worker training with TF_CONFIG on loopback.

Slides are small pyramidal tiled TIFFs written with tifffile and read by OpenSlide.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import tifffile
from _helpers import loopback_hosts, run_tf_workers

from wsiheat.errors import WsiheatError
from wsiheat.scale.batch import extract_many
from wsiheat.scale.runner import run_slides
from wsiheat.scale.tasks import SlideTask, read_manifest, status_table, tasks_from_paths
from wsiheat.training.distribute import tf_config_workers

REPO = Path(__file__).resolve().parents[2]
PARAMS = dict(levels=(0, 1), window=64, center=32, stride=48, tissue_threshold=0.5, max_normal=60)


# --- fixtures -------------------------------------------------------------------------

def write_pyramid(path: Path, level0: np.ndarray, n_levels: int = 3) -> Path:
    """Multi-page tiled TIFF (OpenSlide generic-tiff), each level half the previous."""
    with tifffile.TiffWriter(path) as tw:
        lv = level0
        for i in range(n_levels):
            tw.write(lv, tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1 if i else 0)
            lv = cv2.resize(lv, (lv.shape[1] // 2, lv.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return path


def tissue_image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.ogrid[:size, :size]
    inside = ((xx - size * 0.5) / (size * 0.4)) ** 2 + ((yy - size * 0.5) / (size * 0.35)) ** 2 <= 1
    pink = np.clip(np.array([205, 120, 170]) + rng.integers(-30, 31, size=(size, size, 3)), 0, 255)
    img[inside] = pink.astype(np.uint8)[inside]
    return img


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three slides (one with a tumor mask), a manifest, and a corrupt 'slide'."""
    d = tmp_path_factory.mktemp("slides")
    (d / "sub").mkdir()
    for i, name in enumerate(["s_a", "s_b", "s_c"]):
        write_pyramid(d / "sub" / f"{name}.tif", tissue_image(768, i))
    mask = np.zeros((768, 768), np.uint8)
    mask[300:420, 280:460] = 255
    cv2.imwrite(str(d / "sub" / "s_a_mask.png"), mask)
    (d / "manifest.csv").write_text("slide,ground_truth,split,notes\n"
                                    "sub/s_a.tif,sub/s_a_mask.png,train,tumor\n"
                                    "sub/s_b.tif,,train,\n"
                                    f"{d / 'sub' / 's_c.tif'},,test,absolute path\n")
    bad = d / "sub" / "s_bad.tif"
    bad.write_bytes(b"II*\x00" + os.urandom(4000))
    return d


@pytest.fixture(scope="module")
def client():
    """A real local Dask cluster: scheduler plus two worker processes on loopback."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def h5_digest(path: Path) -> dict:
    """Every dataset's bytes and every root attribute of a patches file."""
    out = {}
    with h5py.File(path, "r") as f:
        for k in sorted(f):
            data = f[k][()]
            if data.dtype == object:
                data = np.array([v.decode() if isinstance(v, bytes) else v for v in data]).astype(str)
            out[k] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
        for k in sorted(f.attrs):
            out["@" + k] = repr(np.asarray(f.attrs[k]).tolist())
    return out


@pytest.fixture(scope="module")
def single(slides, tmp_path_factory):
    """The single-process reference run (workers=0)."""
    out = tmp_path_factory.mktemp("single") / "patches.h5"
    run = extract_many(read_manifest(slides / "manifest.csv"), out, workers=0, progress=False, **PARAMS)
    return out, run


# --- manifests -------------------------------------------------------------------------

def test_manifest_relative_paths_optional_ground_truth(slides):
    tasks = read_manifest(slides / "manifest.csv")
    assert [t.name for t in tasks] == ["s_a", "s_b", "s_c"]
    assert Path(tasks[0].slide) == slides / "sub" / "s_a.tif"
    assert Path(tasks[0].ground_truth) == slides / "sub" / "s_a_mask.png"
    assert tasks[1].ground_truth is None and tasks[2].split == "test"
    assert [t.name for t in read_manifest(slides / "manifest.csv", split="train")] == ["s_a", "s_b"]


@pytest.mark.parametrize("text, needle", [
    ("path,ground_truth\nsub/s_a.tif,\n", "'slide' column"),
    ("slide\nsub/missing.tif\n", "line 2: slide sub/missing.tif does not exist"),
    ("slide,ground_truth\nsub/s_a.tif,nope.xml\n", "ground truth nope.xml does not exist"),
    ("slide\nsub/s_a.tif\nsub/s_a.tif\n", "two slides are named s_a"),
    ("slide,split\n,train\n", "line 2: empty 'slide' cell"),
    ("slide\n", "no slides"),
])
def test_manifest_errors_are_one_line(slides, text, needle):
    m = slides / "bad_manifest.csv"
    m.write_text(text)
    with pytest.raises(WsiheatError) as exc:
        read_manifest(m)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and str(m) in msg
    with pytest.raises(WsiheatError, match="no such manifest"):
        read_manifest(slides / "absent.csv")


# --- the runner ------------------------------------------------------------------------

def _flaky(task: SlideTask, state_dir: str) -> dict:
    marker = Path(state_dir) / f"{task.name}.seen"
    if not marker.exists():
        marker.write_text("1")
        raise RuntimeError(f"first attempt of {task.name} fails")
    return {"ok": task.name}


def test_local_loop_retries_once_and_reports(tmp_path):
    import functools

    tasks = [SlideTask("a", "a.tif"), SlideTask("b", "b.tif")]
    res = run_slides(tasks, functools.partial(_flaky, state_dir=str(tmp_path)), progress=False)
    assert [r.status for r in res] == ["done", "done"] and [r.attempts for r in res] == [2, 2]
    assert "first attempt of a fails" in res[0].errors[0]
    assert res[0].worker.endswith(f":{os.getpid()}")  # in-process: no Dask
    # without retries the same failure is final, and does not stop the next slide
    for p in tmp_path.iterdir():
        p.unlink()
    (tmp_path / "b.seen").write_text("1")
    res = run_slides(tasks, functools.partial(_flaky, state_dir=str(tmp_path)), retries=0, progress=False)
    assert [r.status for r in res] == ["failed", "done"]
    assert res[0].error == "RuntimeError: first attempt of a fails"
    table = status_table(res)
    assert "a  " in table and "failed" in table and "1 done, 0 skipped, 1 failed" in table


# --- extraction on a real local cluster ------------------------------------------------

def test_cluster_extract_identical_to_single_process(slides, single, client, tmp_path):
    ref, ref_run = single
    assert [r.status for r in ref_run["results"]] == ["done"] * 3
    out = tmp_path / "patches.h5"
    run = extract_many(read_manifest(slides / "manifest.csv"), out, client=client, progress=False, **PARAMS)
    assert [r.status for r in run["results"]] == ["done"] * 3
    pids = {r.worker for r in run["results"]}
    assert all(not w.endswith(f":{os.getpid()}") for w in pids)  # ran in worker processes
    assert h5_digest(out) == h5_digest(ref)
    assert not (tmp_path / "patches.h5.shards").exists()  # shards merged and removed
    with h5py.File(out) as f:
        assert [s.decode() for s in f["slides"][:]] == ["s_a", "s_b", "s_c"]  # manifest order
        assert f["labels"][:].sum() > 0  # tumor windows from s_a's mask


def test_identical_to_sequential_extract_to_file(slides, single, tmp_path):
    from wsiheat.patches.extract import extract_to_file

    ref, _ = single
    out = tmp_path / "seq.h5"
    p = dict(PARAMS)
    for t in read_manifest(slides / "manifest.csv"):
        extract_to_file(t.slide, t.ground_truth, out, progress=False, **p)
    assert h5_digest(out) == h5_digest(ref)


def test_failing_slide_reported_others_intact_and_rerun_skips(slides, single, client, tmp_path):
    ref, _ = single
    tasks = read_manifest(slides / "manifest.csv")
    tasks.insert(1, tasks_from_paths([slides / "sub" / "s_bad.tif"])[0])
    out = tmp_path / "patches.h5"
    run = extract_many(tasks, out, client=client, progress=False, **PARAMS)
    status = {r.name: r for r in run["results"]}
    assert status["s_bad"].status == "failed" and status["s_bad"].attempts == 2
    assert "s_bad.tif" in status["s_bad"].error
    assert [status[n].status for n in ("s_a", "s_b", "s_c")] == ["done"] * 3
    assert h5_digest(out) == h5_digest(ref)  # the failure spoiled nothing
    before = out.read_bytes()
    # second run: finished slides are skipped, the bad one is tried again, the file is untouched
    run2 = extract_many(tasks, out, client=client, progress=False, **PARAMS)
    assert [r.status for r in run2["results"]] == ["skipped", "failed", "skipped", "skipped"]
    assert out.read_bytes() == before
    assert "3 skipped, 1 failed" in status_table(run2["results"])


def test_resume_from_shards_after_interruption(slides, single, tmp_path):
    """Shards of an interrupted run (no merged output yet) are reused, not recomputed."""
    ref, _ = single
    tasks = read_manifest(slides / "manifest.csv")
    out = tmp_path / "patches.h5"
    first = extract_many(tasks[:2], tmp_path / "other.h5", workers=0, progress=False, keep_shards=True, **PARAMS)
    shard_dir = tmp_path / "other.h5.shards"
    assert sorted(p.name for p in shard_dir.iterdir()) == ["s_a.h5", "s_b.h5"]
    assert first["merged"]["rows_total"] > 0
    shard_dir.rename(tmp_path / "patches.h5.shards")  # as if a run into out.h5 had stopped before merging
    # a half-written shard is never under its final name; a damaged one is redone
    (tmp_path / "patches.h5.shards" / "s_b.h5").write_bytes(b"truncated")
    run = extract_many(tasks, out, workers=0, progress=False, **PARAMS)
    assert [r.status for r in run["results"]] == ["skipped", "done", "done"]
    assert h5_digest(out) == h5_digest(ref)


def test_local_cluster_started_by_workers_option(slides, single, tmp_path):
    """--workers N path: run_slides starts and stops its own LocalCluster."""
    ref, _ = single
    out = tmp_path / "patches.h5"
    run = extract_many(read_manifest(slides / "manifest.csv"), out, workers=2, progress=False, **PARAMS)
    assert [r.status for r in run["results"]] == ["done"] * 3
    assert h5_digest(out) == h5_digest(ref)


# --- heatmaps on the cluster -----------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras

    from wsiheat.models.model import save_model

    inp = keras.Input((2, 64, 64, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(keras.layers.Reshape((128, 64, 3))(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid")
    out = dense(x)
    dense.set_weights([np.array([[4.0], [-4.0], [0.0]], np.float32), np.zeros(1, np.float32)])
    meta = {"window": 64, "center": 32, "stride": 48, "downsamples": [1.0, 2.0], "towers": 2,
            "levels": [0, 1]}
    return save_model(keras.Model(inp, out), tmp_path_factory.mktemp("model") / "m.keras", meta)


def test_cluster_heatmaps_identical_model_loaded_once(slides, client, model_path, tmp_path):
    from wsiheat.scale.batch import heatmap_many

    tasks = read_manifest(slides / "manifest.csv")
    a = heatmap_many(tasks, model_path, tmp_path / "single", workers=0, progress=False)
    b = heatmap_many(tasks, model_path, tmp_path / "cluster", client=client, progress=False)
    assert [r.status for r in a["results"]] == ["done"] * 3 == [r.status for r in b["results"]]
    for t in tasks:
        with h5py.File(tmp_path / "single" / f"{t.name}.h5") as fa, \
                h5py.File(tmp_path / "cluster" / f"{t.name}.h5") as fb:
            np.testing.assert_allclose(fa["probabilities"][()], fb["probabilities"][()], rtol=1e-5, atol=1e-6)
        ja = json.loads((tmp_path / "single" / f"{t.name}.json").read_text())
        jb = json.loads((tmp_path / "cluster" / f"{t.name}.json").read_text())
        assert ja["score"] == pytest.approx(jb["score"], abs=1e-6)
    # every worker process loaded the model once, whatever the number of its slides
    per_worker: dict[str, int] = {}
    for r in b["results"]:
        per_worker[r.worker] = max(per_worker.get(r.worker, 0), r.outputs["model_loads"])
    assert set(per_worker.values()) == {1}
    # second run: everything skipped
    c = heatmap_many(tasks, model_path, tmp_path / "cluster", client=client, progress=False)
    assert [r.status for r in c["results"]] == ["skipped"] * 3
    # precision reaches the workers' model (cached apart from the default one) and the outputs
    d = heatmap_many(tasks[:1], model_path, tmp_path / "bf16", client=client, progress=False,
                     precision="mixed_bfloat16")
    assert d["results"][0].status == "done"
    jd = json.loads((tmp_path / "bf16" / f"{tasks[0].name}.json").read_text())
    assert jd["precision"] == "mixed_bfloat16"
    from wsiheat.inference.backends import resolve_backend, resolve_precision

    auto = resolve_backend("auto")[0]
    js = json.loads((tmp_path / "single" / f"{tasks[0].name}.json").read_text())
    assert (js["backend"], js["precision"]) == (auto, resolve_precision("auto", auto)[0])


# --- multi-worker training -----------------------------------------------------------------

def test_tf_config_workers():
    cfg = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    assert tf_config_workers({"TF_CONFIG": json.dumps(cfg)}) == 2
    assert tf_config_workers({}) == 0
    with pytest.raises(WsiheatError, match="TF_CONFIG"):
        tf_config_workers({"TF_CONFIG": "{not json"})


def test_two_workers_train_with_tf_config(tmp_path):
    """Two local worker processes on 127.0.0.1 train a tiny model with MultiWorkerMirroredStrategy."""
    run_tf_workers([[sys.executable, str(REPO / "tests" / "training" / "multiworker_train.py"), str(tmp_path)]] * 2,
                   loopback_hosts(2), timeout=240)
    reports = [json.loads((tmp_path / f"worker_{i}.json").read_text()) for i in range(2)]
    for r in reports:
        assert r["replicas"] == 2 and "CollectiveAllReduce" in r["strategy"]
        assert len(r["loss"]) == 8 and all(np.isfinite(r["loss"]))
    # synchronous training: both workers end with the same weights
    assert reports[0]["weights_sum"] == pytest.approx(reports[1]["weights_sum"], rel=1e-6)
    import keras

    model = keras.saving.load_model(tmp_path / "model.keras")
    assert model.predict(np.zeros((3, 8), np.float32), verbose=0).shape == (3, 1)


# --- CLI ---------------------------------------------------------------------------------

def test_cli_extract_manifest_resumes_and_errors(slides, single, tmp_path):
    ref, _ = single
    out = tmp_path / "p.h5"
    args = [sys.executable, "-m", "wsiheat", "extract", "--manifest", str(slides / "manifest.csv"), "-o", str(out),
            "--levels", "0", "1", "--window", "64", "--center", "32", "--stride", "48",
            "--tissue-threshold", "0.5", "--max-normal", "60", "-q"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 slides: 3 done, 0 skipped, 0 failed" in r.stdout
    assert h5_digest(out) == h5_digest(ref)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "0 done, 3 skipped" in r.stdout and "nothing new" in r.stdout
    for bad, needle in ([["--manifest", str(tmp_path / "none.csv")], "no such manifest"],
                        [[], "give SLIDE [GROUND_TRUTH] or --manifest"]):
        r = subprocess.run([sys.executable, "-m", "wsiheat", "extract", *bad, "-o", str(out)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_cli_heatmap_manifest_matches_library_and_resumes(slides, model_path, tmp_path):
    from wsiheat.scale.batch import heatmap_many

    ref = heatmap_many(read_manifest(slides / "manifest.csv"), model_path, tmp_path / "ref", workers=0,
                       progress=False)
    assert [r.status for r in ref["results"]] == ["done"] * 3
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "wsiheat", "heatmap", "--manifest", str(slides / "manifest.csv"), "-m",
            str(model_path), "--out-dir", str(tmp_path / "cli")]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 slides: 3 done, 0 skipped, 0 failed" in r.stdout
    for t in read_manifest(slides / "manifest.csv"):
        with h5py.File(tmp_path / "ref" / f"{t.name}.h5") as fa, h5py.File(tmp_path / "cli" / f"{t.name}.h5") as fb:
            np.testing.assert_allclose(fa["probabilities"][()], fb["probabilities"][()], rtol=1e-5, atol=1e-6)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "0 done, 3 skipped" in r.stdout
    # a slide list and a manifest together is a one-line user error
    r = subprocess.run(args + [str(slides / "sub" / "s_a.tif")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and "not both" in r.stderr and "Traceback" not in r.stderr
