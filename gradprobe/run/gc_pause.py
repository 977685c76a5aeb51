"""Pausing Python's cyclic garbage collector for one run (:func:`gc_paused`)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for one ``--grads`` run, back on (if it was) once the run's objects are
    gone.

    The gradient-health tracker keeps a few Python objects per module call and per hooked tensor until the facts
    are built.  With the collector on, they outlive one or two young collections, are promoted to the oldest
    generation, and every few runs that triggers a full collection of the whole process (ResNet-50: ~180 ms
    each, ~20-35 ms a run on average).  Off during the run, they are freed by reference counting before any
    collection looks at them.  Reference cycles made meanwhile (by the user's code too) wait for the next
    collection after the run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
