"""Many slides over processes and machines (Dask): ``extract_many`` and ``heatmap_many``.

Every slide is an independent task: a pure function of its inputs whose
outputs are written atomically (:func:`wsiheat.fileio.atomic_path`). The
runner :func:`wsiheat.scale.runner.run_slides` executes the tasks

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
:func:`wsiheat.patches.store.merge_into` (a copy; atomic). The result is identical to
extracting the slides one after the other in one process.

Heatmaps (:func:`heatmap_many`) write each slide's outputs into the output
folder; slides whose outputs are all present are skipped. A worker process
loads the model once (:func:`cached_model`) and reuses it for all its slides.

"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from wsiheat import defaults
from wsiheat.errors import WsiheatError
from wsiheat.fileio import ensure_out_dir
from wsiheat.scale.runner import run_slides
from wsiheat.scale.tasks import SlideResult, SlideTask, check_unique

if TYPE_CHECKING:  # pragma: no cover
    from dask.distributed import Client

    from wsiheat.inference.engine import HeatmapModel

# --- extraction over many slides -------------------------------------------------------

def shard_dir_for(output: str | os.PathLike) -> Path:
    """Folder of the per-slide shards of ``output``: ``OUTPUT.shards`` beside it."""
    output = Path(output)
    return output.parent / f"{output.name}.shards"


def _shard_complete(shard: Path, name: str) -> bool:
    if not shard.is_file():
        return False
    from wsiheat.patches.store import open_patches

    try:
        with open_patches(shard) as pf:
            return pf.slides == [name]
    except (WsiheatError, OSError):
        return False


def extract_shard(task: SlideTask, shard_dir: str, params: dict) -> dict:
    """Extract one slide into its own shard ``shard_dir/NAME.h5`` (atomic).

    ``params`` are the keyword options of
    :func:`wsiheat.patches.extract.extract_to_file` (levels, downsamples, mpps, window,
    center, stride, tissue_threshold, normal_ratio, max_normal, seed,
    tissue_downsample); the shard's attributes and ``slide_info`` are those
    ``extract_to_file`` writes, so merged shards equal a sequential run.

    Returns
    -------
    dict
        ``shard`` path plus the slide's statistics (scanned, kept_tumor, ...).
    """
    from wsiheat.fileio import atomic_path
    from wsiheat.patches.extract import extraction_attrs, write_shard
    from wsiheat.wsi.annotations.groundtruth import load_ground_truth
    from wsiheat.wsi.slide import Slide

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
                 progress: bool = True, client: Client | None = None, **params) -> dict:
    """Extract many slides in parallel into one patches file, resumably.

    Each slide becomes a shard ``OUTPUT.shards/NAME.h5`` (:func:`extract_shard`,
    run through :func:`run_slides`); then the shards of slides not yet in
    ``output`` are appended to it in task order with
    :func:`wsiheat.patches.store.merge_into` (one atomic copy). Slides already in
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
    from wsiheat.fileio import check_writable_dir
    from wsiheat.patches.store import merge_into, open_patches

    t0 = time.perf_counter()
    output = Path(output)
    if output.is_dir():
        raise WsiheatError(f"{output}: is a folder; give a file name such as {output / 'patches.h5'}")
    check_writable_dir(output)
    tasks = list(tasks)
    check_unique(tasks, "slides")
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

_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()
_LOADS = 0


def cached_model(path: str | os.PathLike, precision: str = "auto", batch_size: int = defaults.PREDICT_BATCH_SIZE,
                 tta: bool = False, backend: str = "auto") -> HeatmapModel:
    """A :class:`wsiheat.inference.engine.HeatmapModel` of ``path``, loaded once per process and reused.

    In a Dask worker process every task on that worker gets the same engine
    (model, metadata and compiled inference function), so a GPU worker pays the
    load (and the GPU memory) once. The key is the resolved path, its
    modification time and the inference options (``backend``, ``precision``:
    see :meth:`wsiheat.inference.engine.HeatmapModel.load`).
    """
    from wsiheat.inference.engine import HeatmapModel

    p = Path(path).resolve()
    try:
        key = (str(p), p.stat().st_mtime_ns, precision, int(batch_size), bool(tta), backend)
    except FileNotFoundError:
        raise WsiheatError(f"{path}: no such model file") from None
    with _MODELS_LOCK:
        if key not in _MODELS:
            from wsiheat.models.model import import_tensorflow_quietly

            import_tensorflow_quietly()
            global _LOADS
            for k in [k for k in _MODELS if k[0] == key[0]]:  # an older version of the file
                del _MODELS[k]
            _MODELS[key] = HeatmapModel.load(p, backend=backend, precision=precision, batch_size=batch_size,
                                              tta=tta)
            _LOADS += 1
        return _MODELS[key]


def model_loads() -> int:
    """How many times this process has loaded a model file (tests, diagnostics)."""
    return _LOADS


#: Options that do not change a heatmap's results (left out of its recorded parameters).
_NOT_PARAMETERS = ("progress", "readers", "block", "batch_size")


