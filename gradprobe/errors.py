"""Errors that end a command with a one-line message and exit code 2.

Every failure a user can cause (bad target, bad inputs, a model that raises)
is turned into a ``GradprobeError`` whose message names the problem and the
fix; the CLI prints it without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class GradprobeError(Exception):
    """A user-facing failure: the message is one line naming the problem and the fix."""

    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


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
