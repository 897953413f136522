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


class UsageError(WanError):
    """The command line itself is wrong (a bad option value, conflicting options): exit code 2."""


OOM_HINT = "try --offload blocks (and --dtype fp8), a smaller --size or fewer --frames"


def debug_enabled() -> bool:
    return os.environ.get("WAN_DEBUG", "").strip() not in ("", "0", "false", "no")


def as_wan_error(exc: BaseException) -> WanError | None:
    """Known failures that are not WanErrors (out of memory, a full disk) as a message + hint; else None."""
    if isinstance(exc, WanError):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError (torch is not imported here)
        return WanError("the GPU ran out of memory", hint=OOM_HINT)
    if isinstance(exc, MemoryError):
        return WanError("the machine ran out of memory", hint=OOM_HINT)
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        where = f" writing {exc.filename}" if exc.filename else ""
        return WanError(f"no space left on the device{where}", hint="free some disk space or write elsewhere (-o)")
    return None


def report(exc: BaseException, console: Console, prefix: str = "") -> int:
    """Print ``exc`` as 'Error: …' plus its hint on stderr; return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        console.print("Aborted!")
        return EXIT_ERROR
    known = as_wan_error(exc)
    if known is not None:
        console.print(f"[bold red]Error:[/] {escape(prefix + known.message)}")
        if known.hint:
            console.print(f"[dim]hint:[/] {escape(known.hint)}")
        return EXIT_USAGE if isinstance(known, UsageError) else EXIT_ERROR
    console.print(f"[bold red]Error:[/] {escape(prefix)}unexpected {type(exc).__name__}: {escape(str(exc))}")
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
