"""CLI command ``heatmap``: one slide, a list or a manifest, through :func:`wsiheat.scale.batch.heatmap_many`."""

from __future__ import annotations

import sys

import click

from wsiheat import defaults
from wsiheat.cli.main import cli
from wsiheat.cli.options import parse_floats, scale_options
from wsiheat.errors import WsiheatError
from wsiheat.inference.backends import BACKENDS, PRECISIONS  # light: no TensorFlow at import

#: The slide budget line counts minutes per this many tissue windows (a CAMELYON16-size slide).
BUDGET_WINDOWS = 100_000


def budget_line(results) -> str | None:
    """'inference: BACKEND PRECISION (why), N windows/s, M min per 100k tissue windows' of done slides."""
    done = [r.outputs for r in results if r.status == "done" and r.outputs]
    n = sum(s.get("cells_evaluated", 0) for s in done)
    t = sum(s.get("inference_seconds", 0.0) for s in done)
    if not done or n == 0 or t <= 0:
        return None
    s = done[-1]
    why = f" ({s['precision_reason']})" if s.get("precision_reason") else ""
    return (f"inference: {s.get('backend', 'tensorflow')} {s.get('precision')}{why}: {n / t:.1f} windows/s, "
            f"{BUDGET_WINDOWS / (n / t) / 60:.1f} min per {BUDGET_WINDOWS // 1000}k tissue windows")


@cli.command("heatmap")
@click.argument("slides", nargs=-1, required=False, type=click.Path(path_type=str))
@click.option("-m", "--model", "model_path", required=True, type=click.Path(path_type=str),
              help="Saved wsiheat model (.keras).")
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Heatmap PNG of a single slide; the other outputs are named from its stem, in its folder.")
@click.option("--out-dir", type=click.Path(path_type=str), default=None,
              help="Output folder for many slides (outputs named after each slide). Default: current folder.")
@click.option("--overwrite", is_flag=True, help="Redo slides whose outputs already exist (default: skip them).")
@click.option("--batch-size", default=defaults.PREDICT_BATCH_SIZE, show_default=True, type=click.IntRange(min=1),
              help="Windows per model call.")
@click.option("--tta", is_flag=True, help="Average the 8 rotations/flips of every window (8x slower).")
@click.option("--readers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Background reader threads per slide.")
@click.option("--block", default=1024, show_default=True, type=click.IntRange(min=128),
              help="Side of the regions read at once, tower-0 pixels.")
