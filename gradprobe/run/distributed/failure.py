"""Failure propagation: post this rank's error, make every rank stop, let rank 0 print one line for all.

A watchdog thread on every rank wakes when any rank posts a failure (even while the main thread is blocked in a
collective) or when Ctrl-C arrives.  Rank 0 reports and exits first; the others wait for its report (bounded) so
that torchrun cannot kill rank 0 before it has said what went wrong.  ``FailurePropagation`` is mixed into
``DistSession``, whose control-channel state (store connections, rank, timeouts) it uses.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from gradprobe.errors import GradprobeError
from gradprobe.run.distributed.rank_error import INTERRUPTED, DistAbort, RankError, clean_collective_error, error_line

REPORT_GRACE_S = 3.0  # after a failure, how long rank 0 waits for other ranks' errors before writing its line
INTERRUPT_GRACE_S = 2.0  # Ctrl-C: how long the main thread gets to unwind before the watchdog ends the process
WATCH_INTERVAL_S = 0.2  # how often the watchdog looks for another rank's failure


class FailurePropagation:
    """The failure and watchdog half of ``DistSession``, which sets every attribute declared here and provides
    ``_st()`` (the calling thread's store connection) and ``get_text()``."""

    rank: int
    world_size: int
    timeout_s: float
    phase: str
    hint_source: Callable[[], str] | None
    _write_error: Callable[[str, str], None]
    _watch_store: Any
    _lock: threading.Lock
    _handled: bool
    _stop: threading.Event
    _reported: threading.Event
    _watchdog: threading.Thread | None
    _signal_pipe: tuple[int, int] | None
    _old_wakeup_fd: int | None
    _interrupted_at: float | None

    # ------------------------------------------------------------------ failures

    def fail(self, error: RankError | GradprobeError | BaseException) -> None:
        """Post this rank's failure, make every rank stop, and raise ``DistAbort`` (after rank 0's report)."""
        err = self._as_rank_error(error)
        if threading.current_thread() is threading.main_thread():  # a second Ctrl-C must not cut the report short
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):  # posted even if another failure is being handled: rank 0 names all
            self._st().set(f"err/{self.rank}", err.dumps())
            self._st().add("abort", 1)
        with self._lock:
            first = not self._handled
            self._handled = True
        if self.rank == 0:
            if first:
                self._report()
            else:  # the watchdog is writing the line (and will end the process): let it finish
                self._reported.wait(REPORT_GRACE_S + 10)
            raise DistAbort(2)
        self._wait_for_report(err)
        raise DistAbort(2)

    def _as_rank_error(self, error: RankError | GradprobeError | BaseException) -> RankError:
        if isinstance(error, RankError):
            err = error
        elif isinstance(error, GradprobeError):
            err = RankError(self.rank, error.kind, str(error), self.phase)
        elif isinstance(error, KeyboardInterrupt):
            err = RankError(self.rank, "error", INTERRUPTED, self.phase)
        else:
            first = (str(error).strip().splitlines() or [""])[0]
            err = RankError(self.rank, "unexpected error", f"{type(error).__name__}: {first} (run with --debug for "
                                                           f"the traceback)", self.phase)
        err = RankError(err.rank, err.kind, clean_collective_error(err.message), err.phase, err.hint)
        if not err.hint and self.hint_source is not None and "got a gradient on" not in err.message:
            # (a message that already names who got a gradient where, as FSDP2's pre-reduce check does, needs no
            # second copy of it)
            with contextlib.suppress(Exception):
                err = RankError(err.rank, err.kind, err.message, err.phase, self.hint_source())
        return err

    def _errors(self) -> list[RankError]:
        errors = []
        for r in range(self.world_size):
            text = self.get_text(f"err/{r}")
            if text:
                with contextlib.suppress(Exception):
                    errors.append(RankError.loads(text))
        return errors

    def _report(self) -> None:
        """Rank 0: wait briefly for every rank's error, print the one line, tell the others."""
        deadline = time.monotonic() + REPORT_GRACE_S
        errors = self._errors()
        while time.monotonic() < deadline and len(errors) < self.world_size:  # ranks failing alike say so together
            time.sleep(0.05)
            errors = self._errors()
        if errors:
            kind, message = error_line(errors, self.world_size)
            self._write_error(kind, message)
        with contextlib.suppress(Exception):
            self._st().set("reported", "1")
        self._reported.set()

    def _wait_for_report(self, own: RankError | None) -> None:
        """Other ranks: stay alive until rank 0 has printed (or print this rank's own line if it never does)."""
        try:
            self._st().wait(["reported"], timedelta(seconds=self.timeout_s + REPORT_GRACE_S))
        except Exception:  # rank 0 is gone: say it ourselves
            if own is not None:
                self._write_error(own.kind, f"rank {own.rank}: {own.message} (rank 0 did not report it)")

    def _exit_after_report(self) -> None:
        own = None
        text = self.get_text(f"err/{self.rank}")
        if text:
            with contextlib.suppress(Exception):
                own = RankError.loads(text)
        self._wait_for_report(own)
        hard_exit(2)

    # ------------------------------------------------------------------ watchdog

    def _watch(self) -> None:
        """Wake on another rank's failure or on Ctrl-C, even while the main thread is blocked in C++."""
        while not self._stop.is_set():
            # a non-blocking check, then a pause: a store wait with a short timeout logs a C++ warning each time
            try:
                aborted = bool(self._watch_store.check(["abort"]))
            except Exception:  # the store went away: the launcher is tearing the job down
                aborted = False
            if not aborted and self._stop.wait(WATCH_INTERVAL_S):
                return
            if self._stop.is_set():
                return
            if self._signal_seen():
                self._on_interrupt()
            if not aborted:
                continue
            with self._lock:
                if self._handled:
                    return  # the main thread is reporting/unwinding this failure
                self._handled = True
            if self.rank == 0:
                self._report()
                hard_exit(2)
            self._exit_after_report()

    def _on_interrupt(self) -> None:
        now = time.monotonic()
        if self._interrupted_at is None:
            self._interrupted_at = now
            return
        if now - self._interrupted_at < INTERRUPT_GRACE_S:
            return
        # the main thread could not unwind (blocked in a collective): end this rank here
        with self._lock:
            first = not self._handled
            self._handled = True
        if first:
            with contextlib.suppress(Exception):
                self._st().set(f"err/{self.rank}", RankError(self.rank, "error", INTERRUPTED, self.phase).dumps())
                self._st().add("abort", 1)
            if self.rank == 0:
                self._report()
        hard_exit(2)

    def _install_signal_pipe(self) -> None:
        """Ctrl-C reaches Python only between bytecodes; a wakeup fd lets the watchdog see it at once."""
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._old_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._signal_pipe = (r, w)
        except (ValueError, OSError):
            self._signal_pipe = None

    def _remove_signal_pipe(self) -> None:
        if self._signal_pipe is None:
            return
        with contextlib.suppress(ValueError, OSError):
            if threading.current_thread() is threading.main_thread():
                signal.set_wakeup_fd(self._old_wakeup_fd if self._old_wakeup_fd is not None else -1)
        for fd in self._signal_pipe:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._signal_pipe = None

    def _signal_seen(self) -> bool:
        if self._signal_pipe is None:
            return self._interrupted_at is not None
        r = self._signal_pipe[0]
        try:
            ready, _, _ = select.select([r], [], [], 0)
            if ready:
                data = os.read(r, 64)
                if any(b in (signal.SIGINT, signal.SIGTERM) for b in data):
                    return True
        except (OSError, ValueError):
            return self._interrupted_at is not None
        return self._interrupted_at is not None


def hard_exit(code: int) -> None:
    """End this rank now (the main thread may be blocked inside a collective)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)

