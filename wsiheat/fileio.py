"""Atomic output files: write to a temporary name, then rename.

Nothing a run writes is visible under its final name until it is complete, so
an interrupted or failed run never leaves a half-written file, and a file that
existed before stays exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from wsiheat.errors import WsiheatError


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Return the parent folder of ``path`` after checking it exists and is writable."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise WsiheatError(f"{path}: cannot write output: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise WsiheatError(f"{path}: cannot write output: folder {parent} is not writable")
    return parent


def ensure_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create the output folder ``out_dir`` (and its parents) if needed; check it is writable."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WsiheatError(f"{out}: output exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WsiheatError(f"{out}: cannot create output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise WsiheatError(f"{out}: output folder is not writable")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left untouched.
    """
    path = Path(path)
    parent = check_writable_dir(path)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=parent)
    os.close(fd)
    os.unlink(tmp)  # writers create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp_path}")
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp_path.unlink()
        raise


def save_figure(fig, path: str | os.PathLike, tight_layout: bool = False) -> None:
    """Write a matplotlib figure as PNG atomically, then close it (the one figure writer)."""
    import matplotlib.pyplot as plt

    try:
        if tight_layout:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
