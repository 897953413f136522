"""Where output goes: results on stdout (a path, or one JSON object per line), everything else on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from typer.core import TyperCommand

# Progress, logs, warnings and hints: stderr, so that `wan … | while read -r f` only sees results. Not hard-wrapped:
# a terminal wraps long lines itself, and a log file or a pipe gets each message on one line.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def show_engine_log() -> None:
    """``-v``: the engine's log (loads, moves, releases, memory-mode and backend decisions) on stderr."""
    import logging

    log = logging.getLogger("wan_cli")
    if not any(getattr(h, "wan_verbose", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler.wan_verbose = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def emit_json(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Progress:
    """Phase-by-phase progress on stderr (a spinner, then a bar with ETA for steps and frames).

    Off when stderr is not a terminal or in --json / --quiet mode: then every method is a no-op."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._phase = ""

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=stderr, transient=True,
            )  # fmt: skip
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def phase(self, description: str, total: int | None = None) -> None:
        """Start a phase (the previous one is finished); ``total=None`` shows a spinner."""
        self._phase = description
        if self._bar is None:
            return
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def clear(self) -> None:
        """Remove the finished phase's bar (before a result line is printed)."""
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
        self._task, self._phase = None, ""

    def update(self, phase: str, done: int, total: int) -> None:
        """The engine's callback: (phase, done, total); a new phase name starts a new bar."""
        if self._bar is None:
            return
        if phase != self._phase:
            self.phase(phase, total)
        self._bar.update(self._task, completed=done, total=total)


class PlainUsage(TyperCommand):
    """Usage lines as every other tool writes them: ``wan encode [OPTIONS] VIDEO``, not Typer 0.29's ``{VIDEO}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]
