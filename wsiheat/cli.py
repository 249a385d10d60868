"""Command-line interface: a thin layer over the library functions.

Each subcommand parses its options, calls one library function and prints a
summary. User errors (:class:`wsiheat.errors.WsiheatError`, bad options) are
printed as one line ``wsiheat: error: ...`` with exit status 2, no traceback.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import WsiheatError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsiheat")
def cli() -> None:
    """Find breast-cancer metastases in whole-slide images (CAMELYON16 style).

    \b
    Pipeline:
      wsiheat extract slide.tif mask.tif -o patches.h5   windows at two magnifications -> HDF5
      wsiheat train patches.h5 -o model.keras            multi-tower InceptionV3
      wsiheat heatmap slide.tif -m model.keras -o heat.png
      wsiheat evaluate ...                               patch AUC, slide AUC, lesion FROC
    """


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

    from .fileio import atomic_path, check_writable_dir
    from .slide import Slide
    from .tissue import overlay_mask, tissue_mask

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


# --- import / weights / train -------------------------------------------------------


# --- heatmap ----------------------------------------------------------------------


# --- evaluate ---------------------------------------------------------------------


# --- mosaic / demo ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn user errors into one line."""
    try:
        rv = cli.main(args=argv, prog_name="wsiheat", standalone_mode=False)
    except WsiheatError as exc:
        click.echo(f"wsiheat: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsUsage as exc:  # bare subcommand group: show help
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.ClickException as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        click.echo(f"wsiheat: error: {where}{exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
