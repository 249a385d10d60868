"""`wsiheat tissue`: overlay and mask outputs, tissue fraction, bad inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from _tiff import write_pyramid_tiff
from PIL import Image


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wsiheat", *args], capture_output=True, text=True, cwd=cwd)


def test_tissue_command(tmp_path):
    img = np.full((1024, 1536, 3), 244, np.uint8)
    img[200:800, 300:1000] = (200, 100, 170)
    slide = tmp_path / "s.tif"
    write_pyramid_tiff(slide, img, 3, tile=256)
    r = run("tissue", str(slide), "-o", str(tmp_path / "t.png"), "--downsample", "16",
            "--mask-out", str(tmp_path / "m.png"), "--thumbnail-size", "512")
    assert r.returncode == 0, r.stderr
    assert "tissue fraction" in r.stdout
    frac = float(r.stdout.split("tissue fraction")[1].split()[0])
    assert abs(frac - (600 * 700) / (1024 * 1536)) < 0.03
    overlay = np.asarray(Image.open(tmp_path / "t.png"))
    assert overlay.shape == (342, 512, 3)
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (64, 96) and set(np.unique(mask)) == {0, 255}
    assert mask[30, 40] == 255 and mask[2, 2] == 0
    # no leftover temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png", "s.tif", "t.png"]


def test_tissue_command_bad_inputs(tmp_path):
    (tmp_path / "notes.svs").write_text("not a slide")
    cases = [
        (["tissue", str(tmp_path / "missing.svs"), "-o", str(tmp_path / "t.png")], "missing.svs"),
        (["tissue", str(tmp_path / "notes.svs"), "-o", str(tmp_path / "t.png")], "notes.svs"),
        (["tissue", str(tmp_path / "notes.svs"), "-o", str(tmp_path / "nodir" / "t.png")], "nodir"),
    ]
    for args, needle in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("wsiheat: error:"), r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "t.png").exists()
