"""Errors that end a command with a one-line message and exit code 2.

Every failure a user can cause (bad target, bad inputs, a model that raises)
is turned into a ``GradprobeError`` whose message names the problem and the
fix; the CLI prints it without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

from typing import Literal

# Where a run failed, for callers that decide on it (compare-modes retries a row without its backward when
# the backward raised) instead of reading the message text.
Phase = Literal["forward", "output", "loss", "backward"]

DEBUG_HINT = " (run with --debug for the traceback)"


class GradprobeError(Exception):
    """A user-facing failure: the message is one line naming the problem and the fix.

    ``str(exc)`` is the line the CLI prints. ``message`` is that line without the ``--debug`` advice, for
    reports that show the error inside a table (compare-modes rows); ``phase`` says which part of a run
    raised (``None`` outside a run or when unknown).
    """

    kind = "error"

    def __init__(self, message: str, *, phase: Phase | None = None, debug_hint: bool = False,
                 module: tuple[str, str] | None = None) -> None:
        self.message = " ".join(message.split())
        self.phase: Phase | None = phase
        self.debug_hint = debug_hint
        # (qualified name, class name) of the module call a forward raised in, as the run saw the model: a
        # wrapper (DDP, FSDP) adds its own segments to names and classes, which the distributed run maps back
        self.module = module
        super().__init__(self.message + (DEBUG_HINT if debug_hint else ""))

    def __reduce__(self) -> tuple[object, ...]:  # keep phase and hint through pickling (rank-to-rank errors)
        return _rebuild, (type(self), self.message, self.phase, self.debug_hint)


def _rebuild(cls: type[GradprobeError], message: str, phase: Phase | None, debug_hint: bool) -> GradprobeError:
    exc = cls.__new__(cls)
    GradprobeError.__init__(exc, message, phase=phase, debug_hint=debug_hint)
    return exc


class UsageError(GradprobeError):
    """An option value that cannot be used."""

    kind = "usage error"


class TargetError(GradprobeError):
    """The target could not be imported, found or built."""

    kind = "load error"


class InputError(GradprobeError):
    """Example inputs are missing or could not be made."""

    kind = "input error"


class WeightsError(GradprobeError):
    """A weights file could not be read or does not fit the model."""

    kind = "weights error"


class RunError(GradprobeError):
    """The model's forward or backward raised."""

    kind = "run error"


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of message`` -- enough to recognise the error in one line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name
