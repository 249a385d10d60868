"""Faults of `wsiheat train` and `evaluate patches` (issue 18, cases 7, 10, 12): damaged HDF5 files,
validation or test windows at other magnifications, batch sizes above the row count. Real files, the
CLI in-process (TensorFlow is loaded once)."""

from __future__ import annotations

import pytest
from _helpers import damaged_copy, write_patches
from test_train import make_data, run_cli

TRAIN = ["--weights", "none", "--backbone", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8"]


def one_line(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiheat: error:") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    tr = write_patches(d / "tr.h5", *make_data(seed=2), downsamples=[1.0, 4.0])
    same = write_patches(d / "same.h5", *make_data(n_slides=2, tumor_slides=(1,), seed=3), downsamples=[1.0, 4.0])
    other = write_patches(d / "other.h5", *make_data(n_slides=2, tumor_slides=(1,), seed=3), downsamples=[4.0, 16.0])
    return {"dir": d, "tr": tr, "same": same, "other": other}


def test_val_file_at_other_magnification_is_refused(files, tmp_path, capsys):
    out = tmp_path / "m.keras"
    code, so, err = run_cli(["train", str(files["tr"]), "--val", str(files["other"]), "-o", str(out), *TRAIN], capsys)
    one_line(code, err, "other.h5", "tr.h5", "downsamples")
    assert not out.exists() and not (tmp_path / "m.ckpt").exists()
    code, so, err = run_cli(["train", str(files["tr"]), "--val", str(files["other"]), "-o", str(out), *TRAIN,
                             "--allow-mismatch"], capsys)
    assert code == 0, err
    assert "warning" in err and "other.h5" in err


def test_evaluate_patches_at_other_magnification_is_refused(files, tmp_path, capsys):
    model = tmp_path / "m.keras"
    code, so, err = run_cli(["train", str(files["tr"]), "--val", str(files["same"]), "-o", str(model), *TRAIN],
                            capsys)
    assert code == 0, err
    code, so, err = run_cli(["evaluate", "patches", "-m", str(model), "-p", str(files["other"]),
                             "-o", str(tmp_path / "ev")], capsys)
    one_line(code, err, "other.h5", "m.keras", "downsamples")
    code, so, err = run_cli(["evaluate", "patches", "-m", str(model), "-p", str(files["other"]),
                             "-o", str(tmp_path / "ev"), "--allow-mismatch"], capsys)
    assert code == 0 and "warning" in err, err
    # a damaged middle (the images' chunk index) is a one-line error, not a traceback
    bad = damaged_copy(files["same"], tmp_path / "bad.h5")
    code, so, err = run_cli(["evaluate", "patches", "-m", str(model), "-p", str(bad), "-o", str(tmp_path / "ev2")],
                            capsys)
    one_line(code, err, "bad.h5", "damaged")


def test_damaged_patches_file_in_train_is_one_line(files, tmp_path, capsys):
    bad = damaged_copy(files["tr"], tmp_path / "bad.h5")
    out = tmp_path / "m.keras"
    for budget in ("0", "1"):  # streamed from disk, or read into memory first
        code, so, err = run_cli(["train", str(bad), "-o", str(out), *TRAIN, "--memory-budget", budget], capsys)
        one_line(code, err, "bad.h5", "damaged")
        assert not out.exists() and not (tmp_path / "m.ckpt").exists()
    # the root group's symbol table node damaged: it fails while the file is opened
    data = bytearray(files["tr"].read_bytes())
    off = data.find(b"SNOD")
    assert off > 0
    data[off:off + 64] = b"\xff" * 64
    (tmp_path / "bad_root.h5").write_bytes(bytes(data))
    code, so, err = run_cli(["train", str(tmp_path / "bad_root.h5"), "-o", str(out), *TRAIN], capsys)
    one_line(code, err, "bad_root.h5", "damaged")


def test_batch_size_above_the_rows_is_capped_with_a_note(files, tmp_path, capsys):
    out = tmp_path / "m.keras"
    args = ["train", str(files["tr"]), "--val", str(files["same"]), "-o", str(out), "--weights", "none",
            "--backbone", "tiny", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "100000000"]
    code, so, err = run_cli(args, capsys)
    assert code == 0, err
    assert "warning" in err and "96" in err and "100000000" in err, err
    from wsiheat.models.model import read_metadata

    assert read_metadata(out)["train_config"]["batch_size"] == 96
    assert not (tmp_path / "m.ckpt").exists()
