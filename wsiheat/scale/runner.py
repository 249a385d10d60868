"""The many-slide runner: one task per slide, in this process or on a Dask cluster.

:func:`run_slides` runs a picklable ``fn(task)`` for every :class:`wsiheat.scale.tasks.SlideTask`:
in a plain loop (``workers=0``; Dask is not even imported), on a local cluster of worker
processes, or on an existing scheduler. Failing slides are retried and reported, finished
slides are skipped, so re-running resumes.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Callable, Sequence

from wsiheat.errors import WsiheatError
from wsiheat.scale.tasks import SlideResult, SlideTask, error_text

if TYPE_CHECKING:  # pragma: no cover
    from dask.distributed import Client


def _timed(fn: Callable, task: SlideTask) -> tuple[dict, float, str]:
    """Run ``fn(task)`` and time it (runs on the worker); also says where it ran."""
    import socket

    t0 = time.perf_counter()
    out = fn(task)
    return ((out if isinstance(out, dict) else {"result": out}), time.perf_counter() - t0,
            f"{socket.gethostname()}:{os.getpid()}")


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool, on_result=None):
        from tqdm import tqdm

        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.running = 0
        self.on_result = on_result
        self.bar = tqdm(total=total, unit="slide", desc=desc, disable=not enabled, dynamic_ncols=True)

    def finish(self, result: SlideResult) -> None:
        self.counts[result.status] += 1
        self.bar.update(1)
        self.show()
        if self.on_result is not None:
            self.on_result(result)

    def show(self) -> None:
        self.bar.set_postfix(done=self.counts["done"], failed=self.counts["failed"], running=self.running,
                             skipped=self.counts["skipped"], refresh=True)

    def close(self) -> None:
        self.bar.close()


def start_client(workers: int = 0, scheduler: str | None = None) -> Client:
    """A ``dask.distributed.Client``: to ``scheduler`` or to a new LocalCluster of ``workers`` processes.

    Returns
    -------
    (client, cluster)
        ``cluster`` is None for an existing scheduler; close both when done.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dependency
        raise WsiheatError("dask.distributed is not installed: pip install 'dask[distributed]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise WsiheatError(f"{scheduler}: cannot connect to the Dask scheduler ({error_text(exc)})") from None
    if workers < 1:
        raise WsiheatError(f"workers must be >= 1 for a local cluster, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def run_slides(tasks: Sequence[SlideTask], fn: Callable[[SlideTask], dict], *, workers: int = 0,
               scheduler: str | None = None, retries: int = 1, desc: str = "slides",
               is_done: Callable[[SlideTask], bool] | None = None, progress: bool = True,
               resources: dict | None = None, client: Client | None = None,
               on_result: Callable[[SlideResult], None] | None = None) -> list[SlideResult]:
    """Run ``fn(task)`` for every slide, in process or on a Dask cluster.

    Parameters
    ----------
    tasks : sequence of SlideTask
    fn : callable
        ``fn(task) -> dict`` processing one slide and writing its outputs
        atomically. For Dask it must be picklable: a module-level function or
        a :func:`functools.partial` of one.
    workers : int
        0: plain loop in this process (no Dask). N > 0: a local Dask cluster
        of N worker processes with one thread each.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://HOST:8786``); wins over
        ``workers``.
    retries : int
        Extra attempts for a slide that raised.
    desc : str
        Progress-bar label.
    is_done : callable, optional
        ``is_done(task) -> bool``: outputs already present; such slides are
        skipped (evaluated here, before submitting).
    progress : bool
        Show a tqdm bar over slides (done / failed / running / skipped).
    resources : dict, optional
        Dask worker resources each task needs, e.g. ``{"GPU": 1}`` (workers
        started with ``--resources GPU=1``).
    client : dask.distributed.Client, optional
        Use this client (tests, notebooks) instead of starting one.
    on_result : callable, optional
        Called with each slide's :class:`SlideResult` as soon as it is known
        (skipped, done or failed), in this process.

    Returns
    -------
    list of SlideResult
        In the order of ``tasks``.
    """
    if retries < 0:
        raise WsiheatError(f"retries must be >= 0, got {retries}")
    if workers < 0:
        raise WsiheatError(f"workers must be >= 0, got {workers}")
    tasks = list(tasks)
    results: list[SlideResult | None] = [None] * len(tasks)
    prog = _Progress(len(tasks), desc, progress, on_result)
    try:
        todo = []
        for i, t in enumerate(tasks):
            if is_done is not None and is_done(t):
                results[i] = SlideResult(t.name, "skipped")
                prog.finish(results[i])
            else:
                todo.append(i)
        if not todo:
            return results  # type: ignore[return-value]
        if client is None and not scheduler and workers == 0:
            _run_local(tasks, todo, fn, retries, results, prog)
        else:
            own = client is None
            cluster = None
            if own:
                client, cluster = start_client(workers, scheduler)
            try:
                _run_dask(client, tasks, todo, fn, retries, results, prog, resources, desc)
            finally:
                if own:
                    client.close()
                    if cluster is not None:
                        cluster.close()
    finally:
        prog.close()
    return results  # type: ignore[return-value]


def _run_local(tasks, todo, fn, retries, results, prog) -> None:
    for i in todo:
        t = tasks[i]
        errors: list[str] = []
        prog.running = 1
        prog.show()
        for attempt in range(retries + 1):
            t0 = time.perf_counter()
            try:
                out, secs, where = _timed(fn, t)
            except Exception as exc:  # noqa: BLE001 - a slide's failure is reported, not raised
                errors.append(error_text(exc))
                secs = time.perf_counter() - t0
                continue
            results[i] = SlideResult(t.name, "done", None, secs, out, attempt + 1, errors, where)
            break
        else:
            results[i] = SlideResult(t.name, "failed", errors[-1], secs, {}, retries + 1, errors)
        prog.running = 0
        prog.finish(results[i])


def _run_dask(client, tasks, todo, fn, retries, results, prog, resources, desc) -> None:
    from dask.distributed import as_completed

    token = uuid.uuid4().hex[:8]
    kw = {"resources": resources} if resources else {}

    def submit(i: int, attempt: int):
        return client.submit(_timed, fn, tasks[i], key=f"{desc}-{tasks[i].name}-{token}-{attempt}",
                             pure=False, **kw)

    slots = max(1, sum(client.nthreads().values()))
    futures = {}
    for i in todo:
        futures[submit(i, 0)] = (i, 0)
    errors: dict[int, list[str]] = {i: [] for i in todo}
    ac = as_completed(list(futures))
    prog.running = min(len(futures), slots)
    prog.show()
    for fut in ac:
        i, attempt = futures.pop(fut)
        t = tasks[i]
        if fut.status == "finished":
            out, secs, where = fut.result()
            results[i] = SlideResult(t.name, "done", None, secs, out, attempt + 1, errors[i], where)
        else:
            exc = fut.exception()
            errors[i].append(error_text(exc) if exc is not None else f"task {fut.status}")
            if attempt < retries:
                new = submit(i, attempt + 1)
                futures[new] = (i, attempt + 1)
                ac.add(new)
                fut.release()
                continue
            results[i] = SlideResult(t.name, "failed", errors[i][-1], 0.0, {}, attempt + 1, errors[i])
        fut.release()
        slots = max(1, sum(client.nthreads().values()))
        prog.running = min(len(futures), slots)
        prog.finish(results[i])
