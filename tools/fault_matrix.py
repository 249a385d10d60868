#!/usr/bin/env python
"""Run the fault matrix against the installed CLI and print one table.

Usage::

    python tools/fault_matrix.py [--keep DIR] [--only WORD]

Every row runs ``python -m wsiheat ...`` (the wsiheat this Python imports; put
a checkout first with ``PYTHONPATH=/path/to/checkout``) in a subprocess on
real files: bad inputs (truncated slides, bad masks, bad CSVs, hostile XML and
JSON, damaged HDF5), kills and interrupts at known moments of extract, heatmap
and train (through the documented test hook ``WSIHEAT_TEST_PAUSE``, see
docs/reliability.md), and a full disk (a small tmpfs when this machine lets us
mount one, else a file-size limit). Columns: case, exit code, the one-line
error (or the last line of a traceback), whether earlier outputs are intact,
and PASS/FAIL. The exit status is 0 when every row passes. About 4-6 minutes
on 2 CPU cores (most of it TensorFlow starting for heatmap/train/evaluate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
#: Set to print the stderr of failing rows.
VERBOSE = False


# --- helpers ---------------------------------------------------------------------------------------

def cli(*args, env: dict | None = None, timeout: float = 600, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsiheat", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout, preexec_fn=preexec)


def paused(args, hooks: Path, point: str, timeout: float = 300) -> subprocess.Popen:
    """``wsiheat ARGS`` held at the test hook ``point``; returns once it is there."""
    hooks.mkdir(parents=True, exist_ok=True)
    for f in hooks.iterdir():
        f.unlink()
    env = {**ENV, "WSIHEAT_TEST_PAUSE": point, "WSIHEAT_TEST_PAUSE_DIR": str(hooks)}
    proc = subprocess.Popen([sys.executable, "-m", "wsiheat", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + timeout
    while not (hooks / f"{point}.reached").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if not (hooks / f"{point}.reached").exists():
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"never reached {point}: {err.strip().splitlines()[-1:] or ''}")
    return proc


def finish(proc: subprocess.Popen, sig: int) -> subprocess.CompletedProcess:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes() if Path(p).exists() else b"<missing>")
    return h.hexdigest()


def message(res: subprocess.CompletedProcess) -> str:
    err = [line for line in res.stderr.splitlines() if line.strip()]
    if "Traceback" in res.stderr:
        return "TRACEBACK: " + (err[-1] if err else "")
    for line in err:
        if line.startswith("wsiheat:"):
            return line
    out = [line for line in res.stdout.splitlines() if line.strip()]
    return (out[-1] if out else "").strip()


def one_line_error(res, *needles) -> bool:
    err = [line for line in res.stderr.splitlines() if line.strip()]
    return (res.returncode == 2 and len(err) == 1 and err[0].startswith("wsiheat: error:")
            and all(n in err[0] for n in needles))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def tissue(size: int, seed: int = 0, tumor: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.ogrid[:size, :size]
    inside = ((xx - size / 2) / (size * 0.38)) ** 2 + ((yy - size / 2) / (size * 0.33)) ** 2 <= 1
    pink = np.clip(np.array([205, 120, 170]) + rng.integers(-25, 26, (size, size, 3)), 0, 255).astype(np.uint8)
    img[inside] = pink[inside]
    if tumor:
        img[size * 3 // 8:size * 5 // 8, size * 3 // 8:size * 5 // 8] = (220, 30, 30)
    return img


def pyramid(path: Path, img: np.ndarray, levels: int = 3) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for i in range(levels):
            tw.write(img, tile=(128, 128), photometric="rgb" if img.ndim == 3 else "minisblack",
                     compression="zlib", subfiletype=1 if i else 0)
            img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return path


def damaged_middle(src: Path, dst: Path) -> Path:
    """A copy whose ``images`` chunk index (a B-tree node in the middle) is overwritten."""
    import h5py

    data = src.read_bytes()
    for off in [i for i in range(len(data)) if data.startswith(b"TREE", i)]:
        shutil.copyfile(src, dst)
        with open(dst, "r+b") as f:
            f.seek(off)
            f.write(b"\xff" * 64)
        try:
            with h5py.File(dst, "r") as f:
                f["labels"][...]
                try:
                    f["images"][...]
                except Exception:
                    return dst
        except Exception:
            pass
    raise RuntimeError(f"no chunk index found in {src}")


def red_model(path: Path) -> Path:
    """A tiny deterministic model, made in a child process (TensorFlow's start-up noise stays there)."""
    res = subprocess.run([sys.executable, __file__, "--make-model", str(path)], capture_output=True, text=True,
                         env=ENV, timeout=600)
    if res.returncode:
        raise RuntimeError(f"could not make the model: {res.stderr.strip().splitlines()[-1:]}")
    return path


def make_red_model(path: Path, downsamples=(1.0, 2.0)) -> Path:
    """A tiny deterministic model (fraction of red pixels in the centre), saved with the model contract."""
    import keras

    from wsiheat.models.model import save_model

    t, w, c = len(downsamples), 80, 50
    inp = keras.Input((t, w, w, 3), dtype="uint8")
    x = keras.layers.Reshape((t * w, w, 3))(inp)
    x = keras.layers.Rescaling(1.0)(x)
    top = (w - c) // 2
    x = keras.layers.Cropping2D(((top, t * w - top - c), (top, w - c - top)))(x)
    conv = keras.layers.Conv2D(1, 1)
    x = conv(x)
    conv.set_weights([np.array([1, -1, 0], np.float32).reshape(1, 1, 3, 1) / 50, np.array([-2.4], np.float32)])
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU(max_value=1.0)(x))
    meta = {"window": w, "center": c, "stride": c, "downsamples": list(downsamples), "towers": t,
            "levels": [0, 1][:t]}
    return save_model(keras.Model(inp, out), path, meta)


