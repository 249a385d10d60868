#!/usr/bin/env python3
"""Tile latency of `wsiheat view`: 200 random tiles, cold and warm cache, 8 concurrent clients.

    PYTHONPATH=. python tools/bench_viewer.py [--results DIR] [--tiles 200] [--clients 8] [--json out.json]

Without ``--results`` it first makes a results folder with real heatmaps of
the real slides in ``data/`` (the 4 test mosaics and the CMU SVS) and
``../shared/data/slides`` (when present), using a tiny deterministic model
(how dark the centre of each window is; a few seconds per slide on the CPU).

The viewer runs as its own process (``python -m wsiheat.viewer view RESULTS
--port 0``); every slide page is opened first (slides and heatmaps opened,
as when a user opens the page), then for each layer:

* **cold**: N random tiles never requested before (tile cache empty for them),
* **warm**: the same N tiles again (served from the LRU cache),

fetched by C client threads, each with its own keep-alive connection.
Slide tiles are drawn uniformly over all tiles of every slide's pyramid
(so mostly from the finest levels, where a viewer spends its requests);
the heatmap pyramids are small (8 px per cell), so heatmap requests are
distinct (tile, colormap, threshold) triples, as the sliders make them.
Reported: p50 / p95 / max latency (ms) and tiles per second.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def real_slides() -> list[Path]:
    out = sorted(p for p in (REPO / "data" / "mosaics" / "test").glob("*.tif") if not p.name.endswith("_mask.tif"))
    out.append(REPO / "data" / "slides" / "cmu-1-small-region.svs")
    shared = REPO / ".." / "shared" / "data" / "slides"
    out += [p for p in sorted(shared.glob("*.svs")) if p.name != "cmu-1-small-region.svs"]
    return out


def make_results(out: Path) -> None:
    """Heatmaps of :func:`real_slides` with a tiny model (the viewer tests' model)."""
    import keras

    from wsiheat.inference.heatmap import heatmap_slide
    from wsiheat.models.model import load_model, save_model

    window, center = 80, 50
    inp = keras.Input((1, window, window, 3), dtype="uint8")
    x = keras.layers.Reshape((window, window, 3))(inp)
    x = keras.layers.Rescaling(1.0)(x)
    m = (window - center) // 2
    x = keras.layers.Cropping2D(((m, m), (m, m)))(x)
    conv = keras.layers.Conv2D(1, 1)
    x = conv(x)
    conv.set_weights([np.full((1, 1, 3, 1), -1 / 150, np.float32), np.array([3.2], np.float32)])
    x = keras.layers.ReLU(max_value=1.0)(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    meta = {"window": window, "center": center, "stride": center, "downsamples": [1.0], "towers": 1,
            "levels": [None]}
    path = save_model(model, out / "dark.keras", meta)
    model, meta = load_model(path)
    res = out / "results"
    res.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in real_slides():
            heatmap_slide(s, model, meta, res, lesion_threshold=0.4, model_path=str(path))
            print(f"  heatmap of {s.name}", file=sys.stderr)


def start_viewer(results: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "wsiheat", "view", str(results), "--port", "0",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the viewer did not start: {line!r}")
    return proc, int(m.group(1))


def draw_tiles(pages: dict[str, dict], layer: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct random tile paths of ``layer`` ('slide' or 'heatmap'), uniform over all tiles."""
    all_tiles = []
    for key, d in pages.items():
        g = d[layer]
        for level in range(g["maxLevel"] + 1):
            f = 2 ** (g["maxLevel"] - level)
            w, h = math.ceil(g["width"] / f), math.ceil(g["height"] / f)
            nc, nr = math.ceil(w / g["tileSize"]), math.ceil(h / g["tileSize"])
            all_tiles += [(key, level, c, r) for c in range(nc) for r in range(nr)]
    if layer == "slide":
        pick = rng.choice(len(all_tiles), size=min(n, len(all_tiles)), replace=False)
        return [f"/slides/{k}/slide_files/{lv}/{c}_{r}.jpeg" for k, lv, c, r in (all_tiles[i] for i in pick)]
    # the heatmap pyramid is small: distinct (tile, colormap, threshold) requests, as the sliders make
    from wsiheat.viewer.tiles import COLORMAPS

    variants = [(cm, t / 20) for cm in COLORMAPS for t in range(20)]
    pick = rng.choice(len(all_tiles) * len(variants), size=min(n, len(all_tiles) * len(variants)), replace=False)
    out = []
    for i in pick:
        (k, lv, c, r), (cm, thr) = all_tiles[i // len(variants)], variants[i % len(variants)]
        out.append(f"/slides/{k}/heatmap_files/{lv}/{c}_{r}.png?cmap={cm}&thr={thr:.2f}")
    return out


def fetch_all(port: int, paths: list[str], clients: int) -> tuple[np.ndarray, float, list[tuple[float, str]]]:
    """Latencies (s) of GETs of ``paths`` by ``clients`` threads with keep-alive connections; wall time;
    the (latency, path) pairs."""
    q: queue.Queue = queue.Queue()
    for p in paths:
        q.put(p)
    lat: list[float] = []
    pairs: list[tuple[float, str]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            try:
                p = q.get_nowait()
            except queue.Empty:
                break
            t = time.perf_counter()
            conn.request("GET", p)
            r = conn.getresponse()
            body = r.read()
            dt = time.perf_counter() - t
            if r.status != 200 or not body:
                errors.append(f"{p}: {r.status}")
            with lock:
                lat.append(dt)
                pairs.append((dt, p))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    return np.array(lat), wall, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, help="existing results folder (default: make one)")
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--slowest", type=int, default=0, help="also list the N slowest requests of each run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results
        if results is None:
            print("making heatmaps of the real slides ...", file=sys.stderr)
            make_results(Path(tmp))
            results = Path(tmp) / "results"
        proc, port = start_viewer(results)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("GET", "/")
            index = conn.getresponse().read().decode()
            keys = re.findall(r'data-key="([^"]+)"', index)
            pages = {}
            for k in keys:  # open every slide as a user would: its page
                conn.request("GET", f"/slides/{k}.html")
                page = conn.getresponse().read().decode()
                m = re.search(r'id="slide-data">(.*?)</script>', page, re.DOTALL)
                if m and m.group(1) != "null":
                    pages[k] = json.loads(m.group(1))
            conn.close()
            rng = np.random.default_rng(args.seed)
            rows, slowest = {}, {}
            for layer in ("slide", "heatmap"):
                paths = draw_tiles(pages, layer, args.tiles, rng)
                for phase in ("cold", "warm"):
                    lat, wall, pairs = fetch_all(port, paths, args.clients)
                    slowest[f"{layer} {phase}"] = sorted(pairs, reverse=True)[:args.slowest]
                    rows[f"{layer} {phase}"] = {
                        "tiles": len(lat), "p50_ms": float(np.percentile(lat, 50) * 1e3),
                        "p95_ms": float(np.percentile(lat, 95) * 1e3), "max_ms": float(lat.max() * 1e3),
                        "tiles_per_s": len(lat) / wall}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    sizes = {k: f"{d['width']}x{d['height']}" for k, d in pages.items()}
    print(f"{len(pages)} slides: {', '.join(f'{k} {v}' for k, v in sizes.items())}")
    print(f"{args.tiles} random tiles per layer, {args.clients} concurrent clients, {os.cpu_count()} CPUs")
    print(f"{'':16s}{'p50 ms':>9s}{'p95 ms':>9s}{'max ms':>9s}{'tiles/s':>9s}")
    for name, r in rows.items():
        print(f"{name:16s}{r['p50_ms']:9.1f}{r['p95_ms']:9.1f}{r['max_ms']:9.1f}{r['tiles_per_s']:9.0f}")
    for name, pairs in slowest.items():
        if pairs:
            print(f"slowest {name}: " + ", ".join(f"{p} {dt * 1e3:.0f} ms" for dt, p in pairs))
    if args.json:
        args.json.write_text(json.dumps({"slides": sizes, "clients": args.clients, "cpus": os.cpu_count(),
                                         "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
