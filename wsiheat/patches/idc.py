"""The IDC patch data set: its file names, its folder layout and patient-level splits.

The Kaggle "Breast Histopathology Images" (IDC) set stores 50x50 patches as
``PATIENT/CLASS/PATIENT_idx5_xX_yY_classC.png`` (class 1 = invasive ductal
carcinoma). Everything that reads that layout goes through this module:
:func:`parse_idc_name` (the one file-name parser), :func:`scan_patch_tree`
(``wsiheat import``), :func:`list_patients` / :func:`list_patches` /
:func:`split_patients` (``wsiheat mosaic`` and ``import --split``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from wsiheat.errors import WsiheatError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
CLASS_NAMES = {"0": 0, "1": 1, "normal": 0, "negative": 0, "tumor": 1, "tumour": 1, "positive": 1}
#: Nominal side of an IDC patch in pixels.
PATCH_PX = 50
#: Approximate µm/px of the IDC patches (40x scans at about 0.25 µm/px, downsampled 16x to ~2.5x).
SOURCE_MPP = 4.0

_IDC_NAME = re.compile(r"^(?P<patient>.+?)_idx\d+_x(?P<x>-?\d+)_y(?P<y>-?\d+)_class(?P<c>\d+)$")
_CLASS_IN_NAME = re.compile(r"_class(?P<c>\d+)$")


@dataclass(frozen=True)
class IdcName:
    """What an IDC file name says: patient, position of the patch in its slide, class."""

    patient: str
    x: int
    y: int
    label: int


def parse_idc_name(stem: str) -> IdcName | None:
    """Parse an IDC file name without its suffix (``PATIENT_idx5_xX_yY_classC``); None when it is not one."""
    m = _IDC_NAME.match(stem)
    if m is None:
        return None
    return IdcName(m["patient"], int(m["x"]), int(m["y"]), int(m["c"]))


def class_in_name(stem: str) -> int | None:
    """The ``_classC`` label at the end of a file name, or None."""
    c = _CLASS_IN_NAME.search(stem)
    return None if c is None else int(c["c"])


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def scan_patch_tree(root: str | os.PathLike) -> tuple[str, list[dict]]:
    """List the labeled patches under ``root``.

    Returns
    -------
    layout : {"idc", "plain"}
    items : list of dict
        ``path``, ``label``, ``slide``, ``x``, ``y`` (top-left or -1), sorted
        by slide, label and path.

    Raises
    ------
    WsiheatError
        No patches, unknown class folders, folder/name label disagreements
        or IDC files whose name's patient is not their folder (all listed).
    """
    root = Path(root)
    if not root.is_dir():
        raise WsiheatError(f"{root}: not a folder of labeled patches")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    class_dirs = [d for d in subdirs if d.name.lower() in CLASS_NAMES]
    if class_dirs and len(class_dirs) == len(subdirs):
        layout, groups = "plain", [(None, d) for d in class_dirs]
    else:
        layout, groups = "idc", []
        for pdir in subdirs:
            for cdir in sorted(p for p in pdir.iterdir() if p.is_dir()):
                if cdir.name.lower() not in CLASS_NAMES:
                    raise WsiheatError(f"{cdir}: unknown class folder {cdir.name!r} (expected "
                                       f"{', '.join(sorted(CLASS_NAMES))})")
                groups.append((pdir.name, cdir))
    items, mislabeled, misplaced = [], [], []
    for patient, cdir in groups:
        label = CLASS_NAMES[cdir.name.lower()]
        for f in sorted(cdir.iterdir()):
            if not _is_image(f):
                continue
            m = parse_idc_name(f.stem)
            c = class_in_name(f.stem)
            if c is not None and c != label:
                mislabeled.append(f)
                continue
            if patient is not None and m is not None and m.patient != patient:
                misplaced.append(f)  # another patient's patch: a leak across patient-level splits
                continue
            slide = patient or (m.patient if m else f.stem)
            x, y = (m.x, m.y) if m else (-1, -1)
            items.append({"path": f, "label": label, "slide": slide, "x": x, "y": y})
    if mislabeled:
        shown = ", ".join(str(p) for p in mislabeled[:10])
        more = f" and {len(mislabeled) - 10} more" if len(mislabeled) > 10 else ""
        raise WsiheatError(f"{root}: {len(mislabeled)} file(s) whose folder label and file-name "
                           f"label disagree: {shown}{more}")
    if misplaced:
        shown = ", ".join(str(p) for p in misplaced[:10])
        more = f" and {len(misplaced) - 10} more" if len(misplaced) > 10 else ""
        raise WsiheatError(f"{root}: {len(misplaced)} file(s) whose file-name patient differs from their "
                           f"patient folder: {shown}{more}")
    if not items:
        raise WsiheatError(f"{root}: no labeled patches found (expected PATIENT/CLASS/*.png or "
                           "CLASS/*.png with CLASS 0/1)")
    items.sort(key=lambda it: (it["slide"], it["label"], str(it["path"])))
    return layout, items


# ------------------------------------------------------------------------------------
# IDC data set
# ------------------------------------------------------------------------------------
def check_idc_dir(idc_dir: str | os.PathLike) -> Path:
    idc = Path(idc_dir)
    if not idc.exists():
        raise WsiheatError(f"{idc}: no such folder (expected IDC patches as PATIENT/CLASS/*.png)")
    if not idc.is_dir():
        raise WsiheatError(f"{idc}: is not a folder (expected IDC patches as PATIENT/CLASS/*.png)")
    return idc


def list_patients(idc_dir: str | os.PathLike) -> list[str]:
    """Patient IDs of an IDC folder: subfolders holding a ``0`` or ``1`` class folder.

    Returns
    -------
    list of str
        Sorted patient IDs.

    Raises
    ------
    WsiheatError
        When the folder is missing or holds no patient folder.
    """
    idc = check_idc_dir(idc_dir)
    patients = sorted(p.name for p in idc.iterdir()
                      if p.is_dir() and ((p / "0").is_dir() or (p / "1").is_dir()))
    if not patients:
        raise WsiheatError(f"{idc}: no patient folders (expected PATIENT/0/*.png and PATIENT/1/*.png)")
    return patients


def list_patches(idc_dir: str | os.PathLike, patients: Sequence[str]) -> dict[int, list[str]]:
    """Patch files of some patients, by class.

    Parameters
    ----------
    idc_dir : path
        IDC folder (``PATIENT/CLASS/PATIENT_idx5_xX_yY_classC.png``).
    patients : sequence of str
        Patient IDs.

    Returns
    -------
    dict
        ``{0: [...], 1: [...]}``: sorted paths relative to ``idc_dir``
        (``PATIENT/CLASS/NAME.png``).

    Raises
    ------
    WsiheatError
        For an unknown patient.
    """
    idc = check_idc_dir(idc_dir)
    out: dict[int, list[str]] = {0: [], 1: []}
    for pid in sorted(set(patients)):
        pdir = idc / pid
        if not pdir.is_dir():
            raise WsiheatError(f"{pdir}: no such patient folder in {idc}")
        for cls in (0, 1):
            cdir = pdir / str(cls)
            if not cdir.is_dir():
                continue
            for f in sorted(cdir.iterdir()):
                m = parse_idc_name(f.stem) if f.suffix == ".png" else None
                if m and m.label == cls:
                    out[cls].append(f"{pid}/{cls}/{f.name}")
    return out


def parse_fractions(text: str) -> dict[str, float]:
    """Parse ``"train=0.8,test=0.2"`` into ``{"train": 0.8, "test": 0.2}``.

    Raises
    ------
    WsiheatError
        For a malformed item.
    """
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise WsiheatError(f"split fractions: bad item {item!r} in {text!r} "
                               f"(expected NAME=FRACTION, e.g. train=0.8,test=0.2)") from None
    if not out:
        raise WsiheatError(f"split fractions: none given in {text!r} (e.g. train=0.8,test=0.2)")
    return out


def split_patients(idc_dir: str | os.PathLike, fractions: dict[str, float],
                   seed: int) -> dict[str, list[str]]:
    """Split the patients of an IDC folder into disjoint named sets.

    The patients (sorted) are shuffled with ``seed`` and cut in the order the
    splits are given, at ``round(n * cumulative_fraction)``. Every patient is
    in exactly one split, so no patient's patches appear in two splits; the
    result depends only on the patient IDs, the fractions and the seed.

    Parameters
    ----------
    idc_dir : path
        IDC folder.
    fractions : dict of str to float
        Split name -> fraction; positive, summing to 1.
    seed : int
        Shuffle seed.

    Returns
    -------
    dict of str to list of str
        Split name -> sorted patient IDs.

    Raises
    ------
    WsiheatError
        For fractions that are not positive or do not sum to 1, or more
        splits than patients.
    """
    if not fractions:
        raise WsiheatError("split fractions: none given")
    for name, f in fractions.items():
        if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise WsiheatError(f"split fractions: {name}={f} is not a positive number")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise WsiheatError(f"split fractions: {', '.join(f'{k}={v:g}' for k, v in fractions.items())} "
                           f"sum to {total:g}, not 1")
    patients = list_patients(idc_dir)
    n = len(patients)
    if len(fractions) > n:
        raise WsiheatError(f"{idc_dir}: {n} patients cannot fill {len(fractions)} splits")
    order = np.random.default_rng(int(seed)).permutation(n)
    shuffled = [patients[i] for i in order]
    out: dict[str, list[str]] = {}
    cum, start = 0.0, 0
    names = list(fractions)
    for k, name in enumerate(names):
        cum += fractions[name]
        end = n if k == len(names) - 1 else int(round(n * cum))
        end = max(end, start)
        out[name] = sorted(shuffled[start:end])
        start = end
    empty = [k for k, v in out.items() if not v]
    if empty:
        raise WsiheatError(f"{idc_dir}: split {empty[0]!r} gets no patient out of {n}; "
                           f"raise its fraction")
    return out


def choose_patients(idc_dir: str | os.PathLike, *, split: str = "test", split_fractions: str = "train=0.8,test=0.2",
                    split_seed: int = 0, patients: Sequence[str] | None = None,
                    val_model: str | os.PathLike | None = None,
                    val_patients: Sequence[str] | None = None) -> tuple[list[str], str, dict]:
    """The patients a mosaic set is drawn from, and a record of how they were chosen.

    One of: the validation patients a model recorded (``val_patients``, read
    from the metadata of the model file ``val_model``), an explicit list
    (``patients``), or one split of :func:`split_patients`.

    Returns
    -------
    patients : list of str
    split : str
        The split name to write (``val`` / ``custom`` replace the default ``test``).
    record : dict
        What ``split.json`` holds.
    """
    record: dict = {}
    if val_model is not None:
        if patients:
            raise WsiheatError(f"{val_model}: give a patient list or a model's validation patients, not both")
        val = list(val_patients or [])
        if not val:
            raise WsiheatError(f"{val_model}: the model records no validation slides (trained before "
                               f"wsiheat recorded them?); give the patients")
        patients = list(val)
        split = "val" if split == "test" else split
        record.update(val_patients_of=str(val_model))
    if patients:
        chosen = sorted({p.strip() for p in patients if p.strip()})
        if not chosen:
            raise WsiheatError(f"patients {list(patients)!r}: no patient ID")
        split = "custom" if split == "test" else split
        record.update(split=split, patients=chosen)
        return chosen, split, record
    fractions = parse_fractions(split_fractions)
    splits = split_patients(idc_dir, fractions, split_seed)
    if split not in splits:
        raise WsiheatError(f"split {split!r} is not one of the splits {', '.join(splits)} "
                           f"(from the fractions {split_fractions})")
    record.update(split=split, split_seed=split_seed, fractions=fractions, splits=splits)
    return splits[split], split, record