# --- the matrix ------------------------------------------------------------------------------------

@dataclass
class Row:
    case: str
    code: object
    text: str
    intact: object
    ok: bool


class Matrix:
    def __init__(self, root: Path, only: str | None):
        self.root, self.only, self.rows = root, only, []
        self.d = root / "data"
        self.d.mkdir(parents=True, exist_ok=True)

    def case(self, name: str):
        def wrap(fn):
            if self.only and self.only.lower() not in name.lower():
                return fn
            t0 = time.time()
            try:
                code, text, intact, ok = fn()
            except Exception as exc:  # a broken case is a failed row, not a crash of the matrix
                code, text, intact, ok = "-", f"MATRIX ERROR: {type(exc).__name__}: {exc}", None, False
            self.rows.append(Row(name, code, text, intact, ok))
            mark = "PASS" if ok else "FAIL"
            print(f"  [{mark}] {name} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            return fn
        return wrap

    def table(self) -> str:
        w = max(len(r.case) for r in self.rows)
        lines = [f"{'case':<{w}}  exit  {'intact':<6}  result  error / traceback (one line)", "-" * (w + 90)]
        for r in self.rows:
            intact = "-" if r.intact is None else ("yes" if r.intact else "NO")
            text = r.text if len(r.text) <= 150 else r.text[:147] + "..."
            lines.append(f"{r.case:<{w}}  {str(r.code):>4}  {intact:<6}  {'PASS' if r.ok else 'FAIL':<6}  {text}")
        n_ok = sum(r.ok for r in self.rows)
        lines.append(f"{n_ok}/{len(self.rows)} rows pass")
        return "\n".join(lines)


def run(root: Path, only: str | None) -> Matrix:
    m = Matrix(root, only)
    d = m.d
    slide = pyramid(d / "slide_a.tif", tissue(1024, 1, tumor=True))
    slide_b = pyramid(d / "slide_b.tif", tissue(1024, 2))
    mask = d / "slide_a_mask.png"
    t = np.zeros((1024, 1024), np.uint8)
    t[384:640, 384:640] = 255
    cv2.imwrite(str(mask), t)
    lv = ("--levels", "0", "1")
    base = d / "base.h5"
    assert cli("extract", slide, mask, "-o", base, *lv, "--max-normal", "8", "-q").returncode == 0

    def fresh_output() -> Path:
        out = Path(tempfile.mkdtemp(dir=root)) / "p.h5"
        shutil.copyfile(base, out)
        return out

    def bad_input(args, *needles, keep: Path | None = None, seconds: float | None = None):
        before = digest(keep) if keep else None
        t0 = time.time()
        res = cli(*args)
        if VERBOSE and not one_line_error(res, *needles):
            print(res.stderr, file=sys.stderr)
        ok = one_line_error(res, *needles) and (seconds is None or time.time() - t0 < seconds)
        intact = None if keep is None else digest(keep) == before and not hidden(keep.parent)
        return res.returncode, message(res), intact, ok and intact is not False

    # -- extract: bad slides, masks, annotations ------------------------------------------------
    @m.case("extract: truncated slide")
    def _():
        p = d / "truncated.tif"
        data = slide.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        out = fresh_output()
        return bad_input(("extract", p, "-o", out, *lv), "truncated.tif", keep=out)

    @m.case("extract: not a slide (text)")
    def _():
        p = d / "notes.svs"
        p.write_text("just text\n")
        out = fresh_output()
        return bad_input(("extract", p, "-o", out, *lv), "notes.svs", keep=out)

    @m.case("extract: mask of another size")
    def _():
        p = d / "small_mask.png"
        cv2.imwrite(str(p), np.zeros((300, 500), np.uint8))
        out = fresh_output()
        return bad_input(("extract", slide_b, p, "-o", out, *lv), "small_mask.png", keep=out)

    @m.case("extract: mask PNG truncated")
    def _():
        p = d / "trunc_mask.png"
        ok, buf = cv2.imencode(".png", t)
        p.write_bytes(buf.tobytes()[: len(buf) // 3])
        out = fresh_output()
        return bad_input(("extract", slide_b, p, "-o", out, *lv), "trunc_mask.png", keep=out)

    @m.case("extract: XML billion laughs (<5 s)")
    def _():
        p = d / "laughs.xml"
        ents = "".join(f'<!ENTITY l{i} "{"&l%d;" % (i - 1) * 10 if i else "lol"}">' for i in range(10))
        p.write_text(f'<?xml version="1.0"?><!DOCTYPE a [{ents}]><ASAP_Annotations>&l9;</ASAP_Annotations>')
        return bad_input(("extract", slide_b, p, "-o", d / "x1.h5", *lv), "laughs.xml", seconds=5)

    @m.case("extract: XML external entity")
    def _():
        p = d / "xxe.xml"
        p.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                     "<ASAP_Annotations>&x;</ASAP_Annotations>")
        return bad_input(("extract", slide_b, p, "-o", d / "x2.h5", *lv), "xxe.xml")

    @m.case("#5 GeoJSON [x, y, z] positions = [x, y]")
    def _():
        ring = [[384, 384], [640, 384], [640, 640], [384, 640], [384, 384]]
        outs = []
        for name, r in (("two", ring), ("three", [p + [5.0] for p in ring])):
            g = d / f"{name}.geojson"
            g.write_text(json.dumps({"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
                                     "geometry": {"type": "Polygon", "coordinates": [r]}}))
            res = cli("extract", slide, g, "-o", d / f"{name}.h5", *lv, "--max-normal", "0", "-q")
            outs.append(res)
        same = outs[0].stdout.split(";")[0].split(":", 1)[-1] == outs[1].stdout.split(";")[0].split(":", 1)[-1]
        return outs[1].returncode, message(outs[1]), None, outs[1].returncode == 0 and same

    @m.case("#5 NaN vertex in ASAP XML")
    def _():
        p = d / "nan.xml"
        p.write_text('<ASAP_Annotations><Annotations><Annotation Name="lesion 3" PartOfGroup="_0"><Coordinates>'
                     '<Coordinate X="400" Y="400"/><Coordinate X="nan" Y="400"/><Coordinate X="600" Y="600"/>'
                     "</Coordinates></Annotation></Annotations></ASAP_Annotations>")
        return bad_input(("extract", slide, p, "-o", d / "x3.h5", *lv), "lesion 3", "not finite")

    @m.case("#7 GeoJSON geometry of the wrong type")
    def _():
        p = d / "geom.json"
        p.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": "x"}]}))
        return bad_input(("extract", slide, p, "-o", d / "x4.h5", *lv), "geom.json", "geometry")

    @m.case("#7 GeoJSON ragged ring")
    def _():
        p = d / "ragged.json"
        p.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [9, 0], 9, [9, 9]]]}))
        return bad_input(("extract", slide, p, "-o", d / "x5.h5", *lv), "ragged.json", "coordinates")

    @m.case('#7 CAMELYON16 JSON "positive": 5')
    def _():
        p = d / "five.json"
        p.write_text(json.dumps({"positive": 5}))
        return bad_input(("extract", slide, p, "-o", d / "x6.h5", *lv), "five.json", "positive")

    @m.case("#7 JSON nested 100k deep")
    def _():
        p = d / "deep.json"
        p.write_text("[" * 100_000 + "]" * 100_000)
        return bad_input(("extract", slide, p, "-o", d / "x7.h5", *lv), "deep.json")

    for kind in ("white", "black", "1-pixel", "grayscale"):
        @m.case(f"#6 slide without tissue: {kind}")
        def _(kind=kind):
            img = {"white": np.full((512, 512, 3), 255, np.uint8), "black": np.zeros((512, 512, 3), np.uint8),
                   "1-pixel": np.full((1, 1, 3), 200, np.uint8),
                   "grayscale": np.full((512, 512), 235, np.uint8)}[kind]
            p = d / f"{kind}.tif"
            tifffile.imwrite(p, img, photometric="rgb" if img.ndim == 3 else "minisblack",
                             tile=(128, 128) if img.shape[0] > 1 else None)
            res = cli("extract", p, "-o", d / f"{kind}.h5", "--levels", "0", "-q")
            ok = res.returncode == 0 and "no tissue" in res.stderr and "Traceback" not in res.stderr
            return res.returncode, message(res), None, ok

    @m.case("#7 extract -o /proc/p.h5")
    def _():
        return bad_input(("extract", slide, "-o", "/proc/p.h5", *lv), "/proc")

    @m.case("#7 extract -o a file damaged in the middle")
    def _():
        bad = damaged_middle(base, Path(tempfile.mkdtemp(dir=root)) / "bad.h5")
        return bad_input(("extract", slide_b, "-o", bad, *lv, "-q"), "bad.h5", "damaged", keep=bad)

    # -- extract: interrupts and kills at known moments ---------------------------------------------
    for point in ("shard-append", "before-commit"):
        @m.case(f"#9 extract SIGINT at {point}")
        def _(point=point):
            out = fresh_output()
            before = digest(out)
            res = finish(paused(("extract", slide_b, "-o", out, *lv, "-q"), root / "hooks", point), signal.SIGINT)
            intact = digest(out) == before and not hidden(out.parent)
            return res.returncode, message(res), intact, res.returncode == 130 and intact

    @m.case("#9 extract SIGINT after the commit point")
    def _():
        out = fresh_output()
        res = finish(paused(("extract", slide_b, "-o", out, *lv, "-q"), root / "hooks", "after-commit"),
                     signal.SIGINT)
        ok = res.returncode == 0 and "completed" in res.stderr and not hidden(out.parent)
        return res.returncode, message(res), True, ok

    for point in ("shard-append", "before-commit"):
        @m.case(f"#8 extract SIGKILL at {point}, then re-run")
        def _(point=point):
            out = fresh_output()
            before = digest(out)
            finish(paused(("extract", slide_b, "-o", out, *lv, "-q"), root / "hooks", point), signal.SIGKILL)
            intact = digest(out) == before
            left = hidden(out.parent)
            res = cli("extract", slide_b, "-o", out, *lv, "-q")
            ok = intact and bool(left) and res.returncode == 0 and not hidden(out.parent)
            return res.returncode, f"killed: left {len(left)} temp file(s); re-run: {message(res)}", intact, ok

    @m.case("#8 disk full (small file system)")
    def _():
        disk = root / "disk"
        disk.mkdir(exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)],
                                 capture_output=True).returncode == 0
        try:
            out = disk / "p.h5"
            shutil.copyfile(base, out)
            before = digest(out)
            big = pyramid(d / "big.tif", tissue(2048, 9))
            if mounted:
                res = cli("extract", big, "-o", out, *lv, "--max-normal", "0", "-q")
            else:  # no mounting allowed: a 8 MB file-size limit stands for the full disk
                lim = 8 << 20
                res = cli("extract", big, "-o", out, *lv, "--max-normal", "0", "-q",
                          preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim)))
            intact = digest(out) == before and not hidden(disk)
            how = "tmpfs 12 MB" if mounted else "RLIMIT_FSIZE 8 MB (no mount)"
            return res.returncode, f"[{how}] {message(res)}", intact, res.returncode == 2 and intact and \
                "Traceback" not in res.stderr
        finally:
            if mounted:
                subprocess.run(["umount", str(disk)], capture_output=True)

    # -- import ------------------------------------------------------------------------------------
    idc = d / "idc"
    for pt in ("10253", "10254"):
        for c in (0, 1):
            (idc / pt / str(c)).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                cv2.imwrite(str(idc / pt / str(c) / f"{pt}_idx5_x{50 * i}_y{c * 50}_class{c}.png"),
                            np.random.default_rng(i).integers(0, 255, (50, 50, 3), dtype=np.uint8))

    @m.case("#2 import -o an existing slide")
    def _():
        victim = d / "victim.svs"
        shutil.copyfile(slide, victim)
        return bad_input(("import", idc, "-o", victim), "victim.svs", "exists", keep=victim)

    @m.case("#2 import -o an existing patches file")
    def _():
        out = fresh_output()
        return bad_input(("import", idc, "-o", out), "p.h5", "exists", keep=out)

    @m.case("#11 import: a file of another patient")
    def _():
        stray = idc / "10253" / "0" / "10254_idx5_x900_y900_class0.png"
        cv2.imwrite(str(stray), np.full((50, 50, 3), 200, np.uint8))
        try:
            return bad_input(("import", idc, "-o", d / "idc.h5"), "10254_idx5_x900_y900_class0.png")
        finally:
            stray.unlink()

    # -- manifests ---------------------------------------------------------------------------------
    @m.case("#13 manifest slide named ..tif")
    def _():
        shutil.copyfile(slide, d / "..tif")
        (d / "dots.csv").write_text("slide\n..tif\n")
        return bad_input(("extract", "--manifest", d / "dots.csv", "-o", d / "x8.h5", *lv), "dots.csv", "line 2")

    @m.case("manifest without a slide column")
    def _():
        (d / "nocol.csv").write_text("file\nslide_a.tif\n")
        return bad_input(("extract", "--manifest", d / "nocol.csv", "-o", d / "x9.h5"), "nocol.csv")

    # -- evaluate froc (CSV inputs) -------------------------------------------------------------------
    res_dir, gt_dir = d / "res", d / "gt"
    res_dir.mkdir(exist_ok=True)
    gt_dir.mkdir(exist_ok=True)
    gmask = np.zeros((4096, 4096), np.uint8)
    gmask[100:3100, 100:3100] = 1
    tifffile.imwrite(gt_dir / "T_mask.tif", gmask, tile=(256, 256), compression="zlib")

    @m.case("#3 froc: detection at (300000, 300000)")
    def _():
        (res_dir / "T.csv").write_text("0.9,1600,1600\n0.8,300000,300000\n")
        return bad_input(("evaluate", "froc", res_dir, "-g", gt_dir, "-o", d / "froc", "--level", "5"),
                         "T.csv:2", "outside", seconds=120)

    @m.case("#3 froc: coordinate 1e300")
    def _():
        (res_dir / "T.csv").write_text("0.9,1600,1600\n0.8,1e300,5\n")
        return bad_input(("evaluate", "froc", res_dir, "-g", gt_dir, "-o", d / "froc", "--level", "0"), "T.csv:2")

    @m.case("froc: CSV that is not prob,x,y")
    def _():
        (res_dir / "T.csv").write_text("hello,world\n")
        return bad_input(("evaluate", "froc", res_dir, "-g", gt_dir, "-o", d / "froc"), "T.csv")

    # -- train / evaluate patches ------------------------------------------------------------------
    train_h5, val_h5 = d / "train.h5", d / "val.h5"
    assert cli("extract", slide, mask, "-o", train_h5, *lv, "--max-normal", "30", "-q").returncode == 0
    assert cli("extract", slide_b, "-o", train_h5, *lv, "--max-normal", "30", "-q").returncode == 0
    assert cli("extract", slide, mask, "-o", val_h5, *lv, "--max-normal", "10", "-q").returncode == 0
    other_h5 = d / "other_levels.h5"
    assert cli("extract", slide, mask, "-o", other_h5, "--levels", "1", "2", "--max-normal", "10",
               "-q").returncode == 0
    tiny = ("--weights", "none", "--backbone", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--val", val_h5)
    model = d / "m.keras"

    @m.case("#12 train --batch-size 100000000")
    def _():
        res = cli("train", train_h5, "-o", model, *tiny, "--batch-size", "100000000")
        ok = res.returncode == 0 and "warning" in res.stderr and not (d / "m.ckpt").exists()
        return res.returncode, message(res) if res.returncode else \
            next((x for x in res.stderr.splitlines() if "warning" in x), ""), None, ok

    @m.case("#10 train --val at other levels")
    def _():
        before = digest(model)
        r = bad_input(("train", train_h5, "-o", model, *tiny[:-2], "--val", other_h5), "other_levels.h5",
                      "downsamples")
        intact = digest(model) == before and not (d / "m.ckpt").exists()
        return r[0], r[1], intact, r[3] and intact

    @m.case("#7 train: patches file damaged in the middle")
    def _():
        bad = damaged_middle(train_h5, d / "damaged.h5")
        before = digest(model)
        r = bad_input(("train", bad, "-o", model, *tiny), "damaged.h5", "damaged")
        intact = digest(model) == before and not (d / "m.ckpt").exists()
        return r[0], r[1], intact, r[3] and intact

    @m.case("train SIGKILL at its first commit, earlier model kept")
    def _():
        before = digest(model)
        res = finish(paused(("train", train_h5, "-o", model, *tiny), root / "hooks", "before-commit"),
                     signal.SIGKILL)
        intact = digest(model) == before
        return res.returncode, "killed", intact, intact and res.returncode == -signal.SIGKILL

    @m.case("#10 evaluate patches at other levels")
    def _():
        return bad_input(("evaluate", "patches", "-m", model, "-p", other_h5, "-o", d / "ev"),
                         "other_levels.h5", "downsamples")

    @m.case("#7 evaluate patches: damaged file")
    def _():
        return bad_input(("evaluate", "patches", "-m", model, "-p", d / "damaged.h5", "-o", d / "ev"),
                         "damaged.h5", "damaged")

    # -- heatmap -----------------------------------------------------------------------------------
    red = red_model(d / "red.keras")
    out_dir = d / "heat"
    (d / "one.csv").write_text(f"slide\n{slide}\n")
    names = [f"slide_a{s}" for s in (".h5", ".png", "_overlay.png", "_heatmap.tif", "_lesions.csv",
                                       "_lesions.png", ".json")]
    first = cli("heatmap", "--manifest", d / "one.csv", "-m", red, "--out-dir", out_dir)
    if first.returncode:
        raise RuntimeError(f"heatmap failed: {message(first)}")

    @m.case("#1 heatmap --manifest --overwrite, corrupt model")
    def _():
        before = digest(*[out_dir / n for n in names])
        data = red.read_bytes()
        bad = d / "corrupt.keras"
        bad.write_bytes(data[: len(data) // 3] + bytes(4096) + data[len(data) // 3 + 4096:])
        res = cli("heatmap", "--manifest", d / "one.csv", "-m", bad, "--out-dir", out_dir, "--overwrite")
        intact = digest(*[out_dir / n for n in names]) == before and not hidden(out_dir)
        return res.returncode, message(res), intact, res.returncode == 2 and intact and "Traceback" not in res.stderr

    @m.case("#4 heatmap SIGKILL mid outputs, re-run redoes")
    def _():
        before = digest(*[out_dir / n for n in names])
        finish(paused(("heatmap", "--manifest", d / "one.csv", "-m", red, "--out-dir", out_dir, "--overwrite",
                       "--smooth", "3"), root / "hooks", "heatmap-outputs"), signal.SIGKILL)
        mixed = digest(*[out_dir / n for n in names]) != before
        res = cli("heatmap", "--manifest", d / "one.csv", "-m", red, "--out-dir", out_dir, "--smooth", "3")
        js = json.loads((out_dir / "slide_a.json").read_text())
        from wsiheat.inference.outputs import outputs_complete

        ok = res.returncode == 0 and "1 done, 0 skipped" in res.stdout and js["smooth"] == 3 and \
            outputs_complete(out_dir, "slide_a") and not hidden(out_dir)
        return res.returncode, f"set left mixed: {mixed}; re-run: redone, complete set", True, ok

    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="Work in this folder and keep it.")
    ap.add_argument("--only", default=None, help="Run only the cases whose name holds this word.")
    ap.add_argument("--verbose", action="store_true", help="Print the stderr of failing rows.")
    ap.add_argument("--make-model", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_model:
        make_red_model(args.make_model)
        return 0
    global VERBOSE
    VERBOSE = args.verbose
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # run as a background job: let the children see SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
    root = args.keep or Path(tempfile.mkdtemp(prefix="wsiheat-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        m = run(root, args.only)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(m.table())
    print(f"{time.time() - t0:.0f} s")
    return 0 if all(r.ok for r in m.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
