"""What a GPU machine gives wsiheat's pipeline when TensorFlow is not installed there.

The lent GPU machines hold PyTorch but no TensorFlow, and nothing can be
installed from a registry there; Keras 3 (a 2 MB wheel) runs wsiheat's model,
as it is built by :func:`wsiheat.models.model.build_model`, on the PyTorch
backend. This script measures, in one run:

1. **model alone on the GPU**: the two-tower InceptionV3 (80 px windows,
   random weights) in float32 and mixed bfloat16, batches of 64 to 1024,
   windows/s (synchronised timings, after warm-up);
2. **reader ceiling on the machine's cores**: wsiheat's one window reader
   (:func:`wsiheat.patches.sampling.read_windows`, one region per tile of
   cells) over real slides, with 1 to N reader threads: windows/s and MPix/s,
   what the GPU would be fed.

It prints one table and writes it as JSON to ``--json``. Run it where Keras
and OpenSlide wheels can be installed from a folder (``--wheels DIR``) or are
installed already::

    python tools/gpu_keras_check.py --wheels WHEEL_DIR --slides SLIDE [SLIDE ...] --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install(wheels: Path) -> None:
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *files], check=True)


def model_rows(batches: list[int], seconds: float) -> list[dict]:
    import keras
    import numpy as np

    from wsiheat.models.model import build_model

    torch = None
    if keras.backend.backend() == "torch":
        import torch
    gpu = torch is not None and torch.cuda.is_available()

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    rows = []
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        model = build_model(2, 80, weights="none", backbone="inception_v3")
        for b in batches:
            x = np.random.default_rng(0).integers(0, 256, (b, 2, 80, 80, 3), dtype=np.uint8)
            xt = torch.from_numpy(x).cuda() if gpu else x
            with torch.no_grad() if torch is not None else contextlib.nullcontext():
                for _ in range(3):
                    model(xt, training=False)
                sync()
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    model(xt, training=False)
                    n += b
                sync()
                dt = time.perf_counter() - t0
            rows.append({"part": "model alone", "variant": f"{keras.backend.backend()} {policy}, batch {b}",
                         "windows_per_s": round(n / dt, 1)})
            print(rows[-1], flush=True)
        keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    return rows


def reader_rows(slides: list[Path], readers: list[int], cells: int) -> list[dict]:
    import numpy as np

    from wsiheat.patches.sampling import Grid, WindowSpec, read_windows
    from wsiheat.wsi.slide import Slide

    rows = []
    for path in slides:
        with Slide(path) as s:
            spec = WindowSpec(downsamples=(1.0, 2.0), window=80, center=50, stride=50)
            grid = Grid.for_slide(s.dimensions, spec)
        rr, cc = np.meshgrid(np.arange(grid.n_rows), np.arange(grid.n_cols), indexing="ij")
        rr, cc = rr.ravel()[:cells], cc.ravel()[:cells]
        centers = grid.centers(rr, cc)
        # tiles of 16 x 16 cells, as the heatmap pipeline groups them
        key = (rr // 16) * 100000 + (cc // 16)
        tiles = [np.flatnonzero(key == k) for k in np.unique(key)]
        px = len(centers) * 2 * 80 * 80
        for n in readers:
            handles = [Slide(path) for _ in range(n)]  # one handle per thread
            try:
                def work(i, tile, handles=handles, n=n):
                    return read_windows(handles[i % n], spec, centers[tile], None).shape[0]

                t0 = time.perf_counter()
                with ThreadPoolExecutor(n) as ex:
                    done = sum(ex.map(work, range(len(tiles)), tiles))
                dt = time.perf_counter() - t0
            finally:
                for h in handles:
                    h.close()
            rows.append({"part": "reader", "variant": f"{path.name}, {n} reader(s)",
                         "windows_per_s": round(done / dt, 1), "mpix_per_s": round(px / dt / 1e6, 1)})
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, default=None, help="folder of wheels to install first (keras, openslide)")
    ap.add_argument("--slides", type=Path, nargs="*", default=[ROOT / "data" / "slides" / "cmu-1-small-region.svs"])
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--readers", default="")
    ap.add_argument("--cells", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.wheels:
        install(a.wheels)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    sys.path.insert(0, str(ROOT))
    cores = os.cpu_count() or 1
    readers = [int(v) for v in a.readers.split(",")] if a.readers else sorted({1, 2, 4, 8, cores} & set(range(1, cores + 1)))
    info = {"cores": cores}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        info["gpu"] = "no torch"
    print(info, flush=True)
    rows: list[dict] = []
    for part, fn in (("reader", lambda: reader_rows(a.slides, readers, a.cells)),
                     ("model", lambda: model_rows([int(v) for v in a.batches.split(",")], a.seconds))):
        try:
            rows += fn()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other part
            rows.append({"part": part, "variant": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(rows[-1], flush=True)
    print(f"\n{info['gpu']}, {cores} CPU cores")
    print(f"{'part':<12} {'variant':<46} {'windows/s':>10} {'MPix/s':>8}")
    for r in rows:
        print(f"{r['part']:<12} {r['variant']:<46} {r.get('windows_per_s', ''):>10} {r.get('mpix_per_s', ''):>8}"
              + (f"  {r['error']}" if "error" in r else ""))
    if a.json:
        a.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
