"""CLI commands that make windows and slides: ``tissue``, ``extract``, ``import``, ``mosaic``."""

from __future__ import annotations

import click

from wsiheat import defaults
from wsiheat.cli.main import cli
from wsiheat.cli.options import NumbersOption, numbers_callback, parse_grid, scale_options, scale_requested, scale_tasks
from wsiheat.errors import WsiheatError


def _extract_many_cli(scale: dict, slide, ground_truth, output, quiet, replace, params) -> None:
    from wsiheat.scale.batch import extract_many
    from wsiheat.scale.tasks import status_table

    if replace:
        raise WsiheatError(f"{output}: --replace is for one slide; remove the slide's rows or use a new file "
                           f"for a manifest run")
    tasks = scale_tasks(scale, slide, ground_truth)
    run = extract_many(tasks, output, workers=scale["workers"], scheduler=scale["scheduler"],
                       retries=scale["retries"], keep_shards=scale["keep_shards"], progress=not quiet, **params)
    click.echo(status_table(run["results"]))
    merged = run["merged"]
    click.echo(f"{output}: " + (f"{len(merged['slides_added'])} slides added, {merged['rows_total']} rows"
                                 if merged else "nothing new to add") + f"; {run['seconds']:.1f} s")
    if any(r.status == "failed" for r in run["results"]):
        raise WsiheatError(f"{output}: some slides failed (see the table); re-run the same command to retry them")


# --- extract / tissue (foundation) -------------------------------------------------
# (commands are added below by each stage; keep one section per stage)

@cli.command("tissue")
@click.argument("slide", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="PNG: the tissue mask drawn over a thumbnail of the slide.")
@click.option("--downsample", default=defaults.TISSUE_MASK_DOWNSAMPLE, show_default=True, type=float,
              help="Mask resolution relative to level 0 (level-0 pixels per mask pixel).")
@click.option("--mask-out", default=None, type=click.Path(path_type=str),
              help="Also write the bare mask as a PNG (255 = tissue), one pixel per mask cell.")
@click.option("--thumbnail-size", default=2048, show_default=True, type=int,
              help="Longer side of the overlay image in pixels.")
def tissue_cmd(slide: str, output: str, downsample: float, mask_out: str | None, thumbnail_size: int) -> None:
    """Compute the tissue mask of SLIDE and draw it over a thumbnail.

    \b
    Example:
      wsiheat tissue slide.svs -o tissue.png --mask-out mask.png
    """
    from wsiheat.wsi.tissue import write_tissue_pictures

    if downsample <= 0:
        raise WsiheatError(f"--downsample must be positive, got {downsample:g}")
    if thumbnail_size < 16:
        raise WsiheatError(f"--thumbnail-size must be at least 16, got {thumbnail_size}")
    tm = write_tissue_pictures(slide, output, mask_out, downsample=downsample, thumbnail_size=thumbnail_size)
    h, w = tm.mask.shape
    click.echo(f"{slide}: tissue fraction {tm.fraction:.3f} (mask {w}x{h} at downsample {tm.downsample:g}) "
               f"-> {output}" + (f", {mask_out}" if mask_out else ""))


@cli.command()
@click.argument("slide", required=False, type=click.Path(path_type=str))
@click.argument("ground_truth", required=False, type=click.Path(path_type=str))
@click.option("-o", "--output", default="patches.h5", show_default=True,
              help="HDF5 patches file to create or append to.")
@click.option("--levels", cls=NumbersOption, callback=numbers_callback(int), metavar="L1 [L2 ...]",
              help="Pyramid level of each tower, finest first (default: 2 3).")
@click.option("--downsamples", cls=NumbersOption, callback=numbers_callback(float), metavar="D1 [D2 ...]",
              help="Downsample of each tower relative to level 0 (instead of --levels).")
@click.option("--mpp", cls=NumbersOption, callback=numbers_callback(float), metavar="M1 [M2 ...]",
              help="µm/px of each tower (instead of --levels; needs slide metadata).")
@click.option("--window", default=defaults.WINDOW, show_default=True, type=click.IntRange(min=1), help="Window side W (px).")
@click.option("--center", default=defaults.CENTER, show_default=True, type=click.IntRange(min=1),
              help="Labelled centre side C (tower-0 px): tumor if any tumor pixel inside.")
