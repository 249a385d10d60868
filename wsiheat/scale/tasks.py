"""Slide tasks and their results: manifests, slide lists and the status table.

A manifest is a CSV with a ``slide`` column and optional ``ground_truth``, ``name`` and
``split`` columns; relative paths are relative to the manifest.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from wsiheat.errors import WsiheatError
from wsiheat.wsi.slide import name_problem, slide_name

#: Columns a manifest may have (others are ignored).
MANIFEST_COLUMNS = ("slide", "ground_truth", "split")


# --- tasks and manifests -------------------------------------------------------------

@dataclass(frozen=True)
class SlideTask:
    """One slide to process.

    Attributes
    ----------
    name : str
        Slide name (file name without extension); names outputs and shards.
    slide : str
        Slide file path.
    ground_truth : str or None
        Ground-truth file (mask, XML, JSON, GeoJSON), None for none.
    split : str or None
        Free label from the manifest (train/test/...).
    """

    name: str
    slide: str
    ground_truth: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem:
            raise WsiheatError(f"{self.slide}: slide name {self.name!r} {problem}; rename the file "
                               f"(outputs are named after the slide)")


def check_unique(tasks: Sequence[SlideTask], source: str) -> None:
    seen: dict[str, str] = {}
    for t in tasks:
        if t.name in seen:
            raise WsiheatError(f"{source}: two slides are named {t.name} ({seen[t.name]} and {t.slide}); "
                               f"slide names must be unique")
        seen[t.name] = t.slide


def read_manifest(path: str | os.PathLike, split: str | None = None) -> list[SlideTask]:
    """Read a manifest CSV ``slide,ground_truth,split``.

    The header row is required; ``slide`` is the only required column,
    ``ground_truth`` and ``split`` are optional (an empty cell: none), other
    columns are ignored. Relative paths are relative to the manifest's folder.

    Parameters
    ----------
    path : path-like
    split : str, optional
        Keep only rows of this split.

    Returns
    -------
    list of SlideTask
        In file order.

    Raises
    ------
    WsiheatError
        Missing or unreadable file, no ``slide`` column, empty slide cell,
        a slide or ground-truth file that does not exist, duplicate names,
        a slide name that cannot name outputs (empty, ``.``/``..``, leading
        dot), no rows (left).
    """
    path = Path(path)
    if not path.is_file():
        raise WsiheatError(f"{path}: no such manifest file")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "slide" not in header:
                raise WsiheatError(f"{path}: manifest needs a header row with a 'slide' column "
                                   f"(columns: slide,ground_truth,split), got {','.join(header) or 'nothing'}")
            rows = [({(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None},
                     reader.line_num) for row in reader]
    except UnicodeDecodeError:
        raise WsiheatError(f"{path}: not a UTF-8 text CSV manifest") from None
    except csv.Error as exc:
        raise WsiheatError(f"{path}: not a valid CSV manifest ({exc})") from None
    tasks = []
    for row, line in rows:
        if not any(row.values()):
            continue
        if split is not None and row.get("split", "") != split:
            continue
        s = row.get("slide", "")
        if not s:
            raise WsiheatError(f"{path}: line {line}: empty 'slide' cell")
        sp = Path(s) if Path(s).is_absolute() else base / s
        if not sp.exists():
            raise WsiheatError(f"{path}: line {line}: slide {s} does not exist ({sp})")
        g = row.get("ground_truth", "")
        gp = None
        if g:
            gp = Path(g) if Path(g).is_absolute() else base / g
            if not gp.exists():
                raise WsiheatError(f"{path}: line {line}: ground truth {g} does not exist ({gp})")
        try:
            tasks.append(SlideTask(slide_name(sp), str(sp), str(gp) if gp else None, row.get("split") or None))
        except WsiheatError as exc:
            raise WsiheatError(f"{path}: line {line}: {exc}") from None
    if not tasks:
        raise WsiheatError(f"{path}: no slides in the manifest" + (f" with split {split}" if split else ""))
    check_unique(tasks, str(path))
    return tasks


def tasks_from_paths(slides: Iterable[str | os.PathLike],
                     ground_truths: Iterable[str | os.PathLike | None] | None = None) -> list[SlideTask]:
    """Tasks from slide paths (and matching ground truths, None for none)."""
    slides = [str(s) for s in slides]
    gts = list(ground_truths) if ground_truths is not None else [None] * len(slides)
    if len(gts) != len(slides):
        raise ValueError(f"{len(slides)} slides but {len(gts)} ground truths")
    tasks = []
    for s, g in zip(slides, gts):
        if not Path(s).exists():
            raise WsiheatError(f"{s}: no such slide file")
        if g is not None and not Path(g).exists():
            raise WsiheatError(f"{g}: no such ground-truth file")
        tasks.append(SlideTask(slide_name(s), s, str(g) if g is not None else None))
    check_unique(tasks, "slides")
    return tasks


# --- the runner ----------------------------------------------------------------------

@dataclass
class SlideResult:
    """Outcome of one slide.

    Attributes
    ----------
    name : str
    status : str
        ``done``, ``failed`` or ``skipped`` (outputs already present).
    error : str or None
        ``ExceptionType: message`` of the last attempt (failed slides).
    seconds : float
        Time of the successful (or last) attempt, 0 when skipped.
    outputs : dict
        What the task returned (paths, statistics).
    attempts : int
    errors : list of str
        The error of every failed attempt.
    worker : str
        ``host:pid`` of the process that ran the successful attempt.
    """

    name: str
    status: str
    error: str | None = None
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)
    attempts: int = 0
    errors: list = field(default_factory=list)
    worker: str = ""


def error_text(exc: BaseException) -> str:
    """One line: a user error's own message; any other exception's type, then its message."""
    text = " ".join(str(exc).split())
    if isinstance(exc, WsiheatError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def status_table(results: Sequence[SlideResult]) -> str:
    """A plain-text table of per-slide status (slide, status, attempts, seconds, error)."""
    rows = [("slide", "status", "tries", "seconds", "error")]
    for r in results:
        rows.append((r.name, r.status, str(r.attempts), f"{r.seconds:.1f}" if r.status == "done" else "-",
                     r.error or ""))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
             for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(f"{len(results)} slides: {counts['done']} done, {counts['skipped']} skipped, "
                 f"{counts['failed']} failed")
    return "\n".join(line.rstrip() for line in lines)
