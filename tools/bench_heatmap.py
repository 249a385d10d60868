"""Benchmark `wsiheat heatmap` against the model alone, a seed-style loop, and the reader's ceiling.

In one run, on one machine, for each slide (the real TCGA slide and a large
synthetic pyramidal TIFF):

* **end-to-end**: :func:`wsiheat.inference.heatmap.heatmap_slide` on the first N tissue
  cells (background reader threads + compiled model + every output file);
  patches/s counts the inference pipeline (reading + model), the whole call
  (tissue mask, thumbnail, outputs) is reported in seconds too;
* **(a) model alone**: the same compiled function on the same N windows,
  preloaded in memory, same batch size -- the physical limit;
* **(b) seed-style**: one ``read_region`` per window and tower, then
  ``model.predict`` on that window; also (b') the same per-window reading
  with batched prediction (``predict_on_batch``, N windows).

* **backends** (``--backend tensorflow,openvino,...``): end to end and model
  alone for each inference backend of :class:`wsiheat.inference.engine.HeatmapModel`,
  and its end-to-end speed-up over the first one (paired per round). Names:
  ``tensorflow``, ``tensorflow-xla`` (``jit_compile``), ``tensorflow-bf16``
  (Keras ``mixed_bfloat16``), ``tensorflow-fp16`` (``mixed_float16``, GPUs), ``openvino`` (precision auto), ``openvino-f32``,
  ``openvino-bf16`` (the default requests: ``THROUGHPUT`` hint, each batch
  split over one ``AsyncInferQueue`` request per stream), ``openvino-bf16-sync``
  (one synchronous request, ``LATENCY`` hint), ``openvino-bf16-async2`` (2
  requests), ``-nopin`` (``ENABLE_CPU_PINNING=NO``), ``-t1`` (1 thread),
  ``-nostream`` (the pipeline waits for each whole batch instead of handing
  it to :meth:`OpenVINOPredict.submit`); a suffix ``@openslide`` runs the same
  backend end to end with every slide read through OpenSlide
  (``WSIHEAT_SLIDE_READER=openslide``) instead of the default direct tile reads
  (:mod:`wsiheat.wsi.tiff_tiles`), e.g. ``openvino-bf16,openvino-bf16@openslide``;
* **stain normalisation** (``--stain-normalize reinhard,macenko,vahadane``):
  end to end for each backend with the model's metadata asking for that
  normaliser (target fitted on the embedded CMU H&E slide; the slide's source
  fitted once per call on 64 tissue windows, outside the timed pipeline, and
  reported in the call seconds), and its ratio to the same backend without
  normalisation (paired per round); goal >= 0.8;
* **reader ceiling** (``--readers 1,2,4``): the same pipeline with a *null
  model* (a function that returns at once), with the default reader (direct
  tile reads where they give OpenSlide's pixels) and with OpenSlide for
  every read, against *raw decode* (N threads, each with its own OpenSlide
  handle, reading the same regions with ``read_region`` and nothing else),
  in windows/s and decoded MPix/s: what a GPU would be fed.

Variants are interleaved over several rounds and the median is reported,
because the machine may be shared. The model is a real 2-tower InceptionV3
(random weights: speed does not depend on them), saved once in the work
folder (OpenVINO converts it from there). The synthetic slide is a tiled
pyramidal TIFF with JPEG tiles (``--synthetic-compression zlib`` for lossless).

Usage::

    python tools/bench_heatmap.py                 # defaults: N=768, seed N=64, 3 rounds
    python tools/bench_heatmap.py --cells 2048 --rounds 5 --synthetic-size 32768
    python tools/bench_heatmap.py --backend tensorflow,openvino-f32,openvino-bf16 --seed-cells 0 --no-ceiling
    python tools/bench_heatmap.py --backend none --readers 1,2,4 --seed-cells 0   # reader ceiling only
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsiheat.inference.predict import (  # noqa: E402
    make_predict_fn,
    predict_cells,
    spec_from_metadata,
    tiles_of_cells,
    tissue_cells,
)
from wsiheat.patches.sampling import read_windows, window_origin  # noqa: E402
from wsiheat.wsi.slide import Slide  # noqa: E402

TCGA = next((p for p in (ROOT / ".." / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs",
                          ROOT / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs") if p.exists()),
            ROOT / ".." / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs")
CAMELYON_WINDOWS = 100_000


def build_model(towers: int = 2, window: int = 80):
    """2-tower InceptionV3 following the saved-model contract (uint8 in, (B, 1) out)."""
    import keras

    try:
        from wsiheat.models.model import build_model as _build  # the training stage's builder, when merged
    except ImportError:
        _build = None
    if _build is not None:
        try:
            return _build(towers=towers, window=window, weights="none")  # speed does not depend on weights
        except TypeError:
            pass
    inp = keras.Input((towers, window, window, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    feats = []
    for t in range(towers):
        base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(window, window, 3),
                                              pooling="avg", name=f"tower{t}")
        feats.append(base(x[:, t]))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()(feats))
    return keras.Model(inp, out, name="bench_inception")


def synthetic_slide(path: Path, size: int, levels: int = 4, compression: str = "jpeg") -> Path:
    """A large tiled pyramidal TIFF of textured 'tissue' (an ellipse) on white, written tile by tile."""
    import tifffile

    rng = np.random.default_rng(0)
    noise = rng.integers(-18, 19, (256 + 64, 256 + 64, 3)).astype(np.int16)

    def tiles(h: int, w: int, scale: int):
        for ty in range(0, h, 256):
            for tx in range(0, w, 256):
                yy, xx = np.mgrid[ty:ty + 256, tx:tx + 256]
                X, Y = xx * scale / size - 0.5, yy * scale / size - 0.5
                inside = (X / 0.45) ** 2 + (Y / 0.38) ** 2 < 1
                wave = (np.sin(xx * scale / 37.0) * np.cos(yy * scale / 53.0) * 30).astype(np.int16)
                o = (tx * 7 + ty * 13) % 64
                base = np.array([205, 130, 185], np.int16) + wave[..., None] + noise[o:o + 256, o:o + 256]
                t = np.where(inside[..., None], base, 255)
                yield np.clip(t, 0, 255).astype(np.uint8)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for lv in range(levels):
            s = size >> lv
            tw.write(tiles(s, s, 1 << lv), shape=(s, s, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb",
                     compression=compression, subfiletype=0 if lv == 0 else 1, metadata=None)
    return path


def first_tissue_centers(slide: Slide, spec, n: int) -> np.ndarray:
    grid, tissue = tissue_cells(slide, spec)
    rows, cols = np.nonzero(tissue)
    return grid.centers(rows[:n], cols[:n]), int(tissue.sum())


def model_alone(predict, windows: np.ndarray, batch: int) -> float:
    """Windows/s of the model on windows already in memory, fed as the pipeline feeds it:
    handed over batch after batch without waiting when the backend can (``submit``), else
    called and waited for."""
    n = len(windows) // batch * batch
    submit = getattr(predict, "submit", None)
    out, where = np.zeros(n, np.float32), np.arange(n)
    t = time.perf_counter()
    for i in range(0, n, batch):
        if submit is not None:
            submit(windows[i:i + batch], where[i:i + batch], out, batch)
        else:
            predict(windows[i:i + batch])
    if submit is not None:
        predict.wait()
    return n / (time.perf_counter() - t)


def seed_style(slide: Slide, spec, centers: np.ndarray, model, batched: int = 0) -> float:
    """One read per window and tower; then model.predict per window (or per `batched` windows)."""
    W = spec.window
    t = time.perf_counter()
    buf = []
    for c in centers:
        towers = []
        for d in spec.downsamples:
            x, y = window_origin(c[None], d, W)[0]
            towers.append(slide.read_scaled((x * d, y * d), d, (W, W)))
        buf.append(np.stack(towers))
        if not batched:
            model.predict(np.stack(buf), verbose=0)
            buf = []
        elif len(buf) == batched:
            model.predict_on_batch(np.stack(buf))
            buf = []
    if buf:
        model.predict_on_batch(np.stack(buf))
    return len(centers) / (time.perf_counter() - t)


def make_backend(name: str, model_path: Path, batch: int):
    """(predict function, backend, precision) of a benchmark backend name (see the module docstring)."""
    from wsiheat.inference.engine import HeatmapModel

    if name in ("tensorflow", "tensorflow-xla", "tensorflow-bf16", "tensorflow-fp16"):
        prec = {"tensorflow-bf16": "mixed_bfloat16", "tensorflow-fp16": "mixed_float16"}.get(name, "float32")
        eng = HeatmapModel.load(model_path, backend="tensorflow", precision=prec, batch_size=batch)
        if name == "tensorflow-xla":
            return make_predict_fn(eng.model, eng.spec, batch, jit_compile=True), "tensorflow", "float32 xla"
        return eng.predict_fn(), "tensorflow", eng.precision
    if name.startswith("openvino"):
        parts = name.split("-")
        prec = {"f32": "float32", "bf16": "mixed_bfloat16"}.get(parts[1] if len(parts) > 1 else "", "auto")
        requests = 1 if "sync" in parts else next((int(p[5:]) for p in parts if p.startswith("async")), 0)
        eng = HeatmapModel.load(model_path, backend="openvino", precision=prec, batch_size=batch, requests=requests)
        config = {"ENABLE_CPU_PINNING": "NO"} if "nopin" in parts else {}
        threads = next((int(p[1:]) for p in parts if p[:1] == "t" and p[1:].isdigit()), None)
        stream = "nostream" not in parts
        if config or threads or not stream:
            from wsiheat.inference.backends import OpenVINOPredict

            fn = OpenVINOPredict(eng.model, batch, eng.precision, requests=requests, threads=threads, config=config,
                                 stream=stream)
            return fn, "openvino", f"{eng.precision} {'-'.join(parts[2:])}"
        fn = eng.predict_fn()
        return fn, "openvino", f"{eng.precision} {fn.requests} req"
    raise SystemExit(f"unknown backend {name!r}")


def null_model(batch: int):
    zeros = np.zeros(batch, np.float32)
    return lambda x: zeros


def region_reads(slide: Slide, spec, centers: np.ndarray, tiles) -> list[tuple]:
    """The OpenSlide reads of the pipeline: (level-0 location, level, (w, h)), one per tile and tower."""
    out = []
    for idx in tiles:
        for d in spec.downsamples:
            tl = window_origin(centers[idx], d, spec.window)
            o, e = tl.min(axis=0), tl.max(axis=0) + spec.window
            level = slide.level_for(d)
            f = d / slide.level_downsamples[level]
            out.append(((int(round(o[0] * d)), int(round(o[1] * d))), level,
                        (int(np.ceil((e[0] - o[0]) * f)), int(np.ceil((e[1] - o[1]) * f)))))
    return out


def raw_decode(path: Path, reads: list[tuple], threads: int) -> float:
    """Seconds to do ``reads`` with ``threads`` threads, each with its own OpenSlide handle."""
    from concurrent.futures import ThreadPoolExecutor

    import openslide

    handles = [openslide.OpenSlide(str(path)) for _ in range(threads)]

    def work(i):
        h = handles[i]
        for loc, level, size in reads[i::threads]:
            h.read_region(loc, level, size)

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(work, range(threads)))
    dt = time.perf_counter() - t
    for h in handles:
        h.close()
    return dt


def run_e2e(path, meta, out, predict, backend, precision, args, readers) -> dict:
    from wsiheat.inference.heatmap import compute_heatmap

    hm = compute_heatmap(path, None if backend != "tensorflow" else _KERAS[0], meta, batch_size=args.batch_size,
                         readers=readers, predict=predict, max_cells=args.cells, backend=backend,
                         precision=precision.split()[0], thumbnail_size=512)
    return hm.summary


_KERAS: list = []


@contextlib.contextmanager
def slide_reader(how: str):
    """Slides opened inside use ``how`` (``auto`` or ``openslide``), as ``WSIHEAT_SLIDE_READER`` does."""
    import os

    from wsiheat.wsi.tiff_tiles import READER_ENV

    before = os.environ.pop(READER_ENV, None)
    if how == "openslide":
        os.environ[READER_ENV] = "openslide"
    try:
        yield
    finally:
        os.environ.pop(READER_ENV, None)
        if before is not None:
            os.environ[READER_ENV] = before


def lscpu_line() -> str:
    """CPU model, cores and the flags that matter here, for the tables' headers."""
    import os
    import platform

    model = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from wsiheat.inference.backends import cpu_flags

    keep = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
            if f in cpu_flags()]
    return f"{model}, {os.cpu_count()} cores, flags {' '.join(keep) or '-'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=768, help="windows per end-to-end / model-alone variant")
    ap.add_argument("--seed-cells", type=int, default=64,
                    help="windows per seed-style variant (b); (b') uses --cells; 0: skip both")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="reader threads of the end-to-end variants")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synthetic-size", type=int, default=16384, help="level-0 side of the synthetic slide")
    ap.add_argument("--synthetic-compression", default="jpeg", choices=["jpeg", "zlib"])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--backend", default="tensorflow",
                    help="comma-separated backends (first = reference of the speed-ups), or 'none'")
    ap.add_argument("--readers", default="1,2,4", help="reader threads of the ceiling variants")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the null-model / raw-decode variants")
    ap.add_argument("--slides", default="tcga,synthetic", help="tcga, synthetic or both")
    ap.add_argument("--json", type=Path, default=None, help="also write the tables here (tools/gpu_check.sh)")
    ap.add_argument("--stain-normalize", default="", help="comma-separated normalisers to time end to end")
    args = ap.parse_args()

    import os

    import tensorflow as tf

    from wsiheat.models.model import save_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_heatmap_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {lscpu_line()}")
    print(f"tensorflow {tf.__version__}, load average {os.getloadavg()[0]:.1f}; batch {args.batch_size}, "
          f"readers {args.workers}, {args.cells} windows (seed-style {args.seed_cells}), {args.rounds} rounds, "
          f"median reported", flush=True)
    backends = [] if args.backend == "none" else [b.strip() for b in args.backend.split(",") if b.strip()]
    readers = [int(r) for r in args.readers.split(",")] if not args.no_ceiling else []
    model_path = work / "bench_inception.keras"
    if not model_path.exists():
        save_model(build_model(), model_path, {"window": 80, "center": 50, "stride": 50, "downsamples": [1.0, 2.0],
                                               "towers": 2, "levels": [None, None]})
    from wsiheat.models.model import load_model

    _KERAS.append(load_model(model_path)[0])
    model = _KERAS[0]
    engines, made = {}, {}
    for b in backends:
        base = b.split("@")[0]
        if base not in made:
            t = time.perf_counter()
            made[base] = make_backend(base, model_path, args.batch_size)
            print(f"backend {base}: {made[base][1]} {made[base][2]} (ready in {time.perf_counter() - t:.1f} s)",
                  flush=True)
        engines[b] = made[base]
    syn = work / f"synthetic_{args.synthetic_size}_{args.synthetic_compression}.tif"
    cases = []
    if "tcga" in args.slides:
        if TCGA.exists():
            cases.append(("TCGA svs (JPEG 2000)", TCGA, [1.0, 2.0]))
        else:
            print(f"skip the real slide: {TCGA} not found")
    if "synthetic" in args.slides:
        if not syn.exists():
            t = time.perf_counter()
            synthetic_slide(syn, args.synthetic_size, compression=args.synthetic_compression)
            print(f"wrote {syn} ({syn.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
        cases.append((f"synthetic {args.synthetic_size} {args.synthetic_compression}", syn, [2.0, 4.0]))

    stains = {}
    names = [n.strip() for n in args.stain_normalize.split(",") if n.strip()]
    if names:
        import openslide

        from wsiheat.wsi.stain import get_normalizer

        with openslide.OpenSlide(str(ROOT / "data" / "slides" / "cmu-1-small-region.svs")) as o:
            ref = np.asarray(o.read_region((0, 0), 0, o.dimensions).convert("RGB"))[::2, ::2]
        stains = {name: get_normalizer(name).fit(ref, "cmu-1-small-region.svs").to_dict() for name in names}
    rows, ceiling, stain_rows = [], [], []
    for label, path, ds in cases:
        meta = {"window": 80, "center": 50, "stride": 50, "downsamples": ds, "towers": 2, "levels": [None, None]}
        spec = spec_from_metadata(meta)
        with Slide(path) as s:
            centers, n_tissue = first_tissue_centers(s, spec, args.cells)
            windows = read_windows(s, spec, centers, None)  # preloaded for (a)
            grid, _ = tissue_cells(s, spec)
            rc = np.stack([np.floor(centers[:, 1] / spec.cell0), np.floor(centers[:, 0] / spec.cell0)], 1)
            tiles = tiles_of_cells(rc[:, 0].astype(int), rc[:, 1].astype(int),
                                   max(1, (1024 - spec.window) // spec.stride + 1))
            reads = region_reads(s, spec, centers, tiles)
        mpix = sum(w * h for _, _, (w, h) in reads) / 1e6
        for predict, _, _ in made.values():
            predict(windows[:args.batch_size])  # trace + warm up, excluded from all timings
        if args.seed_cells:
            model.predict(windows[:1], verbose=0)
            model.predict_on_batch(windows[:args.batch_size])
        res: dict = {}
        out = work / "out"
        out.mkdir(exist_ok=True)
        for r in range(args.rounds):
            line = []
            for b, (predict, backend, prec) in engines.items():
                res.setdefault((b, "alone"), []).append(model_alone(predict, windows, args.batch_size))
                with slide_reader("openslide" if b.endswith("@openslide") else "auto"):
                    summ = run_e2e(path, meta, out, predict, backend, prec, args, args.workers)
                res.setdefault((b, "e2e"), []).append(summ["patches_per_second"])
                res.setdefault((b, "call"), []).append(summ["seconds"])
                line.append(f"{b} e2e {res[b, 'e2e'][-1]:.1f} alone {res[b, 'alone'][-1]:.1f}")
                for sn, rec in stains.items():
                    summ = run_e2e(path, {**meta, "stain": rec}, out, predict, backend, prec, args, args.workers)
                    res.setdefault((b, "stain", sn), []).append(summ["patches_per_second"])
                    res.setdefault((b, "stain_call", sn), []).append(summ["seconds"])
                    line.append(f"{b}+{sn} e2e {res[b, 'stain', sn][-1]:.1f}")
            for n in readers:
                for key, own, how in (("null", False, "auto"), ("null_own", True, "auto"),
                                      ("null_os", False, "openslide")):
                    with slide_reader(how), Slide(path) as s:
                        t = time.perf_counter()
                        predict_cells(s, spec, centers, tiles, null_model(args.batch_size), args.batch_size, n,
                                      own_handles=own)
                        res.setdefault((key, n), []).append(len(centers) / (time.perf_counter() - t))
                res.setdefault(("raw", n), []).append(len(centers) / raw_decode(path, reads, n))
                line.append(f"null/own-handles/openslide/raw x{n} {res['null', n][-1]:.0f}/"
                            f"{res['null_own', n][-1]:.0f}/{res['null_os', n][-1]:.0f}/{res['raw', n][-1]:.0f}")
            if args.seed_cells:
                with Slide(path) as s:
                    res.setdefault("seed", []).append(seed_style(s, spec, centers[:args.seed_cells], model))
                    nb = len(centers) // args.batch_size * args.batch_size  # full batches: no retracing
                    res.setdefault("seed_batched", []).append(
                        seed_style(s, spec, centers[:nb], model, batched=args.batch_size))
                line.append(f"seed {res['seed'][-1]:.1f}, seed+batched {res['seed_batched'][-1]:.1f}")
            print(f"  {label} round {r + 1}: " + "; ".join(line) + " windows/s", flush=True)
        med = statistics.median
        ref = backends[0] if backends else None
        for b, (_, backend, prec) in engines.items():
            m = {"e2e": med(res[b, "e2e"]), "alone": med(res[b, "alone"]), "call": med(res[b, "call"]),
                 "r_alone": med(e / a for e, a in zip(res[b, "e2e"], res[b, "alone"])),
                 "speedup": med(e / a for e, a in zip(res[b, "e2e"], res[ref, "e2e"]))}
            if args.seed_cells:
                m["r_seed"] = med(e / a for e, a in zip(res[b, "e2e"], res["seed"]))
                m["r_sb"] = med(e / a for e, a in zip(res[b, "e2e"], res["seed_batched"]))
            rows.append((label, n_tissue, b, f"{backend} {prec}", m))
            for sn in stains:
                stain_rows.append((label, b, sn, med(res[b, "stain", sn]),
                                   med(x / y for x, y in zip(res[b, "stain", sn], res[b, "e2e"])),
                                   med(res[b, "stain_call", sn]), m["call"]))
        for n in readers:
            ceiling.append((label, n, med(res["null", n]), med(res["null_own", n]), med(res["raw", n]),
                            med(a / b for a, b in zip(res["null", n], res["raw", n])),
                            med(a / b for a, b in zip(res["null_own", n], res["raw", n])), mpix / len(centers),
                            med(res["null_os", n]), med(a / b for a, b in zip(res["null_os", n], res["raw", n]))))

    if rows:
        print(f"\nmachine: {lscpu_line()}")
        print(f"{'slide':<24} {'tissue':>7} {'variant':<22} {'backend, precision':<28} {'e2e w/s':>8} {'alone w/s':>9} "
              f"{'e2e/alone':>9} {'vs ' + backends[0]:>14} {'min/100k':>8} {'call s':>7}"
              + (f" {'e2e/seed':>8} {'e2e/s+b':>7}" if args.seed_cells else ""))
        for label, n_tissue, b, bp, m in rows:
            print(f"{label:<24} {n_tissue:>7} {b:<22} {bp:<28} {m['e2e']:>8.1f} {m['alone']:>9.1f} {m['r_alone']:>9.3f} "
                  f"{m['speedup']:>13.2f}x {CAMELYON_WINDOWS / m['e2e'] / 60:>8.1f} {m['call']:>7.1f}"
                  + (f" {m['r_seed']:>8.2f} {m['r_sb']:>7.2f}" if args.seed_cells else ""))
        print("ratios are medians of per-round (paired) ratios; rates are medians over rounds")
        print(f"goals: e2e/alone >= 0.9; min/100k = minutes for a CAMELYON-size slide ({CAMELYON_WINDOWS} tissue "
              f"windows) at the end-to-end rate on this machine")
    if stain_rows:
        print(f"\nstain normalisation, machine: {lscpu_line()}")
        print(f"{'slide':<24} {'variant':<22} {'normaliser':<10} {'e2e w/s':>8} {'vs none':>8} {'call s':>7} "
              f"{'none call s':>11}")
        for label, b, sn, e, r, call, call0 in stain_rows:
            print(f"{label:<24} {b:<22} {sn:<10} {e:>8.1f} {r:>8.3f} {call:>7.1f} {call0:>11.1f}")
        print("vs none: end-to-end windows/s with the normaliser over the same backend without (paired per round); "
              "goal >= 0.8; call s includes the slide's one source fit")
    if ceiling:
        print(f"\nreader ceiling, machine: {lscpu_line()}")
        print(f"{'slide':<24} {'readers':>7} {'null-model w/s':>14} {'MPix/s':>7} {'raw decode w/s':>14} {'MPix/s':>7} "
              f"{'null/raw':>8} {'own handles w/s':>17} {'own/raw':>10} {'openslide w/s':>13} {'os/raw':>7}")
        for label, n, a, sh, b, r, rs, mp, os_, ros in ceiling:
            print(f"{label:<24} {n:>7} {a:>14.1f} {a * mp:>7.1f} {b:>14.1f} {b * mp:>7.1f} {r:>8.2f} {sh:>17.1f} "
                  f"{rs:>10.2f} {os_:>13.1f} {ros:>7.2f}")
        print("null model: the heatmap pipeline (predict_cells: reader threads sharing the slide, direct tile reads "
              "where they give OpenSlide's pixels, batching) with a model that returns at once; openslide: the same "
              "with every read through OpenSlide; own handles: the same as null model with one slide per reader "
              "thread (predict_cells(own_handles=True): one shared OpenSlide cache, a direct-read cache each); "
              "raw decode: the same OpenSlide regions read by N threads with their own handles, nothing else; "
              "MPix/s = decoded pixels (regions "
              "of every tower) per second; goal null/raw >= 0.8")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    if args.json:
        import json

        args.json.write_text(json.dumps({
            "machine": lscpu_line(),
            "backends": [{"slide": lb, "variant": b, "backend": bp, **m} for lb, _, b, bp, m in rows],
            "ceiling": [{"slide": lb, "readers": n, "null": a, "own_handles": sh, "raw": b, "null_raw": r,
                         "mpix_per_window": mp, "null_openslide": os_}
                        for lb, n, a, sh, b, r, _, mp, os_, _ in ceiling]}, indent=1))


if __name__ == "__main__":
    main()
