#!/usr/bin/env python
"""Peak memory of ``wsiheat extract`` and ``wsiheat heatmap`` at 1, 10 and 40 gigapixels.

Usage::

    PYTHONPATH=$PWD python tools/bench_memory.py [--sizes 1 10 40] [--cells 256] [--cache DIR] [--keep]
    PYTHONPATH=$PWD python tools/bench_memory.py --sizes 40 --interrupt   # Ctrl-C check only

Slides: synthetic pyramidal TIFFs (JPEG tiles, quality 80, 512 px tiles,
levels at downsamples 1, 2, 4, ... until the last fits in 1024 px) of
``side x side`` pixels with ``side = sqrt(N * 1e9)``; tissue (textured pink
discs, 2 x 2) covers about half of the area. Every level is written tile by
tile with tifffile from the analytic layout (tiles wholly inside a disc or
wholly background are encoded once and repeated): no level is ever held in
memory. Slides are cached under ``--cache``; those of 10 Gpx and more are
deleted afterwards unless ``--keep``.

Runs, each command in its own process (``python -m wsiheat ...``), peak RSS
= the child's ``ru_maxrss`` (``os.wait4``):

* ``extract SLIDE -o OUT.h5 --levels 2 3`` (every other option at its default);
* ``heatmap SLIDE -m MODEL --out-dir DIR --max-cells N``: a real two-tower
  InceptionV3 (``build_model(2, 80, weights="none")``, levels 2 and 3), the
  whole slide's tissue mask, thumbnail and outputs, but only the first N
  tissue cells evaluated (the model's speed does not depend on the slide).

``--interrupt`` runs a heatmap of the largest slide over all its cells with
the progress bar on, sends SIGINT once windows are being evaluated, and
reports the seconds until the process ended and any file left in the output
folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource  # noqa: F401  (documents where the numbers come from)
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILE = 512
QUALITY = 80
#: tissue discs: centre (x, y) and radius as fractions of the side; total area ~ 0.50 of the slide
DISCS = ((0.25, 0.25, 0.2), (0.75, 0.25, 0.2), (0.25, 0.75, 0.2), (0.75, 0.75, 0.2))


# --- synthetic slide ------------------------------------------------------------------

def _texture(x0: int, y0: int, d: int, n: int = TILE) -> np.ndarray:
    """H&E-like pink/purple texture of a tile whose top-left level pixel is (x0, y0) at downsample d."""
    X = (x0 + np.arange(n) + 0.5) * d
    Y = (y0 + np.arange(n) + 0.5) * d
    a = np.sin(X[None, :] / 41.0) * np.cos(Y[:, None] / 29.0)
    b = np.sin((X[None, :] + Y[:, None]) / 97.0)
    base = np.array([214, 150, 196], np.float32)
    nuc = np.array([-90, -85, -40], np.float32)
    t = base + a[..., None] * 14 + (np.clip(a * b, 0.35, 1.0) - 0.35)[..., None] * 1.5 * nuc
    return np.clip(t, 0, 255).astype(np.uint8)


def _encode(tile: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert ok
    return buf.tobytes()


def _level_tiles(side: int, d: int):
    """Encoded JPEG tiles (row-major) of the level at downsample d; repeats share their bytes."""
    w = math.ceil(side / d)
    white = _encode(np.full((TILE, TILE, 3), 255, np.uint8))
    full = [_encode(_texture(k * 97, k * 61, 1)) for k in range(4)]
    discs = [(cx * side, cy * side, r * side) for cx, cy, r in DISCS]
    half = TILE * d * 0.7072  # half the tile diagonal, level-0 px
    for ty in range(0, w, TILE):
        for tx in range(0, w, TILE):
            mx, my = (tx + TILE / 2) * d, (ty + TILE / 2) * d
            dist = [math.hypot(mx - cx, my - cy) - r for cx, cy, r in discs]
            if min(dist) > half:
                yield white
            elif any(x < -half for x in dist):
                yield full[(tx // TILE + ty // TILE) % 4]
            else:
                X = (tx + np.arange(TILE) + 0.5) * d
                Y = (ty + np.arange(TILE) + 0.5) * d
                inside = np.zeros((TILE, TILE), bool)
                for cx, cy, r in discs:
                    inside |= (X[None, :] - cx) ** 2 + (Y[:, None] - cy) ** 2 <= r * r
                t = np.full((TILE, TILE, 3), 255, np.uint8)
                t[inside] = _texture(tx, ty, d)[inside]
                yield _encode(t)


def synthetic_slide(gpx: float, cache: Path) -> Path:
    """The cached synthetic slide of ``gpx`` gigapixels (written tile by tile when missing)."""
    import tifffile

    from wsiheat.wsi.pyramid import ensure_tifffile_jpeg

    side = int(round(math.sqrt(gpx * 1e9)))
    path = cache / f"synthetic_{gpx:g}gpx_{side}.tif"
    if path.exists():
        return path
    ensure_tifffile_jpeg()
    tmp = path.with_suffix(".part.tif")
    t0 = time.perf_counter()
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        d = 1
        while True:
            w = math.ceil(side / d)
            tw.write(_level_tiles(side, d), shape=(w, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                     compression="jpeg", photometric="ycbcr", subsampling=(2, 2), metadata=None,
                     subfiletype=0 if d == 1 else 1,
                     resolution=(1e4 / (0.25 * d),) * 2, resolutionunit="CENTIMETER")
            if w <= 1024:
                break
            d *= 2
    os.replace(tmp, path)
    print(f"# wrote {path.name}: {side} x {side} px, {path.stat().st_size / 1e9:.2f} GB "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def bench_model(cache: Path) -> Path:
    """A two-tower InceptionV3 (random weights) saved with levels 2 and 3, built in a subprocess."""
    path = cache / "inception2_levels23.keras"
    if path.exists():
        return path
    code = ("from wsiheat.models.model import build_model, save_model\n"
            "m = build_model(2, 80, weights='none')\n"
            f"save_model(m, {str(path)!r}, {{'window': 80, 'center': 50, 'stride': 50, 'levels': [2, 3], "
            "'downsamples': [4.0, 8.0], 'towers': 2})\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    return path


# --- runs -------------------------------------------------------------------------------

def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")


def _popen_rusage(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wsiheat", *args], env=_env(), **kw)


def measure(args: list[str]) -> dict:
    """Like :func:`run_measured` but reaps the child with ``os.wait4`` to get its own ``ru_maxrss``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = _popen_rusage(args, stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if p.returncode != 0:
        raise SystemExit(f"wsiheat {' '.join(args)} failed ({p.returncode}):\n{err[-3000:]}")
    return {"seconds": secs, "rss_mb": ru.ru_maxrss / 1024, "stdout": out, "stderr": err}


def interrupt_check(slide: Path, model: Path, work: Path, wait_s: float = 20.0) -> dict:
    """Heatmap of every cell of ``slide`` with the bar on; SIGINT once windows run; time to exit, leftovers."""
    out = work / "interrupt"
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    p = _popen_rusage(["heatmap", str(slide), "-m", str(model), "--out-dir", str(out), "--progress"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(p.stderr.fileno(), False)
    buf, t0, bar = b"", time.perf_counter(), ""
    while time.perf_counter() - t0 < 600:
        time.sleep(0.5)
        chunk = p.stderr.read() or b""
        buf += chunk
        lines = [x for x in re.split(rb"[\r\n]", buf) if b"patch" in x and b"/" in x]
        if lines:
            bar = lines[-1].decode(errors="replace").strip()
            m = re.search(r"\b(\d+)/(\d+)\b", bar)
            if m and int(m.group(1)) > 0 and time.perf_counter() - t0 > wait_s:
                break
        if p.poll() is not None:
            raise SystemExit(f"heatmap ended before the interrupt:\n{buf.decode(errors='replace')[-3000:]}")
    t_sig = time.perf_counter()
    p.send_signal(signal.SIGINT)
    p.wait()
    stop = time.perf_counter() - t_sig
    os.set_blocking(p.stderr.fileno(), True)
    tail = (buf + (p.stderr.read() or b"")).decode(errors="replace")
    left = sorted(f.name for f in out.iterdir())
    return {"seconds_to_stop": stop, "rc": p.returncode, "bar": bar, "left_over": left,
            "stderr_tail": tail[-600:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1, 10, 40], help="slide sizes in gigapixels")
    ap.add_argument("--cells", type=int, default=256, help="tissue cells evaluated by heatmap (--max-cells)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsiheat-bench-memory")
    ap.add_argument("--keep", action="store_true", help="keep the slides of 10 Gpx and more")
    ap.add_argument("--commands", nargs="+", default=["extract", "heatmap"], choices=["extract", "heatmap"])
    ap.add_argument("--interrupt", action="store_true", help="only the Ctrl-C check on the largest size")
    ap.add_argument("--slides-only", action="store_true", help="only write the slides")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.cache))
    if args.slides_only:
        for g in args.sizes:
            synthetic_slide(g, args.cache)
        return
    model = bench_model(args.cache) if ("heatmap" in args.commands or args.interrupt) else None
    if args.interrupt:
        slide = synthetic_slide(max(args.sizes), args.cache)
        r = interrupt_check(slide, model, work)
        print(json.dumps({k: v for k, v in r.items()}, indent=1))
        return
    rows = []
    print(f"{'size':>6s} {'side px':>8s} {'command':8s} {'seconds':>8s} {'peak RSS MB':>11s}  detail", flush=True)
    for g in args.sizes:
        slide = synthetic_slide(g, args.cache)
        side = int(round(math.sqrt(g * 1e9)))
        for cmd in args.commands:
            if cmd == "extract":
                out = work / f"patches_{g:g}.h5"
                r = measure(["extract", str(slide), "-o", str(out), "--levels", "2", "3", "--quiet"])
                detail = r["stdout"].strip().splitlines()[-1].split(": ", 1)[-1][:110]
                out.unlink(missing_ok=True)
            else:
                out = work / f"heat_{g:g}"
                out.mkdir(exist_ok=True)
                r = measure(["heatmap", str(slide), "-m", str(model), "--out-dir", str(out),
                             "--max-cells", str(args.cells), "--no-progress"])
                s = json.loads((out / f"{slide.stem}.json").read_text())
                detail = (f"{s['cells_evaluated']} of {s['cells_total']} cells evaluated "
                          f"(grid {s['geometry']['grid_shape'][0]} x {s['geometry']['grid_shape'][1]}), "
                          f"inference {s['inference_seconds']:.1f} s")
            rows.append({"gpx": g, "side": side, "command": cmd, "seconds": r["seconds"], "rss_mb": r["rss_mb"]})
            print(f"{g:5g}G {side:8d} {cmd:8s} {r['seconds']:8.1f} {r['rss_mb']:11.0f}  {detail}", flush=True)
        if g >= 10 and not args.keep:
            slide.unlink()
    for cmd in args.commands:
        rr = [r for r in rows if r["command"] == cmd]
        if len(rr) >= 2:
            lo, hi = rr[0], rr[-1]
            print(f"{cmd}: peak RSS {hi['rss_mb']:.0f} MB at {hi['gpx']:g} Gpx = "
                  f"{hi['rss_mb'] / lo['rss_mb']:.2f}x that at {lo['gpx']:g} Gpx ({lo['rss_mb']:.0f} MB)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
