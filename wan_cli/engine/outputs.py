"""Where results go: the checks every command makes of an output before any work, temp names, cleanup.

Every writer (``VideoWriter``, ``LatentsWriter``, ``save_latents``) writes a hidden temp file beside its target and
renames it onto the target only when complete; on any failure it deletes its temp files with the helpers here, which
never raise, so that the first error (a full disk, Ctrl-C, SIGTERM) is the one reported.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .errors import InputError


def check_output_path(path: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse an output we cannot or should not write: a directory, a missing parent, an existing file without force."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a directory", hint="give a file name, e.g. out.mp4")
    if not p.parent.is_dir():
        what = "is not a directory" if p.parent.exists() else "does not exist"
        raise InputError(f"cannot write {p}: {p.parent} {what}", hint="create the directory or choose another path")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {p.parent}: permission denied", hint="choose a directory you can write to")
    if p.exists() and not force:
        raise InputError(f"{p} already exists", hint="pass --force to overwrite it, or choose another name")
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):  # hard links and symlinks; case-insensitive file systems
            return True
    except OSError:  # one of them does not exist (yet): compare where the names lead
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return a.absolute() == b.absolute()


def check_not_input(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an output that is one of the command's inputs (``None`` entries are skipped), --force or not.

    The same file by any name: the same path after resolving symlinks and ``..``, or the same inode (a hard link)."""
    out = Path(output).expanduser()
    for source in inputs:
        if source is not None and _same_file(out, src := Path(source).expanduser()):
            raise InputError(
                f"the output {out} is the input {src}: writing it would destroy the input",
                hint="choose another output name (--force never overwrites an input)",
            )


def check_extension(path: Path, suffix: str, what: str) -> None:
    """Refuse a name whose extension is not its format's (any case: ``.MP4`` is fine)."""
    if path.suffix.lower() != suffix:
        raise InputError(f"{path} must end in {suffix} ({what})", hint=f"e.g. {path.stem or 'out'}{suffix}")


def temp_beside(target: Path) -> Path:
    """A fresh hidden name ``.NAME.XXXXXXXX.tmp`` beside the target (same filesystem, so the final rename is atomic).

    Only a name: whoever writes it creates it with the usual permissions (``mkstemp`` would make it 0600)."""
    return target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"


def remove_quietly(paths: Iterable[Path]) -> None:
    """Delete what exists of ``paths``; one that cannot be removed does not keep the others, nor hide the error."""
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (never an existing file) holding ``data``; a failed write or close raises OSError."""
    f = path.open("xb")
    try:
        f.write(data)
    except BaseException:
        close_quietly(f)
        raise
    f.close()  # ENOSPC can come here, when the last buffer is flushed


def close_quietly(f: IO[bytes]) -> None:
    """Close during cleanup: a second failure (ENOSPC again, a broken pipe) must not hide the first one."""
    with contextlib.suppress(OSError, ValueError):
        f.close()