def heatmap_parameters(task: SlideTask, model_path: str | os.PathLike, options: dict) -> dict:
    """The parameters of one slide's heatmap run, recorded in and compared with ``NAME.json``'s completion record.

    The slide and model files (path, size, modification time) and every
    option that changes the results.
    """
    def ident(path) -> dict:
        p = Path(path).resolve()
        try:
            st = p.stat()
            return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            return {"path": str(p)}

    params = {k: v for k, v in options.items() if k not in _NOT_PARAMETERS}
    scorer = params.get("lesion_scorer")
    if scorer is not None and hasattr(scorer, "to_dict"):
        params["lesion_scorer"] = scorer.to_dict()
    return {"slide": ident(task.slide), "model": ident(model_path), "options": params}


def heatmap_task(task: SlideTask, model_path: str, out_dir: str, options: dict,
                 parameters: dict | None = None) -> dict:
    """Heatmap outputs of one slide with the process's cached engine (see :func:`cached_model`).

    ``parameters``: recorded parameters by slide name (made by the driver,
    :func:`heatmap_parameters`); computed here when absent.
    """
    from wsiheat.inference.heatmap import HeatmapWarning

    parameters = (parameters or {}).get(task.name) or heatmap_parameters(task, model_path, options)
    options = dict(options)
    engine = cached_model(model_path, options.pop("precision", "auto"),
                          options.pop("batch_size", defaults.PREDICT_BATCH_SIZE), options.pop("tta", False),
                          options.pop("backend", "auto"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeatmapWarning)  # they are in the summary's "warnings"
        # the model path recorded in the outputs is the one the user gave (the engine is shared)
        heatmap = engine.predict_slide(task.slide, task.name, model_path=str(model_path), **options)
    summary = heatmap.save(out_dir, task.name, parameters)
    summary = dict(summary)
    summary["model_loads"] = model_loads()
    return summary


def heatmap_many(tasks: Sequence[SlideTask], model_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 workers: int = 0, scheduler: str | None = None, retries: int = 1, progress: bool = True,
                 resources: dict | None = None, client: Client | None = None, overwrite: bool = False,
                 window_progress: bool = False,
                 on_result: Callable[[SlideResult], None] | None = None, **options) -> dict:
    """Heatmaps of many slides, in this process or in parallel, resumably.

    The one many-slide heatmap driver: ``wsiheat heatmap`` uses it for a list of
    slides (``workers=0``: a plain loop in this process) and for manifests and
    Dask clusters. Slides whose outputs in ``out_dir`` are a complete set
    made with the same parameters (verified against ``NAME.json``'s
    completion record, :func:`wsiheat.inference.outputs.outputs_complete`)
    are skipped unless ``overwrite``; an incomplete or mismatched set is redone; outputs are replaced file by file (each
    atomically) only once a slide's new heatmap is computed, so an earlier
    set is never removed before the model is known to work. Each process
    loads the model once.

    Parameters
    ----------
    tasks : sequence of SlideTask
        ``name`` names the outputs (``NAME.png``, ...).
    model_path : path-like
        Saved wsiheat model (``.keras``).
    out_dir : path-like
        Output folder (created if missing).
    workers, scheduler, retries, progress, resources, client, on_result
        See :func:`wsiheat.scale.runner.run_slides` (``resources={"GPU": 1}`` for one-GPU workers).
    overwrite : bool
        Redo slides whose outputs exist.
    window_progress : bool
        A bar over each slide's windows (in this process only: ``workers=0``).
    **options
        Keyword options of :func:`wsiheat.inference.heatmap.compute_heatmap` (batch_size,
        tta, tissue_threshold, lesion_threshold, ...), ``backend`` and ``precision``
        (see :meth:`wsiheat.inference.engine.HeatmapModel.load`; default ``auto``).

    Returns
    -------
    dict
        ``results`` (list of SlideResult), ``out_dir``, ``seconds``.
    """
    from wsiheat.inference.outputs import outputs_complete
    from wsiheat.models.model import read_metadata

    t0 = time.perf_counter()
    tasks = list(tasks)
    check_unique(tasks, "slides")
    read_metadata(model_path)  # fail fast on a bad model file, here rather than on every worker
    out = ensure_out_dir(out_dir)
    distributed = bool(workers or scheduler or client)  # other processes: an absolute model path
    fn = functools.partial(heatmap_task, model_path=str(Path(model_path).resolve() if distributed else model_path),
                           out_dir=str(out), options={**options, "progress": window_progress and not distributed},
                           parameters={t.name: heatmap_parameters(t, model_path, options) for t in tasks})

    def is_done(t: SlideTask) -> bool:  # a complete set, verified, from a run with these parameters
        return outputs_complete(out, t.name, fn.keywords["parameters"][t.name])

    results = run_slides(tasks, fn, workers=workers, scheduler=scheduler, retries=retries, desc="heatmap",
                         is_done=None if overwrite else is_done, progress=progress,
                         resources=resources, client=client, on_result=on_result)
    return {"results": results, "out_dir": str(out), "seconds": time.perf_counter() - t0}
