"""ASAP XML annotations (CAMELYON16): the reader and the writer.

Groups ``Tumor``, ``_0`` and ``_1`` are tumor; ``_2`` (and ``Exclusion``, ``Normal``, ...) are holes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from wsiheat.errors import GroundTruthError

if TYPE_CHECKING:  # pragma: no cover
    from typing import Iterable, Sequence

#: ASAP groups that are tumor / holes in CAMELYON16.
TUMOR_GROUPS = ("tumor", "_0", "_1", "metastases", "metastasis")
HOLE_GROUPS = ("_2", "exclusion", "non-tumor", "normal")


# --- readers -----------------------------------------------------------------------

def read_asap_xml(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read CAMELYON16 ASAP XML into (tumor polygons, holes), level-0 pixels."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise GroundTruthError(f"{path}: not valid XML ({exc})") from None
    pos, neg = [], []
    for ann in root.iter("Annotation"):
        group = (ann.get("PartOfGroup") or "").strip().lower()
        pts = []
        for c in ann.iter("Coordinate"):
            try:
                pts.append((float(c.get("X").replace(",", ".")), float(c.get("Y").replace(",", "."))))
            except (TypeError, ValueError, AttributeError):
                raise GroundTruthError(f"{path}: annotation {ann.get('Name')!r} has a coordinate without "
                                   f"numeric X/Y") from None
        bad = [k for k, (x, y) in enumerate(pts) if not (np.isfinite(x) and np.isfinite(y))]
        if bad:
            x, y = pts[bad[0]]
            raise GroundTruthError(f"{path}: annotation {ann.get('Name')!r}: vertex {bad[0]} ({x}, {y}) "
                                   f"is not finite")
        if len(pts) < 3:
            continue
        if group in HOLE_GROUPS:
            neg.append(np.asarray(pts))
        elif group in TUMOR_GROUPS or group in ("", "none"):
            pos.append(np.asarray(pts))
    return pos, neg


def asap_annotations_xml(annotations: Iterable[tuple], groups: Sequence[tuple[str, str]], decimals: int = 1) -> str:
    """ASAP annotation XML: the one writer of the format.

    Parameters
    ----------
    annotations : iterable of (name, type, group, color, points)
        ``type`` ``Polygon``, ``Dot``, ...; ``points`` (x, y) in level-0 pixels
        (polygons closed implicitly: first vertex not repeated).
    groups : sequence of (name, color)
        Declared in ``<AnnotationGroups>``.
    decimals : int
        Decimals of the coordinates.

    Returns
    -------
    str
    """
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for name, kind, group, color, points in annotations:
        lines.append(f'\t\t<Annotation Name={quoteattr(str(name))} Type={quoteattr(kind)} '
                     f'PartOfGroup={quoteattr(group)} Color={quoteattr(color)}>')
        lines.append("\t\t\t<Coordinates>")
        for k, (x, y) in enumerate(points):
            lines.append(f'\t\t\t\t<Coordinate Order="{k}" X="{float(x):.{decimals}f}" Y="{float(y):.{decimals}f}" />')
        lines.append("\t\t\t</Coordinates>")
        lines.append("\t\t</Annotation>")
    lines.append("\t</Annotations>")
    lines.append("\t<AnnotationGroups>")
    for name, color in groups:
        lines += [f'\t\t<Group Name={quoteattr(name)} PartOfGroup="None" Color={quoteattr(color)}>',
                  "\t\t\t<Attributes />", "\t\t</Group>"]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


def asap_xml(polygons: Sequence[Sequence[tuple[float, float]]], group: str = "Tumor") -> str:
    """CAMELYON16 ASAP XML text for polygons in level-0 pixels (one group), as mosaic slides carry.

    Parameters
    ----------
    polygons : sequence of sequence of (x, y)
        Closed polygons (first vertex not repeated).
    group : str
        ``PartOfGroup`` of every annotation, declared in ``<AnnotationGroups>``.

    Returns
    -------
    str
    """
    return asap_annotations_xml([(f"{group} {i + 1}", "Polygon", group, "#F4FA58", poly)
                                 for i, poly in enumerate(polygons)], [(group, "#00ff00")], decimals=1)
