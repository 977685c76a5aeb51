"""The intended freeze: glob patterns and how they classify parameter names (pure; files are read in ``load.config``).

No torch here.  Patterns are ``fnmatch`` globs matched against every name a parameter has (tied
parameters have several); a bare module name ``backbone`` also matches ``backbone.*``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gradprobe.errors import UsageError

UNLISTED_POLICIES = ("ignore", "warn", "error")


def pattern_matches(pattern: str, name: str) -> bool:
    """``fnmatch`` on the qualified name; a bare module name matches everything under it."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _claims(patterns: tuple[str, ...], names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(pattern, first name it matches) for every pattern matching one of ``names``."""
    out = []
    for p in patterns:
        hit = next((n for n in names if pattern_matches(p, n)), None)
        if hit is not None:
            out.append((p, hit))
    return tuple(out)


@dataclass(frozen=True)
class Classification:
    """Which patterns claim a parameter, and what is expected of it."""

    expected: str  # frozen | trainable | unlisted
    frozen_by: tuple[tuple[str, str], ...]  # (pattern, name it matched)
    trainable_by: tuple[tuple[str, str], ...]
    from_baseline: bool = False

    @property
    def conflict(self) -> bool:
        return bool(self.frozen_by and self.trainable_by)

    @property
    def groups(self) -> tuple[str, ...]:
        """Spec groups (one per pattern) the parameter belongs to; JUnit makes a test case of each."""
        if self.frozen_by or self.trainable_by:
            seen = dict.fromkeys([f"frozen {p}" for p, _ in self.frozen_by]
                                 + [f"trainable {p}" for p, _ in self.trainable_by])
            return tuple(seen)
        if self.from_baseline:
            return (f"baseline {self.expected}",)
        return ("unlisted",)


@dataclass(frozen=True)
class FreezeSpec:
    """What the user says should be frozen and trainable, and how strict to be."""

    frozen: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()
    unlisted: str = "warn"
    allow_buffer_updates: bool = False
    baseline: Mapping[str, bool] | None = None  # qualified name -> expected requires_grad
    baseline_path: str | None = None

    def __post_init__(self) -> None:
        if self.unlisted not in UNLISTED_POLICIES:
            raise UsageError(f"--unlisted '{self.unlisted}' is not a policy; use ignore, warn or error")
        for pattern in (*self.frozen, *self.trainable):
            if not isinstance(pattern, str) or not pattern.strip():
                raise UsageError(f"freeze pattern {pattern!r} is empty or not a string; write a glob such as "
                                 f"'backbone'")

    @classmethod
    def make(cls, frozen: str | Iterable[str] | None = None, trainable: str | Iterable[str] | None = None,
             **kwargs: Any) -> FreezeSpec:
        """Accept a single pattern or any iterable of patterns."""
        return cls(frozen=_as_tuple(frozen), trainable=_as_tuple(trainable), **kwargs)

    @property
    def empty(self) -> bool:
        return not self.frozen and not self.trainable and self.baseline is None

    def classify(self, names: Iterable[str]) -> Classification:
        names = tuple(names)
        frozen_by = _claims(self.frozen, names)
        trainable_by = _claims(self.trainable, names)
        if frozen_by and not trainable_by:
            return Classification("frozen", frozen_by, ())
        if trainable_by and not frozen_by:
            return Classification("trainable", (), trainable_by)
        if frozen_by and trainable_by:
            return Classification("unlisted", frozen_by, trainable_by)
        if self.baseline is not None:
            for n in names:
                if n in self.baseline:
                    return Classification("frozen" if not self.baseline[n] else "trainable", (), (),
                                          from_baseline=True)
        return Classification("unlisted", (), ())

    def buffer_frozen(self, name: str) -> str | None:
        """The frozen pattern a buffer name matches, if any."""
        for p in self.frozen:
            if pattern_matches(p, name):
                return p
        return None

    def check_patterns(self, param_names: Iterable[str], buffer_names: Iterable[str] = ()) -> None:
        """A pattern that matches nothing is a typo that would silently freeze-check nothing: refuse it."""
        names = list(param_names) + list(buffer_names)
        for option, patterns in (("--frozen", self.frozen), ("--trainable", self.trainable)):
            for p in patterns:
                if any(pattern_matches(p, n) for n in names):
                    continue
                modules = sorted({n.rsplit(".", i)[0] for n in names for i in range(1, n.count(".") + 1)} | set(names))
                close = difflib.get_close_matches(p, modules, n=3, cutoff=0.6)
                if close:
                    hint = f"did you mean {', '.join(repr(c) for c in close)}?"
                else:
                    hint = f"names look like {', '.join(repr(n) for n in names[:3])}" if names else "the model has none"
                raise UsageError(f"{option} '{p}' matches no parameter or buffer name; {hint}")


