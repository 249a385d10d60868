"""Scale out: many slides over processes and machines (Dask), multi-worker training.

Many slides
-----------
Every slide is an independent task: a pure function of its inputs whose
outputs are written atomically (:func:`wsiheat.fileio.atomic_path`). The
runner :func:`run_slides` executes the tasks

* ``workers=0`` (default): in this process, one after the other; Dask is not
  even imported;
* ``workers=N``: on a local Dask cluster (``LocalCluster``, N worker
  processes, one thread each) started and stopped by the call;
* ``scheduler="tcp://HOST:8786"``: on an existing Dask cluster (workers started
  with ``dask worker tcp://HOST:8786`` on any number of machines that see the
  same files).

A task that raises is retried (``retries`` times, default once) and then
reported as *failed* with its error; it never touches other slides' outputs.
Tasks whose outputs already exist are *skipped*, so re-running the same
command resumes an interrupted or partly failed run.

Extraction (:func:`extract_many`) writes one shard per slide,
``OUTPUT.shards/NAME.h5`` (a valid patches file of one slide), then appends
the shards, in manifest order, to the single HDF5 contract file with
:func:`wsiheat.store.merge_into` (a copy; atomic). The result is identical to
extracting the slides one after the other in one process.

Heatmaps (:func:`heatmap_many`) write each slide's outputs into the output
folder; slides whose outputs are all present are skipped. A worker process
loads the model once (:func:`cached_model`) and reuses it for all its slides.

Training
--------
:func:`select_strategy` chooses the ``tf.distribute`` strategy:
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` lists several workers,
``MirroredStrategy`` with more than one local GPU, else the default strategy.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import WsiheatError
from .slide import slide_name

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


def _check_unique(tasks: Sequence[SlideTask], source: str) -> None:
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
        no rows (left).
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
        tasks.append(SlideTask(slide_name(sp), str(sp), str(gp) if gp else None, row.get("split") or None))
    if not tasks:
        raise WsiheatError(f"{path}: no slides in the manifest" + (f" with split {split}" if split else ""))
    _check_unique(tasks, str(path))
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
    _check_unique(tasks, "slides")
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


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timed(fn: Callable, task: SlideTask) -> tuple[dict, float, str]:
    """Run ``fn(task)`` and time it (runs on the worker); also says where it ran."""
    import socket

    t0 = time.perf_counter()
    out = fn(task)
    return ((out if isinstance(out, dict) else {"result": out}), time.perf_counter() - t0,
            f"{socket.gethostname()}:{os.getpid()}")


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        from tqdm import tqdm

        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.running = 0
        self.bar = tqdm(total=total, unit="slide", desc=desc, disable=not enabled, dynamic_ncols=True)

    def finish(self, status: str) -> None:
        self.counts[status] += 1
        self.bar.update(1)
        self.show()

    def show(self) -> None:
        self.bar.set_postfix(done=self.counts["done"], failed=self.counts["failed"], running=self.running,
                             skipped=self.counts["skipped"], refresh=True)

    def close(self) -> None:
        self.bar.close()


def start_client(workers: int = 0, scheduler: str | None = None):
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
            raise WsiheatError(f"{scheduler}: cannot connect to the Dask scheduler ({_error_text(exc)})") from None
    if workers < 1:
        raise WsiheatError(f"workers must be >= 1 for a local cluster, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def run_slides(tasks: Sequence[SlideTask], fn: Callable[[SlideTask], dict], *, workers: int = 0,
               scheduler: str | None = None, retries: int = 1, desc: str = "slides",
               is_done: Callable[[SlideTask], bool] | None = None, progress: bool = True,
               resources: dict | None = None, client=None) -> list[SlideResult]:
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
    prog = _Progress(len(tasks), desc, progress)
    try:
        todo = []
        for i, t in enumerate(tasks):
            if is_done is not None and is_done(t):
                results[i] = SlideResult(t.name, "skipped")
                prog.finish("skipped")
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
                errors.append(_error_text(exc))
                secs = time.perf_counter() - t0
                continue
            results[i] = SlideResult(t.name, "done", None, secs, out, attempt + 1, errors, where)
            break
        else:
            results[i] = SlideResult(t.name, "failed", errors[-1], secs, {}, retries + 1, errors)
        prog.running = 0
        prog.finish(results[i].status)


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
            errors[i].append(_error_text(exc) if exc is not None else f"task {fut.status}")
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
        prog.finish(results[i].status)


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


# --- extraction over many slides -------------------------------------------------------

def shard_dir_for(output: str | os.PathLike) -> Path:
    """Folder of the per-slide shards of ``output``: ``OUTPUT.shards`` beside it."""
    output = Path(output)
    return output.parent / f"{output.name}.shards"


def _shard_complete(shard: Path, name: str) -> bool:
    if not shard.is_file():
        return False
    from .store import open_patches

    try:
        with open_patches(shard) as pf:
            return pf.slides == [name]
    except (WsiheatError, OSError):
        return False


def extract_shard(task: SlideTask, shard_dir: str, params: dict) -> dict:
    """Extract one slide into its own shard ``shard_dir/NAME.h5`` (atomic).

    ``params`` are the keyword options of
    :func:`wsiheat.extract.extract_to_file` (levels, downsamples, mpps, window,
    center, stride, tissue_threshold, normal_ratio, max_normal, seed,
    tissue_downsample); the shard's attributes and ``slide_info`` are those
    ``extract_to_file`` writes, so merged shards equal a sequential run.

    Returns
    -------
    dict
        ``shard`` path plus the slide's statistics (scanned, kept_tumor, ...).
    """
    from .annotations import load_ground_truth
    from .extract import extraction_attrs, write_shard
    from .fileio import atomic_path
    from .slide import Slide

    shard = Path(shard_dir) / f"{task.name}.h5"
    slide = Slide(task.slide)
    try:
        if slide.name != task.name:
            raise WsiheatError(f"{task.slide}: slide name {slide.name} differs from task name {task.name}")
        gt = load_ground_truth(task.ground_truth, slide.dimensions) if task.ground_truth else None
        spec, attrs = extraction_attrs(slide, **params)
        with atomic_path(shard, suffix=".h5") as tmp:
            stats = write_shard(slide, gt, tmp, spec, attrs, progress=False)
    finally:
        slide.close()
    keep = ("scanned", "on_tissue", "tumor", "kept_tumor", "kept_normal", "kept")
    return {"shard": str(shard), **{k: stats[k] for k in keep if k in stats}}


def extract_many(tasks: Sequence[SlideTask], output: str | os.PathLike, *, workers: int = 0,
                 scheduler: str | None = None, retries: int = 1, keep_shards: bool = False,
                 progress: bool = True, client=None, **params) -> dict:
    """Extract many slides in parallel into one patches file, resumably.

    Each slide becomes a shard ``OUTPUT.shards/NAME.h5`` (:func:`extract_shard`,
    run through :func:`run_slides`); then the shards of slides not yet in
    ``output`` are appended to it in task order with
    :func:`wsiheat.store.merge_into` (one atomic copy). Slides already in
    ``output``, or with a complete shard, are skipped. Failed slides are left
    out of the merge (and reported); the others are merged.

    Parameters
    ----------
    tasks : sequence of SlideTask
    output : path-like
        Patches file to create or append to.
    workers, scheduler, retries, progress, client
        See :func:`run_slides`.
    keep_shards : bool
        Keep the shards after merging (default: delete them).
    **params
        Extraction options, see :func:`extract_shard`.

    Returns
    -------
    dict
        ``results`` (list of SlideResult), ``merged`` (merge_into's summary or
        None), ``output``, ``shard_dir``, ``seconds``.
    """
    from .fileio import check_writable_dir
    from .store import merge_into, open_patches

    t0 = time.perf_counter()
    output = Path(output)
    if output.is_dir():
        raise WsiheatError(f"{output}: is a folder; give a file name such as {output / 'patches.h5'}")
    check_writable_dir(output)
    tasks = list(tasks)
    _check_unique(tasks, "slides")
    present: set[str] = set()
    if output.exists():
        with open_patches(output) as pf:
            present = set(pf.slides)
            a = pf.attrs
            for k in ("window", "center", "stride"):
                if k in params and params[k] is not None and int(params[k]) != int(a[k]):
                    raise WsiheatError(f"{output}: {k} {params[k]} differs from the file's {a[k]}; "
                                       f"extract into another file or use the file's parameters")
    sdir = shard_dir_for(output)
    sdir.mkdir(exist_ok=True)

    def is_done(t: SlideTask) -> bool:
        return t.name in present or _shard_complete(sdir / f"{t.name}.h5", t.name)

    fn = functools.partial(extract_shard, shard_dir=str(sdir), params=params)
    results = run_slides(tasks, fn, workers=workers, scheduler=scheduler, retries=retries, desc="extract",
                         is_done=is_done, progress=progress, client=client)
    to_merge = [sdir / f"{t.name}.h5" for t, r in zip(tasks, results)
                if t.name not in present and r.status != "failed" and (sdir / f"{t.name}.h5").is_file()]
    merged = merge_into(output, to_merge) if to_merge else None
    if not keep_shards:
        for s in to_merge:
            s.unlink(missing_ok=True)
        try:
            sdir.rmdir()
        except OSError:  # not empty (failed slides' leftovers, other files): keep it
            pass
    return {"results": results, "merged": merged, "output": str(output), "shard_dir": str(sdir),
            "seconds": time.perf_counter() - t0}


# --- heatmaps over many slides ---------------------------------------------------------

_MODELS: dict[tuple, tuple] = {}
_MODELS_LOCK = threading.Lock()
_LOADS = 0


def cached_model(path: str | os.PathLike, precision: str = "float32"):
    """``wsiheat.model.load_model(path, precision=precision)``, loaded once per process and reused.

    In a Dask worker process every task on that worker gets the same model
    object, so a GPU worker pays the load (and the GPU memory) once. The key
    is the resolved path and its modification time.

    Returns
    -------
    (keras.Model, dict)
    """
    p = Path(path).resolve()
    try:
        key = (str(p), p.stat().st_mtime_ns, precision)
    except FileNotFoundError:
        raise WsiheatError(f"{path}: no such model file") from None
    with _MODELS_LOCK:
        if key not in _MODELS:
            from .model import import_tensorflow_quietly, load_model

            import_tensorflow_quietly()
            global _LOADS
            for k in [k for k in _MODELS if k[0] == key[0]]:  # an older version of the file
                del _MODELS[k]
            _MODELS[key] = load_model(p, precision=precision)
            _LOADS += 1
        return _MODELS[key]


def model_loads() -> int:
    """How many times this process has loaded a model file (tests, diagnostics)."""
    return _LOADS


def heatmap_task(task: SlideTask, model_path: str, out_dir: str, options: dict) -> dict:
    """Heatmap outputs of one slide with the process's cached model (see :func:`cached_model`)."""
    from .infer import heatmap_slide

    options = dict(options)
    model, metadata = cached_model(model_path, options.pop("precision", "float32"))
    summary = heatmap_slide(task.slide, model, metadata, out_dir, model_path=str(model_path),
                            progress=False, **options)
    summary = dict(summary)
    summary["model_loads"] = model_loads()
    return summary


