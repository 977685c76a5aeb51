"""Drop the last references to an autograd graph on a thread with a big C stack.

With torch 2.13, once Python has touched the nodes of a grad_fn graph (a walk, or reading
``t.grad_fn`` along a chain gives each a Python wrapper), freeing the graph recurses in C++ once
per node along its longest path; plain torch, untouched, frees even a million-node chain
iteratively.  The main thread's 8 MiB stack overflows at ~40k nodes and the interpreter dies
(segfault), wherever the last tensor is dropped.  Freeing on a fresh thread with a big enough
stack makes that recursion harmless; the thread is joined, so the release stays synchronous.

Measured (torch 2.13, CPython 3.11, x86-64 Linux, scalar-``mul`` chains walked by
:func:`~gradprobe.run.trackers.graph.walk_graph`, with or without backward): freeing needs ~205 bytes
of stack per level; a 100,000-deep chain needs 20 MiB (19 crash), 1,000,000 needs 200 MiB (195
crash).  ``_STACK_BYTES`` is 1 GiB of *virtual* stack, ~5M levels: pages are committed only as
the recursion touches them, and given back when the thread ends (glibc may keep the empty
mapping cached for the next thread).  A release costs what any thread start does: ~40 µs
median alone, ~0.3 ms inside a probe run on a loaded 2-core machine (a 0.6 ms run of a small
``nn.Linear`` took 0.9 ms), so the engine does one after every run rather than guess the depth.
"""

from __future__ import annotations

import threading
import traceback

__all__ = ["release_on_big_stack"]

_STACK_BYTES = 1 << 30


def release_on_big_stack(holder: list, error: BaseException | None = None) -> None:
    """Clear ``holder`` (drop its references) on a thread with a 1 GiB stack, and wait for it.

    The caller must hold no other reference to what should be freed there.  With ``error``,
    the finished frames of its traceback (and of its causes and contexts) lose their locals
    there first, since a traceback keeps its frames, and any graph tensor they hold, alive; the
    traceback still prints.  The process-wide ``threading.stack_size`` is changed only while the
    thread starts.  Where no big stack can be had (the size is refused, or no thread starts),
    the list is cleared in place.  A Ctrl-C while waiting is re-raised once the thread is done.
    """
    if not holder and error is None:
        return

    def clear() -> None:
        try:
            if error is not None:
                _clear_frames(error)
        except Exception:  # the tracebacks are the caller's: keeping some locals is no failure
            pass
        finally:
            holder.clear()  # finalisers that raise report to sys.unraisablehook, never here

    thread = None
    try:
        previous = threading.stack_size(_STACK_BYTES)
    except (ValueError, RuntimeError):  # this platform cannot set a thread stack size
        pass
    else:
        try:
            thread = threading.Thread(target=clear, name="gradprobe-release")
            thread.start()
        except RuntimeError:  # no thread could be started (e.g. the stack could not be mapped)
            thread = None
        finally:
            threading.stack_size(previous)
    if thread is None:
        clear()
        return
    interrupted = False
    while thread.is_alive():  # an interrupt must not let the caller go on (or exit) mid-release
        try:
            thread.join()
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def _clear_frames(error: BaseException) -> None:
    """Drop the locals of every finished frame in the tracebacks of ``error`` and its chained errors."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # frames still executing are skipped
        pending += (exc.__cause__, exc.__context__)
