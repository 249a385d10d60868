"""Options and parsing shared by the CLI commands (number lists, scale-out options, intervals)."""

from __future__ import annotations

import click

from wsiheat.errors import WsiheatError

# --- scale: many slides on Dask (wsiheat.scale.batch) ------------------------------
# Options shared by commands that process many slides; the commands call
# scale_requested() first and hand over to the helpers below.

def scale_options(f=None, *, shards: bool = True):
    if f is None:
        return lambda g: scale_options(g, shards=shards)
    if shards:
        f = click.option("--keep-shards", is_flag=True,
                         help="Keep the per-slide shards (OUTPUT.shards/NAME.h5) after merging.")(f)
    f = click.option("--retries", default=1, show_default=True, type=click.IntRange(min=0),
                     help="Extra attempts for a slide that fails.")(f)
    f = click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
                     help="Run the slides on this existing Dask cluster.")(f)
    f = click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Run the slides on a local Dask cluster of N processes (0: in this process).")(f)
    f = click.option("--manifest", default=None, type=click.Path(dir_okay=False),
                     help="CSV slide,ground_truth,split (paths relative to the CSV) instead of SLIDE.")(f)
    f = click.option("--split", "manifest_split", default=None, help="Only the manifest rows of this split.")(f)
    return f


def scale_requested(scale: dict, slide) -> bool:
    if scale.get("manifest") and slide:
        raise WsiheatError(f"{slide}: give either SLIDE or --manifest, not both")
    if not scale.get("manifest") and not slide:
        raise WsiheatError("no slide: give SLIDE [GROUND_TRUTH] or --manifest FILE")
    return bool(scale.get("manifest") or scale.get("workers") or scale.get("scheduler"))


def scale_tasks(scale: dict, slide, ground_truth):
    from wsiheat.scale.tasks import read_manifest, tasks_from_paths

    if scale.get("manifest"):
        return read_manifest(scale["manifest"], split=scale.get("manifest_split"))
    return tasks_from_paths([slide], [ground_truth])


def bounds_text(ci: dict | None, fmt) -> str:
    """' [low, high]' of an interval dict with ``low``/``high`` (numbers written by ``fmt``); '' for None."""
    return "" if not ci else f" [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def ci_text(ci: dict) -> str:
    """'95% CI [low, high]' of a bootstrap interval dict (bootstrap_auc_ci, bootstrap_froc_ci)."""
    return f"{ci['confidence'] * 100:g}% CI" + bounds_text(ci, lambda v: f"{v:.4f}")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class NumbersOption(click.Option):
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


def numbers_callback(kind):
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


# --- heatmap ----------------------------------------------------------------------


def parse_floats(value: str | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise WsiheatError(f"{what}: expected comma-separated numbers, got {value!r}") from None


def lesion_ground_truth_options(f):
    """RESULTS, ground truth (after RESULTS or -g), --reference, --mpp, --level: shared by froc and tune."""
    for deco in reversed([
        click.argument("results", type=click.Path()),
        click.argument("more_ground_truth", metavar="[GROUND_TRUTH]...", nargs=-1, type=click.Path()),
        click.option("--ground-truth", "-g", multiple=True, type=click.Path(),
                     help="Ground-truth file or folder (NAME_Mask.tif, NAME.xml, NAME.json, NAME.geojson). "
                          "Repeatable."),
        click.option("--reference", "-r", type=click.Path(dir_okay=False),
                     help="CSV 'slide,label': slides labeled normal need no ground-truth file."),
        click.option("--mpp", default=0.243, show_default=True, type=float,
                     help="Level-0 pixel size in µm (CAMELYON16: 0.243); margins and ITC size scale with it."),
        click.option("--level", default=5, show_default=True, type=click.IntRange(0, 10),
                     help="Evaluation-mask level (downsample 2**level). CAMELYON16: 5; use a finer one for small "
                          "or low-magnification slides (e.g. 3 for the 0.893 µm/px mosaics of 224 px cells)."),
    ]):
        f = deco(f)
    return f


def float_list(ctx, param, value: str) -> list[float]:
    """Click callback: a non-empty comma-separated list of numbers (:func:`parse_floats`)."""
    vals = parse_floats(value, f"--{param.name.replace('_', '-')}")
    if not vals:
        raise click.BadParameter(f"{value!r}: give at least one number")
    return list(vals)
def parse_grid(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(rows), int(cols)
    except ValueError:
        raise WsiheatError(f"--grid: expected ROWSxCOLS (e.g. 40x40), got {text!r}") from None
