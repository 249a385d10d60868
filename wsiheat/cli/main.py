"""Command-line interface: a thin layer over the library functions.

Each subcommand parses its options, calls one library function and prints a
summary. User errors (:class:`wsiheat.errors.WsiheatError`, bad options) are
printed as one line ``wsiheat: error: ...`` with exit status 2, no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from wsiheat import __version__
from wsiheat.cli.options import bounds_text
from wsiheat.errors import WsiheatError


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


# --- mosaic / demo ----------------------------------------------------------------


@cli.command("demo")
@click.argument("data_dir", default="data", type=click.Path(path_type=str))
@click.option("-o", "--out", "out_dir", default="demo-out", show_default=True, type=click.Path(path_type=str),
              help="Output folder (HDF5, model, heatmaps, overlays, lesion CSVs, reports, plots).")
@click.option("--quick", is_flag=True, help="Reduced run for tests: tiny backbone, a few training steps.")
@click.option("--weights", default="auto", show_default=True, type=click.Choice(["auto", "imagenet", "none"]),
              help="auto: ImageNet weights when cached (`wsiheat weights`), else random init, said clearly.")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: 6; 1 with --quick].")
@click.option("--steps-per-epoch", type=int, default=None, help="Training steps per epoch [default: 40; 3 with --quick].")
@click.option("--seed", default=0, show_default=True, type=int)
def demo_cmd(data_dir: str, out_dir: str, quick: bool, weights: str, epochs: int | None,
             steps_per_epoch: int | None, seed: int) -> None:
    """Run extract -> train -> heatmap -> evaluate on the embedded data in DATA_DIR.

    \b
    DATA_DIR (default: data) holds mosaics/train, mosaics/test (slides of real
    IDC tissue with exact tumor masks) and slides/ (a real slide). Everything
    is written into --out; the overlay images and the reports are listed at
    the end. About 5-8 minutes on a 2-core CPU.
    """
    from wsiheat.demo import run_demo

    def say(line: str) -> None:
        if line.startswith("== "):
            click.secho(f"\n{line}", bold=True)
        else:
            click.echo(line)

    s = run_demo(data_dir, out_dir, quick=quick, weights=weights, epochs=epochs,
                 steps_per_epoch=steps_per_epoch, seed=seed, say=say)

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    click.secho(f"\nDone in {s['seconds']:.0f} s. Weights: {s['weights']}", bold=True)
    def ci(c):
        return bounds_text(c, f)

    pci = s.get("patch_ci") or {}
    click.echo(f"Patch AUC {f(s['patch_auc'])}{ci(pci.get('auc'))} (balanced accuracy "
               f"{f(s['patch_balanced_accuracy'])}{ci(pci.get('balanced_accuracy'))}), "
               f"slide AUC {f(s['slide_auc'])}{ci(s.get('slide_auc_ci'))}, lesion FROC {f(s['froc'])}"
               f"{ci(s.get('froc_ci'))} over {s.get('test_slides', '?')} test slides (95 % bootstrap intervals "
               f"over slides: a few slides say little)")
    click.echo("Overlays (heatmap over the slide):")
    for p in s["overlays"]:
        click.echo(f"  {p}")
    click.echo("Lesion candidates in context: NAME_lesions.png beside each overlay")
    click.echo(f"Reports: {s['reports']}/  (patches/, slides/, froc/: JSON, ROC/FROC plots, tables;"
               f" patches/patch_errors.png shows the most confident mistakes)")
    click.echo(f"Summary: {Path(out_dir) / 'demo_summary.json'}")


#: Subcommands that load TensorFlow.
TF_COMMANDS = {"train", "heatmap", "evaluate", "weights", "demo"}


def _import_tensorflow_for(command: str) -> None:
    """Import TensorFlow quietly before a TF command runs.

    ``train`` with a multi-worker TF_CONFIG must not run any TensorFlow op
    before its MultiWorkerMirroredStrategy exists (collectives are configured
    at start-up); ``train`` creates the strategy itself after checking inputs.
    """
    from wsiheat.models.model import import_tensorflow_quietly
    from wsiheat.training.distribute import tf_config_workers

    try:
        multi = command == "train" and tf_config_workers() > 0
    except WsiheatError:
        multi = False  # reported by the command itself
    import_tensorflow_quietly(run_op=not multi)


class _EchoHandler(logging.Handler):
    """The library's log lines on the console: INFO as they are, WARNING with ``wsiheat: warning:``."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        click.echo(msg if record.levelno < logging.WARNING else f"wsiheat: warning: {msg}", err=True)


def _show_library_log() -> None:
    logger = logging.getLogger("wsiheat")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn user errors into one line."""
    args = sys.argv[1:] if argv is None else list(argv)
    # Quieten TensorFlow's C++ log lines (oneDNN/CUDA notes) on the console; Python
    # exceptions are unaffected. Users can override by setting the variable themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _show_library_log()
    try:
        if any(a in TF_COMMANDS for a in args[:1]) and not any(a in ("-h", "--help") for a in args):
            _import_tensorflow_for(args[0])
        rv = cli.main(args=args, prog_name="wsiheat", standalone_mode=False)
    except WsiheatError as exc:
        click.echo(f"wsiheat: error: {exc}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        from wsiheat.fileio import result_committed

        done = result_committed()
        if done:  # the interrupt came after the commit point: the work is complete
            click.echo(f"wsiheat: interrupted after the commit point; completed: {', '.join(done)} "
                       f"written in full", err=True)
            sys.exit(0)
        click.echo("wsiheat: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `wsiheat` or group: show help
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        click.echo(f"wsiheat: error: {where}{exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
