"""Where output goes: results on stdout (a path, or one JSON object per line), everything else on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# Progress, logs, warnings and hints: stderr, so that `wan … | while read -r f` only sees results.
stderr = Console(stderr=True, highlight=False)


def emit_json(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