@click.option("--stride", default=defaults.STRIDE, show_default=True, type=click.IntRange(min=1), help="Grid step S (tower-0 px).")
@click.option("--tissue-threshold", default=defaults.TISSUE_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum tissue fraction of a normal window.")
@click.option("--normal-ratio", default=defaults.NORMAL_RATIO, show_default=True, type=click.FloatRange(min=0),
              help="Normal windows per tumor window on tumor slides.")
@click.option("--max-normal", default=defaults.MAX_NORMAL, show_default=True, type=click.IntRange(min=0),
              help="Most normal windows kept on a slide without tumor (0: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random draws.")
@click.option("--replace", is_flag=True, help="Re-extract a slide already in the output file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@scale_options  # --manifest/--workers/--scheduler/--retries/--keep-shards (scale section)
def extract(slide, ground_truth, output, levels, downsamples, mpp, window, center, stride, tissue_threshold,
            normal_ratio, max_normal, seed, replace, quiet, **scale):
    """Extract windows at one or more magnifications from SLIDE into an HDF5 file.

    GROUND_TRUTH (optional; omit it for a normal slide) is a tumor mask image or
    slide, CAMELYON16 ASAP XML, CAMELYON16 JSON or GeoJSON, recognised by content.
    Windows on tissue are kept (tumor windows always); normal windows are sampled
    1:1 with tumor windows on tumor slides, up to --max-normal on other slides.
    The output accumulates slides; an existing file is only ever replaced
    atomically (never left half-written).

    \b
    Example:
      wsiheat extract tumor_001.tif tumor_001.xml -o patches.h5 --levels 2 3
    """
    if scale_requested(scale, slide):  # many slides (scale section)
        return _extract_many_cli(scale, slide, ground_truth, output, quiet, replace, dict(
            levels=levels, downsamples=downsamples, mpps=mpp, window=window, center=center, stride=stride,
            tissue_threshold=tissue_threshold, normal_ratio=normal_ratio, max_normal=max_normal or None,
            seed=seed))
    from wsiheat.fileio import expect_result
    from wsiheat.patches.extract import extract_to_file, summary_line

    expect_result(output)
    stats = extract_to_file(slide, ground_truth, output, levels=levels, downsamples=downsamples, mpps=mpp,
                            window=window, center=center, stride=stride, tissue_threshold=tissue_threshold,
                            normal_ratio=normal_ratio, max_normal=max_normal or None, seed=seed,
                            replace=replace, progress=not quiet)
    for w in stats.get("warnings", []):
        click.echo(f"wsiheat: warning: {w}", err=True)
    click.echo(summary_line(stats))


# --- import / weights / train -------------------------------------------------------


@cli.command("import")
@click.argument("folder", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="HDF5 patches file to write.")
@click.option("--window", default=defaults.WINDOW, show_default=True, type=int,
              help="Window side in pixels; patches are resized to it.")
@click.option("--source-mpp", type=float, default=None,
              help="µm/px of the patches as stored [default: 4.0 for the IDC layout, else unknown].")
@click.option("--split", default=None,
              help="Import only the patients of this split (IDC layout), e.g. train or test.")
@click.option("--split-fractions", default="train=0.8,test=0.2", show_default=True,
              help="Patient split, NAME=FRACTION,... summing to 1 (the same as `wsiheat mosaic`).")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the patient split.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists (only a wsiheat patches file).")
def import_cmd(folder: str, output: str, window: int, source_mpp: float | None, split: str | None,
               split_fractions: str, split_seed: int, overwrite: bool) -> None:
    """Import labeled patch folders (Kaggle IDC PATIENT/CLASS/*.png or CLASS/*.png) into HDF5.

    \b
    With --split, only one patient split is imported; `wsiheat mosaic` uses the
    same split (same fractions and seed), so held-out patients stay held out:
      wsiheat import idc/ -o idc_train.h5 --split train
      wsiheat import idc/ -o idc_test.h5 --split test
    """
    from pathlib import Path

    from wsiheat.patches.importing import check_new_output, import_patches

    check_new_output(Path(output), overwrite)  # before the split is computed
    slides = None
    if split is not None:
        from wsiheat.patches.idc import parse_fractions, split_patients

        splits = split_patients(folder, parse_fractions(split_fractions), split_seed)
        if split not in splits:
            raise WsiheatError(f"--split {split}: not one of {', '.join(splits)}")
        slides = splits[split]
    s = import_patches(folder, output, window=window, slides=slides, source_mpp=source_mpp, overwrite=overwrite)
    click.echo(f"{s['output']}: {s['patches']} patches ({s['tumor']} tumor, {s['normal']} normal) "
               f"from {s['slides']} slide(s), {s['layout']} layout")


@cli.command("mosaic")
@click.argument("idc_dir", type=click.Path(path_type=str))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=str),
              help="Output folder (created if needed).")