def heatmap_many(tasks: Sequence[SlideTask], model_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 workers: int = 0, scheduler: str | None = None, retries: int = 1, progress: bool = True,
                 resources: dict | None = None, client=None, **options) -> dict:
    """Heatmaps of many slides, in parallel and resumably.

    Slides whose outputs are all present in ``out_dir`` are skipped. Each
    worker process loads the model once.

    Parameters
    ----------
    tasks : sequence of SlideTask
    model_path : path-like
        Saved wsiheat model (``.keras``).
    out_dir : path-like
        Output folder (created if missing).
    workers, scheduler, retries, progress, resources, client
        See :func:`run_slides` (``resources={"GPU": 1}`` for one-GPU workers).
    **options
        Keyword options of :func:`wsiheat.infer.heatmap_slide` (batch_size,
        tta, tissue_threshold, lesion_threshold, ...), and ``precision``
        (the model's compute precision, :data:`wsiheat.model.INFER_PRECISIONS`).

    Returns
    -------
    dict
        ``results`` (list of SlideResult), ``out_dir``, ``seconds``.
    """
    from .infer import outputs_exist
    from .model import read_metadata

    t0 = time.perf_counter()
    tasks = list(tasks)
    _check_unique(tasks, "slides")
    read_metadata(model_path)  # fail fast on a bad model file, here rather than on every worker
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fn = functools.partial(heatmap_task, model_path=str(Path(model_path).resolve()), out_dir=str(out),
                           options=options)
    results = run_slides(tasks, fn, workers=workers, scheduler=scheduler, retries=retries, desc="heatmap",
                         is_done=lambda t: outputs_exist(out, t.name), progress=progress,
                         resources=resources, client=client)
    return {"results": results, "out_dir": str(out), "seconds": time.perf_counter() - t0}


