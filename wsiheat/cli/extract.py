"""cli.extract (split from wsiheat.cli)."""

from __future__ import annotations

import click

from wsiheat import defaults
from wsiheat.cli.main import cli
from wsiheat.cli.options import _numbers, _NumbersOption, _parse_grid, _scale_options, _scale_requested, _scale_tasks
from wsiheat.errors import WsiheatError


def _extract_many_cli(scale: dict, slide, ground_truth, output, quiet, replace, params) -> None:
    from wsiheat.scale.batch import extract_many
    from wsiheat.scale.tasks import status_table

    if replace:
        raise WsiheatError(f"{output}: --replace is for one slide; remove the slide's rows or use a new file "
                           f"for a manifest run")
    tasks = _scale_tasks(scale, slide, ground_truth)
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
@click.option("--downsample", default=32.0, show_default=True, type=float,
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
    import cv2

    from wsiheat.fileio import atomic_path, check_writable_dir
    from wsiheat.wsi.slide import Slide
    from wsiheat.wsi.tissue import overlay_mask, tissue_mask

    if downsample <= 0:
        raise WsiheatError(f"--downsample must be positive, got {downsample:g}")
    if thumbnail_size < 16:
        raise WsiheatError(f"--thumbnail-size must be at least 16, got {thumbnail_size}")
    for out in (output, mask_out):
        if out is not None:
            check_writable_dir(out)
    with Slide(slide) as s:
        tm = tissue_mask(s, downsample)
        thumb, _ = s.thumbnail(max(thumbnail_size, 1))
    image = overlay_mask(thumb, tm.mask)
    with atomic_path(output, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise WsiheatError(f"{output}: could not write the PNG")
    if mask_out is not None:
        with atomic_path(mask_out, suffix=".png") as tmp:
            if not cv2.imwrite(str(tmp), tm.mask.astype("uint8") * 255):
                raise WsiheatError(f"{mask_out}: could not write the PNG")
    h, w = tm.mask.shape
    click.echo(f"{slide}: tissue fraction {tm.fraction:.3f} (mask {w}x{h} at downsample {tm.downsample:g}) "
               f"-> {output}" + (f", {mask_out}" if mask_out else ""))


@cli.command()
@click.argument("slide", required=False, type=click.Path(path_type=str))
@click.argument("ground_truth", required=False, type=click.Path(path_type=str))
@click.option("-o", "--output", default="patches.h5", show_default=True,
              help="HDF5 patches file to create or append to.")
@click.option("--levels", cls=_NumbersOption, callback=_numbers(int), metavar="L1 [L2 ...]",
              help="Pyramid level of each tower, finest first (default: 2 3).")
@click.option("--downsamples", cls=_NumbersOption, callback=_numbers(float), metavar="D1 [D2 ...]",
              help="Downsample of each tower relative to level 0 (instead of --levels).")
@click.option("--mpp", cls=_NumbersOption, callback=_numbers(float), metavar="M1 [M2 ...]",
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
@_scale_options  # --manifest/--workers/--scheduler/--retries/--keep-shards (scale section)
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
    if _scale_requested(scale, slide):  # many slides (scale section)
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
    import json as _json

    from wsiheat.fileio import atomic_path
    from wsiheat.patches.idc import parse_fractions, split_patients
    from wsiheat.patches.mosaic import build_mosaic_set

    record: dict = {"seed": seed}
    if val_model is not None:
        if patients:
            raise click.UsageError("give --patients or --val-patients-of, not both")
        from wsiheat.models.model import read_metadata

        val = (read_metadata(val_model).get("training_data") or {}).get("val_slides") or []
        if not val:
            raise WsiheatError(f"{val_model}: the model records no validation slides (trained before "
                               f"wsiheat recorded them?); give --patients")
        patients = ",".join(val)
        split = "val" if split == "test" else split
        record.update(val_patients_of=str(val_model))
    if patients:
        chosen = sorted({p.strip() for p in patients.split(",") if p.strip()})
        if not chosen:
            raise WsiheatError(f"--patients: no patient ID in {patients!r}")
        split = "custom" if split == "test" else split
        record.update(split=split, patients=chosen)
    else:
        fractions = parse_fractions(split_fractions)
        sseed = split_seed
        splits = split_patients(idc_dir, fractions, sseed)
        if split not in splits:
            raise WsiheatError(f"--split: {split!r} is not one of the splits "
                               f"{', '.join(splits)} (from --split-fractions {split_fractions})")
        chosen = splits[split]
        record.update(split=split, split_seed=sseed, fractions=fractions, splits=splits)
    infos = build_mosaic_set(idc_dir, out_dir, chosen, n_slides, n_normal, seed, split=split,
                             grid=_parse_grid(grid), scale=scale, n_islands=n_islands,
                             n_tumors=n_tumors, compression=compression, quality=quality)
    from pathlib import Path as _Path
    with atomic_path(_Path(out_dir) / "split.json") as tmp:
        tmp.write_text(_json.dumps(record, indent=1), encoding="utf-8")
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
