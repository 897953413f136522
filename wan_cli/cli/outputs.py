"""Where a command's files go, checked before anything runs, and written all together or not at all.

- ``target``: an output name from ``-o`` (a file, a folder, or a template with {index} {seed} {slug} {task}).
- ``check_writable``: no clobbering without --force, a folder that can hold the files — without creating anything
  (folders are created only for a run that writes).
- ``check_not_inputs``: no command writes over one of its own inputs (same path, symlink or hard link), --force or not.
- :class:`Outputs`: one item's files (MP4, sidecar, latents) are written under hidden staging names and renamed into
  place together at the end, signals held off for those few renames; on any failure or signal the staged files and
  the folders the run created are removed, and files a --force run would replace are still there.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from ..engine import InputError
from .errors import UsageError

_HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def target(template: str | None, default_name: str, fields: dict[str, object], suffix: str, flag: str) -> Path:
    """The path ``template`` names: ``default_name`` when None or a folder; placeholders filled; ``suffix`` added
    when it has none, and a usage error when it has another."""
    if template is None:
        return Path(default_name)
    text = template
    if "{" in template:
        try:
            text = template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"bad placeholder in {flag} {template!r} ({exc})",
                             hint="use {index}, {seed}, {slug} or {task}") from None  # fmt: skip
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / default_name
    if path.suffix == "":
        return path.with_suffix(suffix)
    if path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {template!r} must end in {suffix}", hint=f"e.g. {path.with_suffix(suffix).name}")
    return path


def batch_folder(output: str | None) -> Path:
    """The folder a batch writes into: ``-o``'s folder (or its template's fixed part), else the current one."""
    if output is None:
        return Path(".")
    fixed = output.split("{", 1)[0]
    if "{" in output or not (output.endswith(("/", os.sep)) or Path(output).expanduser().is_dir()):
        fixed = os.path.dirname(fixed)
    return Path(fixed or ".").expanduser()


def inside(folder: Path, name: str, where: str) -> str:
    """A JSONL item's own output name, kept inside the batch's folder: no absolute path, no `..`."""
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith("~") or ".." in parts:
        raise InputError(f"{where}: output {name!r} leaves the output folder {folder}",
                         hint="give a name relative to the -o folder, without '..'")  # fmt: skip
    return str(folder / name)


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def check_writable(paths: Iterable[Path], force: bool) -> None:
    """Refuse to clobber (without --force) and fail early on a place that cannot hold the files; creates nothing."""
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path} is a folder", hint="give a file name")
        if path.exists() and not force:
            raise InputError(f"{path} already exists", hint="pass --force to overwrite it, or choose another -o")
        base = _existing_ancestor(path)
        if not base.is_dir():
            raise InputError(
                f"cannot create the folder {path.parent}: {base} is a file", hint="choose another output path"
            )
        if not os.access(base, os.W_OK | os.X_OK):
            raise InputError(f"the folder {base} is not writable", hint="choose an output path in a writable folder")
        if len(path.name.encode()) > 255 - 24:  # room for the hidden staging and temp names around it
            raise InputError(f"the file name {path.name[:40]}… is too long ({len(path.name.encode())} bytes)",
                             hint="choose a shorter name with -o")  # fmt: skip


def check_not_inputs(outputs: Iterable[Path], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """No output may be one of the run's input files (same path, symlink or hard link), with or without --force."""
    from ..engine import check_not_input

    files = [i for i in inputs if i is not None and str(i) not in ("", "-") and not Path(i).expanduser().is_dir()]
    for out in outputs:
        check_not_input(out, files)


class Outputs:
    """One item's output files, written under hidden staging names and renamed into place together.

    ``with Outputs([mp4, sidecar, latents], force) as out:`` creates the missing folders; ``out.staged(path)`` is where
    a writer writes ``path``; ``out.commit()`` renames them all into place (the last one given first, so the MP4,
    given first, lands last). Leaving the block by an exception or a signal before ``commit`` removes the staged
    files and the folders it created; existing files are untouched until ``commit``.
    """

    def __init__(self, finals: list[Path], force: bool) -> None:
        self.finals = finals
        self.force = force
        self._made: list[Path] = []
        self._committed = False

    def staged(self, final: Path) -> Path:
        return final.with_name(f".{final.stem}.wan-{os.getpid()}{final.suffix}")

    def __enter__(self) -> Outputs:
        for final in self.finals:
            missing = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
            for folder in reversed(missing):  # outermost first
                folder.mkdir(exist_ok=True)
                self._made.append(folder)
        return self

    def commit(self) -> None:
        """Rename every staged file into place, with SIGINT/SIGTERM/SIGHUP held until all are there."""
        for final in self.finals:
            if not self.staged(final).exists():
                raise InputError(f"internal: {final} was not written")
            if final.exists() and not self.force:
                raise InputError(f"{final} appeared while this run was writing it",
                                 hint="pass --force to overwrite it, or choose another -o")  # fmt: skip
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            for final in reversed(self.finals):
                os.replace(self.staged(final), final)
            self._committed = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._committed:
            return
        for final in self.finals:
            self.staged(final).unlink(missing_ok=True)
        for folder in reversed(self._made):  # innermost first; only if nothing else was put there meanwhile
            try:
                folder.rmdir()
            except OSError:
                break