@click.option("--tissue-threshold", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="A cell is evaluated when the tissue fraction of its centre exceeds this.")
@click.option("--lesion-threshold", default=defaults.LESION_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum probability of a lesion point in the CSV.")
@click.option("--nms-radius", default=None, type=click.FloatRange(min=0),
              help="Non-maximum suppression radius, level-0 pixels [default: 4 cells].")
@click.option("--nms-radius-um", default=None, type=click.FloatRange(min=0),
              help="Same in µm (needs the slide's µm/px).")
@click.option("--area-threshold", default=defaults.AREA_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Probability above which a cell counts as tumor area.")
@click.option("--topk", default=defaults.TOPK, show_default=True, type=click.IntRange(min=1),
              help="Cells averaged for the top-k mean score.")
@click.option("--smooth", default=defaults.SMOOTH_SIGMA, show_default=True, type=click.FloatRange(min=0),
              help="Gaussian sigma in cells of the tissue-only smoothing that locates and ranks lesion "
                   "points and gives the slide score (max of the smoothed map); 0 = the raw map.")
@click.option("--lesion-scorer", "lesion_scorer_path", default=None, type=click.Path(dir_okay=False),
              help="Lesion scorer (JSON from `wsiheat evaluate fit-scorer`): its map, learned from the "
                   "neighbourhood of each cell, replaces the smoothed map for lesion points and the score.")
@click.option("--downsamples", default=None,
              help="Override the model's tower downsamples (relative to level 0), e.g. '2,4'.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Inference backend: auto = tensorflow on a GPU, openvino on CPU when installed "
                   "(pip install 'wsiheat[openvino]'; converted once, cached next to the model).")
@click.option("--precision", type=click.Choice(PRECISIONS),
              default="auto", show_default=True,
              help="Compute precision: auto = mixed_bfloat16 with openvino on CPUs with bf16 instructions "
                   "(AVX512-BF16/AMX), float32 otherwise; mixed_bfloat16 moves probabilities by ~0.01 at most "
                   "on average; mixed_float16 for GPUs (tensorflow).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
@click.option("--max-cells", default=None, type=click.IntRange(min=0), hidden=True,
              help="Evaluate only the first N tissue cells, row-major (benchmarks).")
@scale_options(shards=False)
def heatmap_cmd(slides, model_path, output, out_dir, overwrite, batch_size, tta, readers, block,
                tissue_threshold, lesion_threshold, nms_radius, nms_radius_um, area_threshold, topk,
                smooth, lesion_scorer_path, downsamples, backend, precision, progress, max_cells, **scale) -> int:
    """Tumor-probability heatmaps of SLIDES with a trained model.

    \b
    Examples:
      wsiheat heatmap slide.svs -m model.keras -o heat.png
      wsiheat heatmap slides/*.svs -m model.keras --out-dir results/
      wsiheat heatmap --manifest slides.csv -m model.keras --out-dir results/ --workers 2
    \b
    Per slide NAME: NAME.png (heatmap + colorbar), NAME_overlay.png,
    NAME.h5 (raw probabilities, tissue, geometry), NAME_heatmap.tif
    (pyramidal TIFF aligned to the slide), NAME_lesions.csv (prob,x,y
    level-0 px), NAME_lesions.png (the candidates in context) and NAME.json
    (score = max of the smoothed map, see --smooth, or of the
    --lesion-scorer map; ...).
    """
    from pathlib import Path

    from wsiheat.models.model import read_metadata
    from wsiheat.postprocess.scorer import load_scorer
    from wsiheat.scale.batch import heatmap_many
    from wsiheat.scale.tasks import SlideTask, read_manifest, status_table, tasks_from_paths
    from wsiheat.wsi.slide import slide_name

    lesion_scorer = load_scorer(lesion_scorer_path) if lesion_scorer_path else None
    if output is not None and out_dir is not None:
        raise WsiheatError("give either -o/--output (one slide) or --out-dir, not both")
    if scale.get("manifest") and slides:
        raise WsiheatError(f"{slides[0]}: give either SLIDES or --manifest, not both")
    if not scale.get("manifest") and not slides:
        raise WsiheatError("no slide: give SLIDES or --manifest FILE")
    many = bool(scale.get("manifest") or scale.get("workers") or scale.get("scheduler"))
    if many and output is not None:
        raise WsiheatError("--workers/--scheduler/--manifest write into --out-dir, not -o/--output")
    if output is not None:
        if len(slides) != 1:
            raise WsiheatError(f"-o/--output names the outputs of one slide, got {len(slides)} slides; "
                               f"use --out-dir")
        if not output.lower().endswith(".png"):
            raise WsiheatError(f"{output}: -o/--output must be a .png file")
        out = Path(output)
        folder = out.parent if str(out.parent) else Path(".")
        tasks = [SlideTask(out.stem, slides[0])]
    else:
        folder = Path(out_dir if out_dir is not None else ".")
        if scale.get("manifest"):
            tasks = read_manifest(scale["manifest"], split=scale.get("manifest_split"))
        elif many:
            tasks = tasks_from_paths(list(slides))
        else:
            tasks, seen = [], {}
            for s in slides:
                nm = slide_name(s)
                if nm in seen:
                    raise WsiheatError(f"{s}: same output name {nm!r} as {seen[nm]}; "
                                       f"process them into different folders")
                seen[nm] = s
                tasks.append(SlideTask(nm, s))
    read_metadata(model_path)  # fast: a foreign file fails before TensorFlow loads
    options = dict(batch_size=batch_size, tta=tta, readers=readers, block=block, tissue_threshold=tissue_threshold,
                   lesion_threshold=lesion_threshold, nms_radius=nms_radius, nms_radius_um=nms_radius_um,
                   area_threshold=area_threshold, topk=topk, smooth=smooth, lesion_scorer=lesion_scorer,
                   downsamples=parse_floats(downsamples, "--downsamples"), backend=backend, precision=precision)
    if max_cells is not None:
        options["max_cells"] = max_cells
    if many:
        run = heatmap_many(tasks, model_path, folder, workers=scale["workers"], scheduler=scale["scheduler"],
                           retries=scale["retries"], progress=sys.stderr.isatty(), overwrite=overwrite, **options)
        click.echo(status_table(run["results"]))
        failed = [r for r in run["results"] if r.status == "failed"]
        click.echo(f"{folder}: {len(run['results']) - len(failed)} of {len(run['results'])} slides done; "
                   f"{run['seconds']:.1f} s")
        budget = budget_line(run["results"])
        if budget:
            click.echo(budget)
        if failed:
            raise WsiheatError(f"{folder}: {len(failed)} slides failed (see the table); re-run the same command "
                               f"to retry them")
        return 0

    def report(r) -> None:
        if r.status == "skipped":
            click.echo(f"{r.name}: skipped, outputs exist in {folder} (--overwrite to redo)")
        elif r.status == "failed":
            click.echo(f"wsiheat: error: {r.error}", err=True)
        else:
            s = r.outputs
            for w in s["warnings"]:
                click.echo(f"wsiheat: warning: {w}", err=True)
            click.echo(f"{r.name}: score {s['score']:.3f}, top-{s['topk']} mean {s['topk_mean']:.3f}, "
                       f"tumor area {s['tumor_area']:.4g} {s['tumor_area_unit']}, {s['lesions']} lesion points, "
                       f"{s['cells_evaluated']} windows in {s['seconds']:.1f} s "
                       f"({s['patches_per_second']:.1f} windows/s) -> {folder / (r.name + '.png')}")
            st = s.get("stain")
            if st and st.get("source"):
                click.echo(f"{r.name}: stain-normalised ({st['method']}, the model's target; fitted on "
                           f"{st['fitted_on_windows']} tissue windows"
                           + (f", {st['unnormalised_windows']} windows left as they were" if st["unnormalised_windows"]
                              else "") + ")")

    show = sys.stderr.isatty() if progress is None else progress
    run = heatmap_many(tasks, model_path, folder, workers=0, retries=0, progress=False, overwrite=overwrite,
                       window_progress=show, on_result=report, **options)
    budget = budget_line(run["results"])
    if budget:
        click.echo(budget)
    failed = sum(r.status == "failed" for r in run["results"])
    if failed:
        click.echo(f"wsiheat: {failed} of {sum(r.status != 'skipped' for r in run['results'])} slides failed",
                   err=True)
        return 2
    return 0
