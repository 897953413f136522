"""Turning exceptions into one clear message, a hint and an exit code (no traceback unless WAN_DEBUG=1)."""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from ..engine import Interrupted, WanError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SIGNAL = 128  # + the signal number: 130 SIGINT, 143 SIGTERM, 129 SIGHUP (the shell's convention)
T = TypeVar("T")


class UsageError(WanError):
    """The command line itself is wrong (a bad option value, conflicting options): exit code 2."""


OOM_HINT = "try --offload blocks (and --dtype fp8), a smaller --size or fewer --frames"


def debug_enabled() -> bool:
    return os.environ.get("WAN_DEBUG", "").strip() not in ("", "0", "false", "no")


# torch's CPU allocator reports a failed allocation as a RuntimeError with one of these
_CPU_OOM = ("can't allocate memory", "DefaultCPUAllocator: not enough memory", "you tried to allocate")
# File-system errors a user can act on: errno → (what happened, what to do)
_FS_ERRORS = {
    errno.ENAMETOOLONG: ("the file name is too long for the file system", "choose a shorter output name (-o)"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path (and HF_HOME / WAN_CLI_HOME)"),
    errno.EISDIR: ("the path is a folder", "give a file name"),
    errno.EACCES: ("permission denied", "choose a path you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a path you can write to, or fix its permissions"),
    errno.EROFS: ("the file system is read-only", "write somewhere else"),
    errno.EEXIST: ("a file is in the way", "check the path (a file where a folder should be?)"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or run fewer jobs at once"),
}


def as_wan_error(exc: BaseException) -> WanError | None:
    """Known failures that are not WanErrors (out of memory, a full disk, file-system errors) as a message + hint;
    else None (a bug: reported as one)."""
    if isinstance(exc, WanError):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError (torch is not imported here)
        return WanError("the GPU ran out of memory", hint=OOM_HINT)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _CPU_OOM)):
        return WanError("the machine ran out of memory", hint=OOM_HINT)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return WanError(f"no space left on the device{where}", hint="free some disk space or write elsewhere (-o)")
    if isinstance(exc, OSError) and exc.errno in _FS_ERRORS:
        what, hint = _FS_ERRORS[exc.errno]
        where = f": {exc.filename}" if exc.filename else ""
        return WanError(f"{what}{where}", hint=hint)
    return None


def exit_code_of_signal(exc: BaseException) -> int:
    return EXIT_SIGNAL + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` (SIGINT already raises KeyboardInterrupt), so the writers'
    cleanup runs and the exit code says which signal it was; the previous handlers come back afterwards."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with suppress(ValueError):  # not the main thread (a test runner's worker): leave the handlers alone
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(exc: BaseException, console: Console, prefix: str = "") -> int:
    """Print ``exc`` as 'Error: …' plus its hint on stderr; return the exit code."""
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        console.print("[bold red]Error:[/] interrupted")
        return exit_code_of_signal(exc)
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
    """Call ``fn`` (SIGTERM/SIGHUP turned into :class:`Interrupted`); on failure print the message (or the
    traceback with WAN_DEBUG=1) and exit with its code."""
    try:
        with signals_interrupt():
            return fn()
    except (Exception, KeyboardInterrupt, Interrupted) as exc:
        if debug_enabled():
            raise
        code = report(exc, console)
        sys.exit(code)
