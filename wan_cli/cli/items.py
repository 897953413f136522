"""Batch items: the single prompt, the lines of a ``--prompts`` file (plain or JSONL), or a prompt piped on stdin."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.errors import InputError, WanError
from ..presets import Values, values_from
from .errors import UsageError


@dataclass
class Item:
    index: int
    where: str  # "" for a single run; "prompts.jsonl line 3" in a batch
    prompt: str
    image: str | None = None
    last_frame: str | None = None
    output: str | None = None
    save_latents: str | None = None
    values: Values = field(default_factory=Values)
    error: WanError | None = None  # a line that could not be parsed: reported in order, counted as a failure


_ITEM_FILES = ("image", "last_frame", "output", "save_latents")
_NOT_PER_ITEM = ("device", "dtype", "task", "description")


def item_from_json(obj: object, index: int, where: str) -> Item:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a JSONL line must be an object", hint='e.g. {"prompt": "a cat", "seed": 1}')
    data = dict(obj)
    if "last_image" in data:
        data["last_frame"] = data.pop("last_image")
    prompt = data.pop("prompt", None)
    if not isinstance(prompt, str):
        raise InputError(f'{where}: no "prompt" string', hint='each object needs "prompt": "…"')
    files: dict[str, str | None] = {}
    for key in _ITEM_FILES:
        value = data.pop(key, None)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: {key!r} must be a string path", hint=f'e.g. "{key}": "path"')
        files[key] = value
    for key in _NOT_PER_ITEM:
        if key in data:
            raise InputError(f"{where}: {key!r} cannot change per item", hint="pass it once on the command line")
    return Item(index, where, prompt, files["image"], files["last_frame"], files["output"], files["save_latents"],
                values=values_from(data, where))  # fmt: skip


def parse_prompts(text: str, source: str) -> list[Item]:
    items: list[Item] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        index, where = len(items) + 1, f"{source} line {n}"
        if not line.startswith("{"):
            items.append(Item(index, where, line))
            continue
        try:
            items.append(item_from_json(json.loads(line), index, where))
        except json.JSONDecodeError as exc:
            error = InputError(f"{where} is not valid JSON: {exc.msg} (column {exc.colno})",
                               hint='one object per line, e.g. {"prompt": "a cat", "seed": 1}')  # fmt: skip
            items.append(Item(index, where, "", error=error))
        except WanError as exc:
            items.append(Item(index, where, "", error=exc))
    if not items:
        raise InputError(f"{source} holds no prompts", hint="one prompt per line, or one JSON object per line")
    return items


def read_prompts_file(spec: str) -> list[Item]:
    if spec == "-":
        return parse_prompts(sys.stdin.read(), "stdin")
    path = Path(spec).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"prompts file {path} {what}", hint="pass a text or JSONL file, or - for stdin")
    try:
        return parse_prompts(path.read_text(encoding="utf-8"), path.name)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompts file {path}: {exc}", hint="pass a UTF-8 text or JSONL file") from None


def stdin_prompt(example: str) -> str:
    """A prompt piped on stdin (`echo "a cat" | wan t2v`); with a terminal on stdin, a usage error, not a hang."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no prompt given", hint=f"e.g. {example}")
    return sys.stdin.read().strip()