# --- training strategies -----------------------------------------------------------------

def tf_config_workers(env: dict | None = None) -> int:
    """Number of workers (chief included) that ``TF_CONFIG`` describes; 0 without it."""
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cfg = json.loads(raw)
        cluster = cfg.get("cluster", {})
        return sum(len(cluster.get(k, [])) for k in ("chief", "worker"))
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise WsiheatError(f"TF_CONFIG: not valid JSON with a 'cluster' entry: {raw[:80]!r}") from None


_MW_STRATEGY = None


def multiworker_strategy():
    """The process's ``MultiWorkerMirroredStrategy`` (from ``TF_CONFIG``), created once.

    TensorFlow configures the collectives when the strategy is created, which
    must happen before TensorFlow runs any operation; the CLI creates it right
    after importing TensorFlow and later calls get the same object.
    """
    global _MW_STRATEGY
    if _MW_STRATEGY is None:
        import tensorflow as tf

        try:
            _MW_STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            if "startup" not in str(e):
                raise
            raise WsiheatError("TF_CONFIG: the multi-worker strategy must be created before "
                               "TensorFlow runs anything; train in a fresh process") from None
        except (ValueError, KeyError, tf.errors.OpError) as e:  # bad task index, busy port, ...
            msg = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
            raise WsiheatError(f"TF_CONFIG: cannot start the multi-worker strategy: {msg} (this "
                               "task's host:port must be this machine and free)") from None
    return _MW_STRATEGY


