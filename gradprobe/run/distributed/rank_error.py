"""A rank's failure as data: the error each rank posts, and the one line rank 0 prints for all of them.

Kept apart from the session so that the wording (merging identical errors, cleaning gloo's C++ messages) is
testable without a process group.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

INTERRUPTED = "interrupted (Ctrl-C); every rank stopped, nothing was reported"


class DistAbort(Exception):
    """The distributed run stopped; ``code`` is the exit code, the error line (if any) is already printed."""

    def __init__(self, code: int = 2) -> None:
        super().__init__(f"distributed run stopped (exit {code})")
        self.code = code


@dataclass(frozen=True)
class RankError:
    rank: int
    kind: str  # "load error", "run error", ..., "timeout", "interrupted"
    message: str
    phase: str
    hint: str = ""

    def dumps(self) -> str:
        return json.dumps({"rank": self.rank, "kind": self.kind, "message": self.message, "phase": self.phase,
                           "hint": self.hint})

    @classmethod
    def loads(cls, text: bytes | str) -> RankError:
        data = json.loads(text)
        return cls(int(data["rank"]), str(data["kind"]), str(data["message"]), str(data["phase"]),
                   str(data.get("hint", "")))


def error_line(errors: list[RankError], world_size: int) -> tuple[str, str]:
    """(kind, message) of the one line rank 0 prints: real errors before timeouts, identical ones merged."""
    real = [e for e in errors if e.kind not in ("timeout",)]
    chosen = real or errors
    groups: dict[tuple[str, str], list[int]] = {}
    hints: list[str] = []
    for e in sorted(chosen, key=lambda e: e.rank):
        groups.setdefault((e.kind, e.message), []).append(e.rank)
    for e in sorted(errors, key=lambda e: e.rank):
        if e.hint and e.hint not in hints:
            hints.append(e.hint)
    parts = []
    for (_, message), ranks in groups.items():
        if len(ranks) == world_size and world_size > 1:
            who = "every rank"
        else:
            who = ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)
        parts.append(f"{who}: {message}")
    kinds = {k for k, _ in groups}
    kind = kinds.pop() if len(kinds) == 1 else "error"
    text = "; ".join(parts)
    if hints:
        text += "; " + "; ".join(hints)
    return kind, text



_SOURCE_TAG = re.compile(r"\[[^\]\s]*\.(?:cc|cpp|h):\d+\] ")
_GLOO_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms for (\w+) operation to complete")


def clean_collective_error(message: str) -> str:
    """gloo's ``[.../unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete`` → a sentence
    that says what it means."""
    message = _SOURCE_TAG.sub("", message)
    match = _GLOO_TIMEOUT.search(message)
    if match:
        seconds = int(match.group(1)) / 1000
        message = message.replace(match.group(0), f"a collective timed out after {seconds:g} s waiting for the other "
                                                   f"ranks (they never joined it)")
    return message



def default_write_error(kind: str, message: str) -> None:
    """The one error line on stderr (whitespace folded: a rank's message may span lines)."""
    sys.stderr.write(f"gradprobe: {kind}: {' '.join(message.split())}\n")
    sys.stderr.flush()

