"""`wan download` and `wan models`: thin commands over ``wan_cli.hub`` and ``wan_cli.registry``."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated, Any

import typer

from .. import registry
from ..engine import InputError
from .errors import UsageError, run_guarded
from .output import emit_json, emit_line, stderr


class SourceName(str, Enum):
    comfy = "comfy"
    official = "official"
    diffusers = "diffusers"


class PrecisionName(str, Enum):
    bf16 = "bf16"
    fp8 = "fp8"


def _check_request(name: str, source: str, precision: str) -> registry.ModelSpec:
    """Unknown names and unpublished precisions are usage errors (exit 2), caught before any network."""
    try:
        model = registry.get(name)
        model.check(source, precision)
    except InputError as exc:
        raise UsageError(exc.message, hint=exc.hint) from exc
    return model


def download(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A model from `wan models` (e.g. 1.3b-t2v), an alias or a repo id.")
    ],
    precision: Annotated[
        PrecisionName,
        typer.Option("--precision", help="Weights precision: bf16, or fp8 (14B models, comfy source only)."),
    ] = PrecisionName.bf16,
    source: Annotated[
        SourceName,
        typer.Option(
            "--source",
            help="comfy: single files from the ComfyUI repack; official: the Wan-AI repo; "
            "diffusers: the -Diffusers repo.",
        ),
    ] = SourceName.comfy,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the paths.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the paths on stdout; nothing on stderr.")] = False,
) -> None:
    """Download a model into the Hugging Face cache, verify it, and print the paths of its files.

    Files go to the huggingface_hub cache (HF_HOME / HF_HUB_CACHE); HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE
    apply. Free disk space is checked before the first byte; an interrupted file is fetched again on the next run;
    every file fetched is checked against the hash the hub reports.

    Examples:

      wan download 1.3b-t2v

      wan download 14b-i2v-480p --precision fp8

      wan download 1.3b-t2v --source diffusers --json
    """
    from .. import hub  # huggingface_hub is imported only when a command needs it

    def run() -> Any:
        if json_out and quiet:
            raise UsageError("--json and --quiet cannot be used together", hint="pick one")
        _check_request(name, source.value, precision.value)
        log = None if (quiet or json_out) else (lambda msg: stderr.print(msg, markup=False))
        progress = not (quiet or json_out) and sys.stderr.isatty()
        return hub.download(name, source=source.value, precision=precision.value, progress=progress, log=log)

    result = run_guarded(run, stderr)
    if json_out:
        emit_json(result.to_dict())
        return
    for path in dict.fromkeys(result.model.components.values()):
        emit_line(str(path))


def _size(model: registry.ModelSpec, precision: str) -> str:
    size = model.download_size(registry.DEFAULT_SOURCE, precision)
    if size is None:
        return "-"
    from ..hub import human_bytes

    return ("~" if model.size_is_approx(registry.DEFAULT_SOURCE, precision) else "") + human_bytes(size)


def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List the models wan can download: task, default preset, download size per precision, and where each one
    is installed.

    Sizes are for the default source (comfy); "~" marks rounded ones. INSTALLED lists the copies in the
    Hugging Face cache (source/precision); PATH is the copy wan uses when given NAME.

    Examples:

      wan models

      wan models --json | jq -r '.[] | select(.installed | length > 0) | .name'
    """
    from .. import hub

    def collect() -> list[dict[str, Any]]:
        rows = []
        for model in registry.MODELS.values():
            copies = hub.installed(model)
            rows.append(
                {
                    "name": model.name,
                    "task": model.task,
                    "preset": model.preset,
                    "description": model.description,
                    "sizes": [f"{w}x{h}" for w, h in model.sizes],
                    "repo": model.repo,
                    "diffusers_repo": model.diffusers_repo,
                    "source": registry.DEFAULT_SOURCE,
                    "download_bytes": {p: model.download_size(registry.DEFAULT_SOURCE, p) for p in registry.PRECISIONS},
                    "installed": [c.to_dict() for c in copies],
                    "path": str(copies[0].root or copies[0].dit) if copies else None,
                }
            )
        return rows

    rows = run_guarded(collect, stderr)
    if json_out:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    table = [["NAME", "TASK", "PRESET", "BF16", "FP8", "INSTALLED", "PATH"]]
    for row in rows:
        model = registry.MODELS[row["name"]]
        where = ",".join(f"{c['source']}/{c['precision']}" for c in row["installed"]) or "no"
        table.append(
            [
                row["name"],
                row["task"],
                row["preset"],
                _size(model, "bf16"),
                _size(model, "fp8"),
                where,
                row["path"] or "",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        emit_line("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
