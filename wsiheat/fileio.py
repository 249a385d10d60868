"""Atomic output files: write to a temporary name, then rename.

Nothing a run writes is visible under its final name until it is complete, so
an interrupted or failed run never leaves a half-written file, and a file that
existed before stays exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from wsiheat.errors import WsiheatError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


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


# --- temporary files: named after their writer, removed when it is gone ------------------------------

#: This machine, in temporary names (a writer on another machine sharing the folder is never judged).
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(path: str | os.PathLike) -> str:
    """Prefix of this process's temporary files beside ``path``: ``.NAME.HOST-PID.``."""
    return f".{Path(path).name}.{HOST}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files beside ``path`` left by writers that are gone (killed, crashed).

    Only files named by :func:`temp_prefix` (``.NAME.HOST-PID.*.shard.h5`` or
    ``.NAME.HOST-PID.*.part*``) whose HOST is this machine and whose PID no
    longer runs are removed; a live writer's files, other machines' files
    and any other file are left alone. Returns the removed paths.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    pat = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)\..*\.(shard\.h5|part.*)$")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        m = pat.match(e.name)
        if not m or m["host"] != HOST or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
    return removed


def free_bytes(folder: str | os.PathLike) -> int:
    """Free space of the file system holding ``folder``, in bytes (available to this user)."""
    return shutil.disk_usage(folder).free


def check_free_space(path: str | os.PathLike, need: int, what: str = "the output") -> None:
    """Raise before a large write into the folder of ``path`` that would not fit (``need`` bytes, +5 %)."""
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    free = free_bytes(parent)
    if need * 1.05 + (1 << 20) > free:
        raise WsiheatError(f"{parent}: not enough free space for {what}: about "
                           f"{_mb(need)} needed, {_mb(free)} free; nothing was changed")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def write_error(path: str | os.PathLike, exc: BaseException) -> WsiheatError:
    """A one-line error for a failed write of ``path`` (disk full, I/O error, ...)."""
    text = str(exc)
    no_space = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "errno = 28" in text
    if no_space:
        return WsiheatError(f"{path}: disk full while writing (no space left in {Path(path).parent}); "
                            f"the earlier file, if any, is unchanged")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return WsiheatError(f"{path}: write failed ({first}); the earlier file, if any, is unchanged")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left untouched. The temporary name holds this machine and
    process (:func:`temp_prefix`), so a later run removes what a killed one
    left (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    parent = check_writable_dir(path)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=f".part{suffix}", dir=parent)
    except OSError as exc:
        raise WsiheatError(f"{path}: cannot write output in {parent} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)  # writers create the file themselves
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise write_error(path, exc) from None
            raise
        if not tmp_path.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp_path}")
        commit(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp_path.unlink()
        raise


def save_figure(fig: Figure, path: str | os.PathLike, tight_layout: bool = False) -> None:
    """Write a matplotlib figure as PNG atomically, then close it (the one figure writer)."""
    import matplotlib.pyplot as plt

    try:
        if tight_layout:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def sha256_file(path: str | os.PathLike, prefix: bytes = b"") -> str:
    """Hex SHA-256 of ``prefix`` followed by a file's bytes, read in 4 MiB blocks (the one file hasher)."""
    h = hashlib.sha256(prefix)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
