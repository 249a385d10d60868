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


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class _NumbersOption(click.Option):
    """An option taking one or more numbers: ``--levels 2 3`` (or ``--levels 2,3``).

    Following arguments are consumed while they parse as numbers, so a slide
    path after the option is left alone.
    """

    def add_to_parser(self, parser, ctx):
        retval = super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            previous = opt.process

            def process(value, state, previous=previous):
                values = [value]
                while state.rargs and _is_number(state.rargs[0]):
                    values.append(state.rargs.pop(0))
                previous(" ".join(values), state)

            opt.process = process
        return retval


def _numbers(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v for v in str(value).replace(",", " ").split() if v]
        try:
            out = tuple(kind(v) for v in items)
        except ValueError:
            raise click.BadParameter(f"expected {kind.__name__} values, got {value!r}") from None
        if not out:
            raise click.BadParameter("give at least one value")
        return out
    return convert


@cli.command()
@click.argument("slide", type=click.Path(path_type=str))
@click.argument("ground_truth", required=False, type=click.Path(path_type=str))
@click.option("-o", "--output", default="patches.h5", show_default=True,
              help="HDF5 patches file to create or append to.")
@click.option("--levels", cls=_NumbersOption, callback=_numbers(int), metavar="L1 [L2 ...]",
              help="Pyramid level of each tower, finest first (default: 2 3).")
@click.option("--downsamples", cls=_NumbersOption, callback=_numbers(float), metavar="D1 [D2 ...]",
              help="Downsample of each tower relative to level 0 (instead of --levels).")
@click.option("--mpp", cls=_NumbersOption, callback=_numbers(float), metavar="M1 [M2 ...]",
              help="µm/px of each tower (instead of --levels; needs slide metadata).")
@click.option("--window", default=80, show_default=True, type=click.IntRange(min=1), help="Window side W (px).")
@click.option("--center", default=50, show_default=True, type=click.IntRange(min=1),
              help="Labelled centre side C (tower-0 px): tumor if any tumor pixel inside.")
@click.option("--stride", default=50, show_default=True, type=click.IntRange(min=1), help="Grid step S (tower-0 px).")
@click.option("--tissue-threshold", default=0.75, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum tissue fraction of a normal window.")
@click.option("--normal-ratio", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Normal windows per tumor window on tumor slides.")
@click.option("--max-normal", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Most normal windows kept on a slide without tumor (0: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random draws.")
@click.option("--replace", is_flag=True, help="Re-extract a slide already in the output file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def extract(slide, ground_truth, output, levels, downsamples, mpp, window, center, stride, tissue_threshold,
            normal_ratio, max_normal, seed, replace, quiet):
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
    from .extract import extract_to_file, summary_line

    stats = extract_to_file(slide, ground_truth, output, levels=levels, downsamples=downsamples, mpps=mpp,
                            window=window, center=center, stride=stride, tissue_threshold=tissue_threshold,
                            normal_ratio=normal_ratio, max_normal=max_normal or None, seed=seed,
                            replace=replace, progress=not quiet)
    click.echo(summary_line(stats))


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
