"""Slide names that would give hidden or odd output files (issue 18, case 13): `..tif` -> `..h5`,
`._overlay.png`. Refused from a manifest, a slide list and -o, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsiheat.errors import WsiheatError
from wsiheat.scale.tasks import SlideTask, read_manifest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "wsiheat", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("fname", ["..tif", ".hidden.tif", ". .tif"])
def test_manifest_refuses_hidden_or_empty_names(tmp_path, fname):
    (tmp_path / fname).write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text(f"slide\n{fname}\n")
    with pytest.raises(WsiheatError, match="line 2"):
        read_manifest(m)
    out = tmp_path / "out"
    res = run_cli("heatmap", "--manifest", m, "-m", tmp_path / "model.keras", "--out-dir", out)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "m.csv" in lines[0] and "slide name" in lines[0], res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_slide_list_and_output_name_refused(tmp_path):
    (tmp_path / "..tif").write_bytes(b"x")
    res = run_cli("heatmap", tmp_path / "..tif", "-m", tmp_path / "model.keras", "--out-dir", tmp_path / "o")
    assert res.returncode == 2 and "slide name" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = run_cli("heatmap", tmp_path / "..tif", "-m", tmp_path / "model.keras", "-o", tmp_path / ".png")
    assert res.returncode == 2 and "slide name" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for bad in ("", ".", "..", ".x"):
        with pytest.raises(WsiheatError):
            SlideTask(bad, "s.tif")
    assert SlideTask("a.b", "a.b.tif").name == "a.b"
