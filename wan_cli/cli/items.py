"""Batch items: the single prompt, the lines of a ``--prompts`` file (plain or JSONL), or a prompt piped on stdin.

A file is JSONL when it is named ``*.jsonl`` or its first prompt line starts with ``{``: then every line (but blank
lines and ``#`` comments) must be a JSON object, and one that is not is an error for that item, never a prompt. In a
plain file every line is a prompt (a line starting with ``{`` is read as a JSON object, so both kinds mix). A UTF-8
byte-order mark is ignored. A bad line, or a prompt no text encoder can take (a lone UTF-16 surrogate from a JSON
escape), is an error carried in :attr:`Item.error`: reported in order with its line number, and the batch goes on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import InputError, WanError
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

    def __post_init__(self) -> None:
        # every way in (argument, stdin, file) passes here, so a prompt that would crash the sidecar after the
        # generation fails at planning instead
        if self.error is None:
            self.error = text_error(self.prompt, "the prompt", self.where)


def text_error(text: str, what: str, where: str) -> InputError | None:
    """An error for a string holding a lone surrogate (U+D800…U+DFFF: JSON's "\\ud800", or undecodable bytes
    passed through by Python's surrogateescape), which cannot be written as UTF-8; else None."""
    at = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if at is None:
        return None
    message = f"{what} holds a lone surrogate (U+{ord(text[at]):04X} at character {at + 1}), which is not text"
    hint = "a JSON escape such as \\ud83d needs its pair (\\ud83d\\ude00); fix or remove it"
    return InputError(f"{where}: {message}" if where else message, hint=hint)


_ITEM_FILES = ("image", "last_frame", "output", "save_latents")
_NOT_PER_ITEM = ("device", "dtype", "task", "description")


def item_from_json(obj: object, index: int, where: str) -> Item:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a JSONL line must be an object", hint='e.g. {"prompt": "a cat", "seed": 1}')
    data = dict(obj)
    for key, value in data.items():
        for text in value if isinstance(value, list) else [value]:
            error = text_error(text, repr(key), where) if isinstance(text, str) else None
            if error is not None:
                raise error
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


def _not_an_object(where: str) -> InputError:
    return InputError(f"{where} is not a JSON object (this file is JSONL: one object per line)",
                      hint='write it as {"prompt": "…"}, or put plain prompts in a .txt file')  # fmt: skip


def parse_prompts(text: str, source: str, jsonl: bool = False) -> list[Item]:
    """The items of a prompts file; ``jsonl`` (a ``*.jsonl`` name): every line must be a JSON object, as it must
    when the first prompt line is one."""
    items: list[Item] = []
    text = text.removeprefix("\ufeff")  # a BOM (Windows editors) is not part of the first line
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        index, where = len(items) + 1, f"{source} line {n}"
        if not items and line.startswith("{"):
            jsonl = True
        if not line.startswith("{"):
            items.append(Item(index, where, "", error=_not_an_object(where)) if jsonl else Item(index, where, line))
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


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # what PowerShell's `>` writes


def read_prompts_file(spec: str) -> list[Item]:
    if spec == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise InputError(f"stdin is not UTF-8 text ({exc.reason} at byte {exc.start})",
                             hint="pipe UTF-8 text or JSONL") from None  # fmt: skip
        return parse_prompts(text, "stdin")
    path = Path(spec).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"prompts file {path} {what}", hint="pass a text or JSONL file, or - for stdin")
    try:
        data = path.read_bytes()
        if data.startswith(_UTF16_BOMS):
            raise InputError(f"prompts file {path} is UTF-16 text", hint="save it as UTF-8")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompts file {path}: {exc}", hint="pass a UTF-8 text or JSONL file") from None
    return parse_prompts(text, path.name, jsonl=path.suffix.lower() == ".jsonl")


def stdin_prompt(example: str) -> str:
    """A prompt piped on stdin (`echo "a cat" | wan t2v`); with a terminal on stdin, a usage error, not a hang."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no prompt given", hint=f"e.g. {example}")
    return sys.stdin.read().strip()