def select_strategy():
    """The ``tf.distribute`` strategy for training on the resources at hand.

    * ``TF_CONFIG`` describing more than one worker: ``MultiWorkerMirroredStrategy``
      (synchronous data parallelism across machines; every machine runs the
      same command with its own ``TF_CONFIG`` task index);
    * more than one local GPU: ``MirroredStrategy``;
    * otherwise the default strategy (one device).
    """
    import tensorflow as tf

    if tf_config_workers() > 1:
        return multiworker_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def tf_config_task(env: dict | None = None) -> tuple[str | None, int]:
    """``(task type, task index)`` from ``TF_CONFIG``; ``(None, 0)`` without it."""
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG")
    if not raw:
        return None, 0
    tf_config_workers(env)  # validates the JSON
    task = json.loads(raw).get("task") or {}
    if not isinstance(task, dict):
        raise WsiheatError(f"TF_CONFIG: 'task' must be an object like {{\"type\": \"worker\", "
                           f"\"index\": 0}}, not {task!r}")
    try:
        return task.get("type"), int(task.get("index", 0))
    except (TypeError, ValueError):
        raise WsiheatError(f"TF_CONFIG: task index {task.get('index')!r} is not an integer") from None


def tf_config_is_chief(env: dict | None = None) -> bool:
    """Whether this process is the chief of a ``TF_CONFIG`` cluster (TensorFlow's rule).

    The chief is the task of type ``chief``, or worker 0 when the cluster has
    no ``chief`` entry; without ``TF_CONFIG`` the single process is the chief.
    """
    env = os.environ if env is None else env
    kind, index = tf_config_task(env)
    if kind is None or kind == "chief":
        return True
    cluster = json.loads(env["TF_CONFIG"]).get("cluster", {})
    return kind == "worker" and index == 0 and not cluster.get("chief")


