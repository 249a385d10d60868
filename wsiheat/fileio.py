"""Atomic output files: write to a temporary name, then rename.

Nothing a run writes is visible under its final name until it is complete, so
an interrupted or failed run never leaves a half-written file, and a file that
existed before stays exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
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


#: Test hook: comma-separated pause points (see :func:`pause_point` and docs/reliability.md).
PAUSE_ENV = "WSIHEAT_TEST_PAUSE"
#: Folder of the test hook's ``POINT.reached`` / ``POINT.go`` files (default: the current folder).
PAUSE_DIR_ENV = "WSIHEAT_TEST_PAUSE_DIR"


def pause_point(point: str) -> None:
    """Test hook: hold the process at a named point of a write, for kill/interrupt tests.

    Inactive (one environment lookup) unless ``WSIHEAT_TEST_PAUSE`` lists
    ``point``. Then the first time the point is reached the process writes
    ``POINT.reached`` (holding its PID) into ``WSIHEAT_TEST_PAUSE_DIR`` and
    waits until ``POINT.go`` exists there; signals are delivered while it
    waits. Points: ``shard-append`` (extract: a batch of rows is in the
    temporary shard), ``before-commit`` (a complete temporary file is about to
    be renamed onto its final name), ``after-commit`` (it has been renamed),
    ``heatmap-outputs`` (a heatmap's files are written, their completion
    record is not).
    """
    points = os.environ.get(PAUSE_ENV)
    if not points or point not in points.split(","):
        return
    d = Path(os.environ.get(PAUSE_DIR_ENV) or ".")
    reached = d / f"{point}.reached"
    if reached.exists():
        return
    reached.write_text(str(os.getpid()))
    go = d / f"{point}.go"
    while not go.exists():
        time.sleep(0.01)


_COMMITTED: set[str] = set()
_EXPECTED: list[str] = []


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def expect_result(path: str | os.PathLike) -> None:
    """Declare ``path`` as the result of the running command (see :func:`result_committed`)."""
    _EXPECTED.append(_key(path))


def result_committed() -> list[str]:
    """The declared results, when every one of them has been committed (renamed into place); else [].

    The CLI uses it when interrupted: an interrupt that arrives after the
    commit point reports the command as completed.
    """
    return list(_EXPECTED) if _EXPECTED and all(p in _COMMITTED for p in _EXPECTED) else []


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT inside is held and raised as KeyboardInterrupt on leaving (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the complete temporary file ``tmp`` onto ``path``: the commit point.

    The rename and its record (:func:`result_committed`) happen together: a
    Ctrl-C that arrives meanwhile is raised only after both.
    """
    pause_point("before-commit")
    with _interrupts_held():
        os.replace(tmp, path)
        _COMMITTED.add(_key(path))
    pause_point("after-commit")


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
        commit(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp_path.unlink()
        raise
