"""The Typer application behind the `wan` command: one module per command group, registered here in the order
`wan --help` lists them."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from .. import __version__
from . import bench, generate, info, models, vae
from .errors import EXIT_SIGNAL
from .output import PlainUsage, emit_line

app = typer.Typer(
    name="wan",
    help="Run the Wan 2.1 video models from the terminal.\n\nExamples:\n\n"
    "  wan download 1.3b-t2v\n\n"
    '  wan t2v "a corgi running on a beach at sunset" -o corgi.mp4\n\n'
    '  wan i2v cat.png --prompt "the cat yawns" -o cat.mp4\n\n'
    '  wan t2v --prompts prompts.txt -o out/ -q | while read -r f; do echo "$f"; done\n\n'
    "Results (paths, or JSON with --json) go to stdout; progress, notes and errors to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        emit_line(f"wan {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Run the Wan 2.1 video models from the terminal."""


app.command("t2v", cls=PlainUsage)(generate.t2v)
app.command("i2v", cls=PlainUsage)(generate.i2v)
app.command("encode", cls=PlainUsage)(vae.encode)
app.command("decode", cls=PlainUsage)(vae.decode)
app.command("download", cls=PlainUsage)(models.download)
app.command("models", cls=PlainUsage)(models.models)
app.add_typer(info.presets_app, name="presets")
app.command("inspect", cls=PlainUsage)(info.inspect)
app.command("bench", cls=PlainUsage)(bench.bench)
app.command("env", cls=PlainUsage)(info.env)


def main() -> None:
    try:
        app()  # nothing is imported or tuned before parsing: `wan --help` imports no torch
    except SystemExit as exc:
        if exc.code in (EXIT_SIGNAL + signal.SIGINT, EXIT_SIGNAL + signal.SIGTERM, EXIT_SIGNAL + signal.SIGHUP):
            # Interrupted and cleaned up. Exit with exactly that code: a KeyboardInterrupt that passed through C code
            # (an import, a library's PyRun call) leaves CPython set to re-kill itself with SIGINT at exit (-2).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(exc.code))
        raise