@click.option("--slides", "n_slides", type=int, default=4, show_default=True,
              help="Number of slides in all.")
@click.option("--normal", "n_normal", type=int, default=1, show_default=True,
              help="How many of them have no tumor.")
@click.option("--split", "split", default="test", show_default=True,
              help="Which patient split to draw patches from.")
@click.option("--split-fractions", default="train=0.8,test=0.2", show_default=True,
              help="Patient split, NAME=FRACTION,... summing to 1.")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="Seed of the patient split (keep it equal to the one used for training).")
@click.option("--patients", default=None,
              help="Comma-separated patient IDs to use instead of a split.")
@click.option("--val-patients-of", "val_model", default=None, type=click.Path(dir_okay=False),
              help="Use the validation patients recorded in this model (wsiheat train's by-patient "
                   "validation split of an imported IDC file): slides for choosing post-processing "
                   "(evaluate tune) without touching the test patients.")
@click.option("--seed", type=int, default=0, show_default=True, help="Layout seed.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Cell size factor: 50 px patches become round(50*scale) px cells.")
@click.option("--grid", "grid", default="40x40", show_default=True,
              help="Grid size in cells, ROWSxCOLS.")
@click.option("--islands", "n_islands", type=int, default=None,
              help="Tissue islands per slide [default: 2-4, from the seed].")
@click.option("--tumors", "n_tumors", type=int, default=None,
              help="Tumor regions per tumor slide [default: 2-4, from the seed].")
@click.option("--compression", type=click.Choice(["jpeg", "deflate"]), default="jpeg",
              show_default=True, help="Slide tile compression (masks are always deflate).")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality.")
def mosaic_cmd(idc_dir, out_dir, n_slides, n_normal, split, split_fractions, split_seed, patients,
               val_model, seed, scale, grid, n_islands, n_tumors, compression, quality) -> None:
    """Build mosaic slides of real tissue from labeled IDC patches.

    IDC_DIR holds PATIENT/CLASS/*.png patches (class 1 = tumor). Writes into
    OUT_DIR pyramidal TIFF slides with tumor masks (NAME_mask.tif), ASAP XML
    annotations (NAME.xml), layout records (NAME.json), manifest.csv,
    labels.csv and split.json.

    \b
    Example:
      wsiheat mosaic data/idc -o mosaics --slides 10 --normal 4 --split test --seed 1
    """
    from wsiheat.patches.idc import choose_patients
    from wsiheat.patches.mosaic import build_mosaic_set

    if val_model is not None and patients:
        raise click.UsageError("give --patients or --val-patients-of, not both")
    val_patients = None
    if val_model is not None:
        from wsiheat.models.model import read_metadata

        val_patients = (read_metadata(val_model).get("training_data") or {}).get("val_slides") or []
    chosen, split, record = choose_patients(idc_dir, split=split, split_fractions=split_fractions,
                                            split_seed=split_seed, val_model=val_model, val_patients=val_patients,
                                            patients=patients.split(",") if patients else None)
    infos = build_mosaic_set(idc_dir, out_dir, chosen, n_slides, n_normal, seed, split=split,
                             grid=parse_grid(grid), scale=scale, n_islands=n_islands, n_tumors=n_tumors,
                             compression=compression, quality=quality, split_record={"seed": seed, **record})
    total = 0
    click.echo(f"{len(chosen)} patients of split {split!r}; {len(infos)} slides in {out_dir}:")
    for info in infos:
        size = sum(info.bytes.values())
        total += size
        w, h = info.dimensions
        click.echo(f"  {info.slide.name:<24} {w}x{h} px, {info.level_count} levels, {info.mpp:g} µm/px, "
                   f"{info.n_tumor_regions} tumor regions ({info.tumor_area_px} px), "
                   f"{size / 1e6:.2f} MB with mask/xml/json")
    click.echo(f"  manifest.csv, labels.csv, split.json; {total / 1e6:.2f} MB in all")
