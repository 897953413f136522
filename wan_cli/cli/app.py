"""The Typer application behind the `wan` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from .errors import run_guarded
from .output import emit_json, emit_line, stderr

app = typer.Typer(
    name="wan",
    help="Run the Wan 2.1 video models from the terminal.\n\nExamples:\n\n"
    "  wan inspect ~/models/wan2.1_t2v_1.3B_bf16.safetensors\n\n"
    "  wan inspect Wan2.1-T2V-14B/ --json",
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


@app.command()
def inspect(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="A weights file, a model folder or a Diffusers pipeline folder.")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a summary.")] = False,
) -> None:
    """Tell what a checkpoint holds (DiT / VAE / …), its layout, variant and dtypes, without loading it.

    Example: wan inspect wan2.1_t2v_1.3B_fp8_e4m3fn.safetensors
    """
    from ..engine import inspect_checkpoint  # torch is imported lazily: `wan --help` stays fast

    info = run_guarded(lambda: inspect_checkpoint(path), stderr)
    if json_out:
        emit_json(info.to_dict())
        return
    dtypes = ", ".join(f"{k} ×{v}" for k, v in sorted(info.dtypes.items()))
    emit_line(f"{info.path}: {info.kind} ({info.layout or 'unknown layout'})")
    if info.variant:
        emit_line(f"  variant       {info.variant}")
    emit_line(f"  tensors       {info.tensors} ({info.parameters:,} parameters)")
    emit_line(f"  dtypes        {dtypes}")
    emit_line(f"  quantization  {info.quantization}")
    emit_line(f"  files         {len(info.files)}")


# -- command modules: one module per command group; each function below is one `wan` command -------------------
# (imported after `app` exists; the modules import nothing from this file)
# [download/models: wan_cli/cli/models.py]
from . import models as _models  # noqa: E402

app.command("download")(_models.download)
app.command("models")(_models.models)

from . import generate as _generate  # noqa: E402
from . import info as _info  # noqa: E402
from . import vae as _vae  # noqa: E402

app.command("t2v")(_generate.t2v)
app.command("i2v")(_generate.i2v)
app.command("encode")(_vae.encode)
app.command("decode")(_vae.decode)
app.add_typer(_info.presets_app, name="presets")
app.command("env")(_info.env)


def main() -> None:
    from ..engine.memory import tune_host_allocator

    tune_host_allocator()  # streaming loops keep a flat RSS (see engine/memory.py)
    app()
