"""Turning exceptions into one clear message, a hint and an exit code (no traceback unless WAN_DEBUG=1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from ..engine.errors import WanError

EXIT_ERROR = 1
EXIT_USAGE = 2
T = TypeVar("T")


def debug_enabled() -> bool:
    return os.environ.get("WAN_DEBUG", "").strip() not in ("", "0", "false", "no")


def report(exc: BaseException, console: Console) -> int:
    """Print ``exc`` as 'Error: …' plus its hint on stderr; return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        console.print("Aborted!")
        return EXIT_ERROR
    if isinstance(exc, WanError):
        console.print(f"[bold red]Error:[/] {escape(exc.message)}")
        if exc.hint:
            console.print(f"[dim]hint:[/] {escape(exc.hint)}")
        return EXIT_ERROR
    if isinstance(exc, MemoryError):
        console.print("[bold red]Error:[/] out of memory")
        console.print("[dim]hint:[/] try a smaller size or fewer frames")
        return EXIT_ERROR
    console.print(f"[bold red]Error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}")
    console.print("[dim]hint:[/] this is a bug in wan; rerun with WAN_DEBUG=1 and report the traceback")
    return EXIT_ERROR


def run_guarded(fn: Callable[[], T], console: Console) -> T:
    """Call ``fn``; on failure print the message (or the traceback with WAN_DEBUG=1) and exit."""
    try:
        return fn()
    except (Exception, KeyboardInterrupt) as exc:
        if debug_enabled():
            raise
        code = report(exc, console)
        sys.exit(code)