#: Number of histogram bins of the training-metric statistics (the AUC resolution).
STAT_BINS = 200


def binned_stats(y_true, y_pred, sample_weight=None, bins: int = STAT_BINS):
    """Additive statistics of a batch: ``[tp, fp, tn, fn, hist_pos(bins), hist_neg(bins)]``.

    Summed over replicas and steps they give accuracy, sensitivity,
    specificity (threshold 0.5) and the AUC of the binned scores
    (:func:`metrics_from_stats`). A TensorFlow function (runs inside
    ``strategy.run``).
    """
    import tensorflow as tf

    y = tf.reshape(tf.cast(y_true, tf.float32), (-1,)) >= 0.5
    p = tf.reshape(tf.cast(y_pred, tf.float32), (-1,))
    hi = p > 0.5  # keras BinaryAccuracy / Recall: strictly above the threshold
    yf, nf = tf.cast(y, tf.float32), tf.cast(tf.logical_not(y), tf.float32)
    tp = tf.reduce_sum(yf * tf.cast(hi, tf.float32))
    fn = tf.reduce_sum(yf) - tp
    fp_spec = tf.reduce_sum(nf * tf.cast(p >= 0.5, tf.float32))  # wsiheat Specificity: >= 0.5
    tn = tf.reduce_sum(nf) - fp_spec
    fp = tf.reduce_sum(nf * tf.cast(hi, tf.float32))
    hpos = tf.cast(tf.histogram_fixed_width(tf.boolean_mask(p, y), [0.0, 1.0], nbins=bins), tf.float32)
    hneg = tf.cast(tf.histogram_fixed_width(tf.boolean_mask(p, tf.logical_not(y)), [0.0, 1.0],
                                            nbins=bins), tf.float32)
    return tf.concat([tf.stack([tp, fp, tn, fn, fp_spec]), hpos, hneg], axis=0)


def metrics_from_stats(stats) -> dict:
    """AUC, accuracy, sensitivity, specificity from summed :func:`binned_stats`.

    The AUC is the Mann-Whitney AUC of the binned scores (ties within a bin
    count 1/2); NaN when a class is missing.
    """
    import numpy as np

    s = np.asarray(stats, np.float64)
    tp, fp, tn, fn, fp_spec = s[:5]
    bins = (len(s) - 5) // 2
    hpos, hneg = s[5:5 + bins], s[5 + bins:]
    npos, nneg = hpos.sum(), hneg.sum()
    out = {}
    if npos > 0 and nneg > 0:
        tpr = np.concatenate([[0.0], np.cumsum(hpos[::-1]) / npos])
        fpr = np.concatenate([[0.0], np.cumsum(hneg[::-1]) / nneg])
        out["auc"] = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))
    else:
        out["auc"] = float("nan")
    n = npos + nneg
    out["accuracy"] = float((tp + (nneg - fp)) / n) if n else float("nan")
    out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else 0.0
    out["specificity"] = float(tn / (tn + fp_spec)) if tn + fp_spec else 0.0
    return out


