"""Exceptions the engine raises for problems a user can act on.

Every one carries a one-line message and a hint (what to do next). The CLI turns them into a clean message and an
exit code; anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class WanError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class CheckpointError(WanError):
    """A weights file or folder that cannot be read, recognised or loaded."""


class InputError(WanError):
    """A tensor, size or frame count the engine cannot work with."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (``kill``, ``docker stop``, a Slurm time limit, a closed terminal). A BaseException,
    like the KeyboardInterrupt that SIGINT raises, so that ``except Exception`` does not swallow it and every
    ``finally`` on the way out still removes what was half-written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
