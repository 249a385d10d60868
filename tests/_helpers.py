"""Helpers shared by the tests (import them as ``from _helpers import ...``).

* ``shared_path(*parts)``: a path under ``../shared/data`` (real slides, IDC patches, CAMELYON16
  annotations); a missing one fails the test loudly, or skips it where
  ``WSIHEAT_ALLOW_MISSING_SHARED=1`` (outside this workplace).
* ``write_patches(...)``: an HDF5 patches file that follows the contract exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"


#: Outside this workplace (no ``../shared`` beside the clone) set this variable to 1 to skip
#: the tests that need the real data there; in CI they fail loudly when it is missing.
ALLOW_MISSING_SHARED = os.environ.get("WSIHEAT_ALLOW_MISSING_SHARED") == "1"


def missing_shared(what: str) -> None:
    if ALLOW_MISSING_SHARED:
        pytest.skip(f"{what} (WSIHEAT_ALLOW_MISSING_SHARED=1)")
    pytest.fail(f"{what}: these tests need ../shared/data beside the clone "
                "(set WSIHEAT_ALLOW_MISSING_SHARED=1 to skip them outside CI)", pytrace=False)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; fails (or skips, see ALLOW_MISSING_SHARED) when it does not exist."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        missing_shared(f"real data not available: {p}")
    return p


def write_patches(path, images, labels, slide_ids, slides, *, fmt="wsiheat-patches", version=1,
                  downsamples=None, chunk=8):
    """An HDF5 patches file following the contract exactly."""
    n, t = images.shape[:2]
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images,
                         chunks=(max(1, min(chunk, n)),) + images.shape[1:] if n else None)
        f.create_dataset("labels", data=np.asarray(labels, np.uint8))
        f.create_dataset("centers", data=np.zeros((n, 2), np.int64))
        f.create_dataset("slide_ids", data=np.asarray(slide_ids, np.int32))
        st = h5py.string_dtype()
        f.create_dataset("slides", data=np.array(slides, dtype=object), dtype=st)
        f.create_dataset("slide_info", data=np.array([json.dumps({"name": s}) for s in slides],
                                                     dtype=object), dtype=st)
        if fmt is not None:
            f.attrs["format"] = fmt
        f.attrs["schema_version"] = version
        f.attrs["window"] = images.shape[2]
        f.attrs["center"] = 10
        f.attrs["stride"] = 10
        f.attrs["levels"] = np.array([0, 2][:t] + [-1] * max(0, t - 2), np.int64)
        f.attrs["downsamples"] = np.array(downsamples or [1.0, 4.0][:t] + [16.0] * max(0, t - 2))
        f.attrs["tissue_threshold"] = 0.5
        f.attrs["wsiheat_version"] = "test"
        f.attrs["params"] = json.dumps({"test": True})
    return path


def loopback_hosts(n: int) -> list[str]:
    """``n`` distinct free ``127.0.0.1:PORT`` addresses (ports held together while chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def run_tf_workers(argvs: list[list[str]], hosts: list[str], timeout: float, cwd=None,
                   extra_env: list[dict] | None = None) -> list[str]:
    """Run one process per worker of a ``TF_CONFIG`` cluster on the CPU; their outputs.

    Worker ``i`` runs ``argvs[i]`` with ``TF_CONFIG`` naming it task ``i`` of
    ``hosts`` and the repository on ``PYTHONPATH``. Every process must exit 0
    (the assertion shows the end of a failing one's output); any still running
    after ``timeout`` seconds or an error is killed.
    """
    procs = []
    try:
        for i, argv in enumerate(argvs):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                       TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}),
                       **(extra_env[i] if extra_env else {}))
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd))
        outs = [p.communicate(timeout=timeout)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def damaged_copy(src: Path, dst: Path, dataset: str = "images") -> Path:
    # the same bytes each run (the first B-tree node whose damage breaks only this dataset)
    """A copy whose chunk index (B-tree node) of ``dataset`` is overwritten: every other dataset still reads."""
    data = src.read_bytes()
    offsets = [i for i in range(len(data)) if data.startswith(b"TREE", i)]
    for off in offsets:
        shutil.copyfile(src, dst)
        with open(dst, "r+b") as f:
            f.seek(off)
            f.write(b"\xff" * 64)
        try:
            with h5py.File(dst, "r") as f:
                others_ok = all(f[k][...] is not None for k in f if k != dataset)
                try:
                    f[dataset][...]
                    continue
                except Exception:
                    if others_ok:
                        return dst
        except Exception:
            continue
    raise AssertionError(f"no B-tree of {dataset} found in {src}")


def run_wsiheat(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m wsiheat ARGS`` in a real process with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "wsiheat", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (to show a file was left unchanged)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def start_paused(args, tmp_path: Path, point: str, timeout: float = 90) -> subprocess.Popen:
    """Start ``wsiheat ARGS`` held at the test hook ``point`` (see docs/reliability.md); wait until it is there."""
    import signal
    import time

    hooks = Path(tmp_path) / "hooks"
    hooks.mkdir(exist_ok=True)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started as a background job (`cmd &`): SIGINT is ignored and the child would inherit that and
        # never see the tests' Ctrl-C. A handler here is reset to the default in the child on exec.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    env = dict(os.environ, PYTHONPATH=str(REPO), WSIHEAT_TEST_PAUSE=point, WSIHEAT_TEST_PAUSE_DIR=str(hooks))
    proc = subprocess.Popen([sys.executable, "-m", "wsiheat", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    reached = hooks / f"{point}.reached"
    deadline = time.time() + timeout
    while not reached.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if not reached.exists():
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"never reached the test hook {point} (exit {proc.returncode}): {err[-2000:]}")
    return proc


CMU_SVS = REPO / "data" / "slides" / "cmu-1-small-region.svs"
"""The embedded real H&E slide (OpenSlide's CMU-1-Small-Region, 2220 x 2967 px, one level)."""


def cmu_region(x: int = 0, y: int = 0, w: int | None = None, h: int | None = None) -> np.ndarray:
    """RGB uint8 of a box of :data:`CMU_SVS` read with OpenSlide (the whole slide by default)."""
    import openslide

    with openslide.OpenSlide(str(CMU_SVS)) as s:
        W, H = s.dimensions
        return np.asarray(s.read_region((x, y), 0, (w or W - x, h or H - y)).convert("RGB"))


def hed_shift(rgb: np.ndarray, h: float, e: float) -> np.ndarray:
    """Another lab's staining: H and E concentrations scaled by ``tools/stain_shift.py``'s own
    :func:`shift_image` (colour deconvolution without clipping)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stain_shift", REPO / "tools" / "stain_shift.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.shift_image(rgb, h, e)


TINY_META = {"window": 32, "center": 16, "stride": 16, "downsamples": [1.0, 2.0], "towers": 2,
             "levels": [None, None]}
"""Metadata of :func:`tiny_model`: two 32-px towers at downsamples 1 and 2."""


def tiny_model(path, seed: int) -> Path:
    """A saved 2-tower model on the tiny backbone, seeded, with a head scaled so probabilities spread over (0, 1)."""
    import keras

    from wsiheat.models.model import build_model, save_model

    keras.utils.set_random_seed(seed)
    model = build_model(2, 32, weights="none", backbone="tiny", dropout=0.0)
    head = model.get_layer("tumor")
    k, b = head.get_weights()
    head.set_weights([k * 40.0 / (np.abs(k).sum() + 1e-6), b])
    return save_model(model, path, TINY_META)