class StepRunner:
    """Synchronous data-parallel training steps with ``strategy.run`` (a custom loop).

    Keras 3.15's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585: it all-reduces the first data batch and the
    scalar logs with ``axis=0``); this loop uses only public
    ``tf.distribute`` API and works with every strategy. The distributed
    iterator and the compiled step persist across :meth:`run` calls (epochs
    continue the data stream).

    Parameters
    ----------
    model : keras.Model
        Created inside ``strategy.scope()``.
    dataset : tf.data.Dataset or callable
        A dataset of ``(x, y)`` global batches of ``global_batch_size``
        (repeat it; distributed and auto-sharded across workers here), or a
        function ``fn(tf.distribute.InputContext) -> dataset`` of per-replica
        batches (``strategy.distribute_datasets_from_function``; no auto-sharding).
    strategy : tf.distribute.Strategy
    optimizer : keras.optimizers.Optimizer
        Created inside ``strategy.scope()``; a ``LossScaleOptimizer`` scales the loss.
    loss_fn : callable
        ``loss_fn(y_true, y_pred) -> per-example losses`` (no reduction).
    global_batch_size : int
    class_weight : dict, optional
        ``{class: weight}``: per-example loss weights by label (as ``fit``'s ``class_weight``).
    stats : bool
        Also sum :func:`binned_stats` of the training predictions.
    """

    def __init__(self, model, dataset, strategy, *, optimizer, loss_fn, global_batch_size: int,
                 class_weight: dict | None = None, stats: bool = False):
        import tensorflow as tf

        self.strategy = strategy
        if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
            dist = strategy.distribute_datasets_from_function(dataset)
        else:
            dist = strategy.experimental_distribute_dataset(dataset)
        self._iter = iter(dist)
        scale = getattr(optimizer, "scale_loss", None)
        cw = None if class_weight is None else (float(class_weight.get(0, 1.0)),
                                                float(class_weight.get(1, 1.0)))
        with strategy.scope():
            optimizer.build(model.trainable_variables)

        def step(x, y):
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                per = tf.cast(tf.reshape(loss_fn(y, pred), (-1,)), tf.float32)
                if cw is not None:
                    lab = tf.reshape(tf.cast(y, tf.float32), (-1,))
                    per = per * (cw[0] + (cw[1] - cw[0]) * lab)
                loss = tf.nn.compute_average_loss(per, global_batch_size=global_batch_size)
                scaled = scale(loss) if scale is not None else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            if stats:
                return loss, binned_stats(y, pred)
            return loss, tf.zeros((0,), tf.float32)

        @tf.function
        def dstep(batch):
            loss, st = strategy.run(step, args=batch)
            red = tf.distribute.ReduceOp.SUM
            return strategy.reduce(red, loss, axis=None), strategy.reduce(red, st, axis=None)

        self._step = dstep

    def run(self, steps: int):
        """Run ``steps`` steps; returns (global mean loss per step, summed stats or None)."""
        import numpy as np

        losses, total = [], None
        for _ in range(int(steps)):
            loss, st = self._step(next(self._iter))
            losses.append(float(loss))
            st = np.asarray(st, np.float64)
            total = st if total is None else total + st
        return losses, (total if total is not None and total.size else None)


def all_reduce_mean(strategy, value: float) -> float:
    """The mean of ``value`` over all replicas of ``strategy`` (a collective: call on every worker)."""
    import tensorflow as tf

    v = tf.constant(float(value), tf.float32)

    @tf.function
    def f():
        per = strategy.run(lambda: tf.identity(v))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per, axis=None)

    return float(f())


def train_steps(model, dataset, strategy, steps: int, *, optimizer, loss_fn, global_batch_size: int,
                class_weight: dict | None = None) -> list[float]:
    """``steps`` synchronous data-parallel steps (:class:`StepRunner`); the global mean loss per step."""
    runner = StepRunner(model, dataset, strategy, optimizer=optimizer, loss_fn=loss_fn,
                        global_batch_size=global_batch_size, class_weight=class_weight)
    return runner.run(steps)[0]
