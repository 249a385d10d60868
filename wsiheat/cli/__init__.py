"""Command-line interface: a thin shell over the library, one module per command group.

Each command parses its options, calls the library and prints a summary. User
errors (:class:`wsiheat.errors.WsiheatError`, bad options) are printed as one
line ``wsiheat: error: ...`` with exit status 2, no traceback.
"""

from wsiheat.cli import evaluate, extract, heatmap, train, view  # noqa: F401  (registers the commands)
from wsiheat.cli.main import cli, main

__all__ = ["cli", "main"]
