"""Import folders of labeled patches into the HDF5 patches contract.

Layouts recognised (decided by the folder tree):

* Kaggle IDC: ``DIR/PATIENT/CLASS/PATIENT_idx5_xX_yY_classC.png`` -- the
  patient is the slide; ``X, Y`` are the patch's top-left corner in the
  source, so the window centre is ``(X + 25, Y + 25)`` for the 50 px patches;
* plain: ``DIR/CLASS/*.png`` -- one pseudo-slide per class folder is NOT made:
  every file is its own slide unless its name carries a ``PATIENT_`` prefix in
  the IDC pattern (so a by-slide validation split stays meaningful), centres -1.

``CLASS`` is ``0``/``1`` (or ``normal``/``negative`` and ``tumor``/``positive``).
A file whose folder label and ``_classC`` name label disagree is an error
listing every such file. Patches are padded to square (white, bottom/right;
IDC's border patches are smaller than 50 px) and resized to the window. One
tower; ``downsamples = [side / window]`` (``[50/80]`` for IDC), ``levels = [-1]``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wsiheat import __version__, defaults
from wsiheat.errors import WsiheatError
from wsiheat.fileio import atomic_path
from wsiheat.patches.idc import PATCH_PX, SOURCE_MPP, scan_patch_tree
from wsiheat.patches.store import ShardWriter


def _load_patch(path: Path, window: int, side: int | None) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise WsiheatError(f"{path}: cannot read the image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    s = max(h, w, side or 0)
    if (h, w) != (s, s):
        pad = np.full((s, s, 3), 255, np.uint8)
        pad[:h, :w] = rgb
        rgb = pad
    if s != window:
        interp = cv2.INTER_LINEAR if s < window else cv2.INTER_AREA
        rgb = cv2.resize(rgb, (window, window), interpolation=interp)
    return rgb


def check_new_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file, unless ``overwrite`` and it is a wsiheat patches file."""
    if output.is_dir():
        raise WsiheatError(f"{output}: is a folder; give a file name such as {output / 'patches.h5'}")
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise WsiheatError(f"{output}: exists; import writes a new file and never replaces one silently "
                           f"(choose another name, or ask to overwrite it: only a patches file is replaced)")
    from wsiheat.patches.store import open_patches

    try:
        with open_patches(output):
            pass
    except WsiheatError as exc:
        raise WsiheatError(f"{output}: not a wsiheat patches file, refusing to replace it ({exc})") from None


def import_patches(root: str | os.PathLike, output: str | os.PathLike, window: int = defaults.WINDOW,
                   workers: int | None = None, progress: bool = True, *,
                   slides: list[str] | None = None, source_mpp: float | None = None,
                   overwrite: bool = False) -> dict:
    """Import a folder tree of labeled patches into an HDF5 patches file.

    Parameters
    ----------
    root : path-like
        Folder in the IDC or plain layout (see module docstring).
    output : path-like
        HDF5 file to write (atomically).
    window : int
        Output window side; patches are resized to it.
    slides : list of str, optional
        Import only these slides (IDC: patients), e.g. one split of
        :func:`wsiheat.patches.idc.split_patients`.
    source_mpp : float, optional
        µm/px of the patches as stored (default :data:`wsiheat.patches.idc.SOURCE_MPP` for the IDC
        layout, unknown for the plain one). Recorded per slide, so a model
        trained on the file knows the physical resolution of its tower and
        ``heatmap`` reads other slides at the same scale.
    overwrite : bool
        Replace an existing ``output`` (only a wsiheat patches file is ever
        replaced); without it an existing ``output`` is an error.

    Returns
    -------
    dict
        Summary: ``layout``, ``patches``, ``slides``, ``tumor``, ``normal``, ``output``.
    """
    from tqdm import tqdm

    if not isinstance(window, int) or window < 8:
        raise WsiheatError(f"window={window}: need an integer >= 8")
    root, output = Path(root), Path(output)
    check_new_output(output, overwrite)
    layout, items = scan_patch_tree(root)
    if slides is not None:
        wanted = set(slides)
        unknown = sorted(wanted - {it["slide"] for it in items})
        if unknown:
            raise WsiheatError(f"{root}: no patches of slide(s) {', '.join(unknown[:5])}"
                               f"{' ...' if len(unknown) > 5 else ''}")
        items = [it for it in items if it["slide"] in wanted]
    if source_mpp is None and layout == "idc":
        source_mpp = SOURCE_MPP
    if source_mpp is not None and not source_mpp > 0:
        raise WsiheatError(f"source_mpp={source_mpp}: need a positive µm/px")
    side = PATCH_PX if layout == "idc" else None
    images = np.empty((len(items), 1, window, window, 3), np.uint8)
    sides = np.empty(len(items), np.int32)

    def load(i):
        it = items[i]
        import cv2

        img = cv2.imread(str(it["path"]), cv2.IMREAD_UNCHANGED)
        sides[i] = max(img.shape[:2]) if img is not None else 0
        images[i, 0] = _load_patch(it["path"], window, side)

    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        list(tqdm(pool.map(load, range(len(items))), total=len(items), desc="import",
                  unit="patch", disable=not progress))
    nominal = side or int(np.median(sides))
    slides = sorted({it["slide"] for it in items})
    sid = {s: i for i, s in enumerate(slides)}
    labels = np.array([it["label"] for it in items], np.uint8)
    slide_ids = np.array([sid[it["slide"]] for it in items], np.int32)
    half = nominal // 2
    centers = np.array([[it["x"] + half, it["y"] + half] if it["x"] >= 0 else [-1, -1]
                        for it in items], np.int64)
    params = {"command": "import", "root": str(root), "layout": layout, "window": window,
              "patch_side": nominal, "source_mpp": source_mpp,
              "slides": sorted(slides) if slides is not None else None}
    attrs = {"window": window, "center": window, "stride": window,  # the whole patch is labelled
             "levels": [None], "downsamples": [nominal / window], "tissue_threshold": float("nan"),
             "wsiheat_version": __version__, "params": params}
    with atomic_path(output, suffix=".h5") as tmp:
        with ShardWriter(tmp, attrs) as writer:
            for s in slides:
                rows = np.flatnonzero(slide_ids == sid[s])
                info = {"name": s, "path": str(root / s) if layout == "idc" else str(root),
                        "source": f"imported patches ({layout} layout)", "dimensions": None,
                        "mpp": source_mpp, "levels": [None], "downsamples": [nominal / window],
                        "windows": {"normal": int((labels[rows] == 0).sum()),
                                    "tumor": int((labels[rows] == 1).sum())}}
                k = writer.add_slide(s, info)
                writer.append(images[rows], labels[rows], centers[rows], k)
    return {"layout": layout, "patches": len(items), "slides": len(slides),
            "tumor": int(labels.sum()), "normal": int((labels == 0).sum()), "output": str(output)}
