"""One rank's part in a distributed gradprobe run: coordination, process groups, timeouts, failure propagation.

Coordination goes through a control channel that exists before any user code runs: a ``TCPStore`` client on
``MASTER_ADDR:MASTER_PORT`` (torchrun's agent hosts that store; under a plain launcher rank 0 hosts it with
``multi_tenant=True``, the way ``init_process_group`` itself does, so the two share the server), under a key
prefix of its own.  Through it every rank posts the phase it reached and, on failure, its one-line error.

Never hang: each wait has a timeout (``--dist-timeout``); a watchdog thread on every rank wakes when any rank
posts a failure (even while the main thread is blocked in a collective) or when Ctrl-C arrives.  Rank 0 prints
one line naming the failing rank(s) and error, then every rank exits 2.  Rank 0 reports and exits first; the
others wait for its report (bounded) so that torchrun cannot kill rank 0 before it has said what went wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from gradprobe.errors import GradprobeError, describe_exception
from gradprobe.run.distributed.env import LaunchEnv

CHECKPOINT_MARGIN_S = 5.0  # a stuck collective of the model (timeout = --dist-timeout) fails before our waits do
REPORT_GRACE_S = 3.0  # after a failure, how long rank 0 waits for other ranks' errors before writing its line
INTERRUPT_GRACE_S = 2.0  # Ctrl-C: how long the main thread gets to unwind before the watchdog ends the process
WATCH_INTERVAL_S = 0.2  # how often the watchdog looks for another rank's failure
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


class DistSession:
    """Control channel, process groups and timeouts of one rank; use as a context manager."""

    def __init__(self, env: LaunchEnv, timeout_s: float, *, debug: bool = False,
                 write_error: Callable[[str, str], None] | None = None) -> None:
        self.env = env
        self.rank = env.rank
        self.world_size = env.world_size
        self.timeout_s = float(timeout_s)
        self.debug = debug
        self._write_error = write_error or _default_write_error
        self.store: Any = None
        self._watch_store: Any = None
        self.group: Any = None  # gradprobe's own gloo group for its gathers
        self.owns_default_group = False
        self.backend = ""
        self.phase = "start"
        self.hint_source: Callable[[], str] | None = None  # adds a cause to this rank's error (local facts)
        self._lock = threading.Lock()
        self._handled = False  # this process is already reporting / exiting because of a failure
        self._stop = threading.Event()
        self._reported = threading.Event()  # rank 0 has written the error line
        self._watchdog: threading.Thread | None = None
        self._signal_pipe: tuple[int, int] | None = None
        self._old_wakeup_fd: int | None = None
        self._interrupted_at: float | None = None
        self._checkpoints: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DistSession:
        self._connect()
        self._install_signal_pipe()
        self._watchdog = threading.Thread(target=self._watch, name="gradprobe-dist-watchdog", daemon=True)
        self._watchdog.start()
        self.set_phase("start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> None:
        env = self.env
        timeout = timedelta(seconds=self.timeout_s)
        try:
            if env.agent_store:
                base = dist.TCPStore(env.master_addr, env.master_port, None, is_master=False, timeout=timeout,
                                     wait_for_workers=False)
            else:
                base = dist.TCPStore(env.master_addr, env.master_port, None, is_master=env.rank == 0,
                                     timeout=timeout, multi_tenant=True, wait_for_workers=False)
        except Exception as exc:  # any failure to reach the store ends the run
            raise GradprobeError(
                f"rank {env.rank}: cannot reach the launcher's store at {env.master_addr}:{env.master_port} within "
                f"{self.timeout_s:g} s ({describe_exception(exc)}); start gradprobe with torchrun or --nproc N"
            ) from exc
        self.store = dist.PrefixStore(f"gradprobe/{env.run_id}/", base)
        # the watchdog's own connection: a TCPStore client serialises its calls, and the main thread may sit
        # in a long wait on its own
        watch = dist.TCPStore(env.master_addr, env.master_port, None, is_master=False, timeout=timeout,
                              wait_for_workers=False)
        self._watch_store = dist.PrefixStore(f"gradprobe/{env.run_id}/", watch)

    def close(self) -> None:
        """Stop the watchdog; destroy gradprobe's group and the default group if gradprobe created it."""
        self._stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2.0)
        self._remove_signal_pipe()
        with contextlib.suppress(Exception):
            if self.group is not None and dist.is_initialized():
                dist.destroy_process_group(self.group)
        self.group = None
        self.release_default_group()

    # ------------------------------------------------------------------ process groups

    def ensure_default_group(self, device: torch.device) -> str:
        """Initialise the default process group unless the target already did: gloo on CPU, NCCL on CUDA, with
        ``--dist-timeout`` as its timeout.  Returns the backend in use."""
        if dist.is_initialized():
            self.backend = str(dist.get_backend())
            return self.backend
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=self.timeout_s), **kwargs)
        except Exception as exc:
            raise GradprobeError(f"initialising the {backend} process group failed on rank {self.rank}: "
                                 f"{describe_exception(exc)}") from exc
        self.owns_default_group = True
        self.backend = backend
        return backend

    def release_default_group(self) -> None:
        """Destroy the default group only if gradprobe created it (the target's own group stays)."""
        if self.owns_default_group:
            with contextlib.suppress(Exception):
                if dist.is_initialized():
                    dist.destroy_process_group()
            self.owns_default_group = False

    def make_group(self) -> None:
        """gradprobe's own gloo group (every rank calls this at the same point): its gathers never interleave
        with the model's collectives, and they time out after ``--dist-timeout`` whatever the target chose."""
        if self.group is not None:
            return
        if not dist.is_initialized():
            raise GradprobeError("internal: gradprobe's group needs the default process group first")
        try:
            self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout_s))
        except Exception as exc:
            raise GradprobeError(f"creating gradprobe's gloo group failed on rank {self.rank}: "
                                 f"{describe_exception(exc)}") from exc

    # ------------------------------------------------------------------ phases and checkpoints

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        with contextlib.suppress(Exception):
            self.store.set(f"phase/{self.rank}", phase)

    def checkpoint(self, name: str, timeout_s: float | None = None) -> None:
        """Every rank reached ``name``; a rank that does not within the timeout fails the run (named)."""
        count = self._checkpoints.get(name, 0)  # every rank passes the same checkpoints in the same order
        self._checkpoints[name] = count + 1
        name = f"{name}" if count == 0 else f"{name}#{count}"
        self.store.set(f"at/{name}/{self.rank}", "1")
        keys = [f"at/{name}/{r}" for r in range(self.world_size)]
        limit = self.timeout_s + CHECKPOINT_MARGIN_S if timeout_s is None else timeout_s
        try:
            self.store.wait(keys, timedelta(seconds=limit))
        except Exception:  # a timeout (DistStoreError) or the store went away
            missing = [r for r in range(self.world_size) if not self.has_key(f"at/{name}/{r}")]
            lasts = {r: self.get_text(f"phase/{r}") or "start" for r in missing}
            who = ", ".join(f"{r} (last phase: {lasts[r]})" for r in missing) or "?"
            self.fail(RankError(self.rank, "timeout",
                                f"rank(s) {who} did not reach '{name}' within {limit:g} s: stuck (in a collective "
                                f"the other ranks did not join?) or exited; raise --dist-timeout if a rank is "
                                f"only slow", self.phase))

    def gather(self, obj: Any) -> list[Any] | None:
        """``dist.gather_object`` to rank 0 on gradprobe's group (time-limited); None on other ranks."""
        self.make_group()
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        try:
            dist.gather_object(obj, out, dst=0, group=self.group)
        except Exception as exc:
            self.fail(RankError(self.rank, "error", f"gathering every rank's facts failed: "
                                                    f"{describe_exception(exc)}", self.phase))
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """``dist.all_gather_object`` on gradprobe's group: the same small facts on every rank."""
        self.make_group()
        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except Exception as exc:
            self.fail(RankError(self.rank, "error", f"exchanging facts between ranks failed: "
                                                    f"{describe_exception(exc)}", self.phase))
        return out

    def finish(self, code: int) -> int:
        """The run's exit code on every rank: rank 0 decides (after printing), the others wait for it."""
        if self.rank == 0:
            sys.stdout.flush()
            sys.stderr.flush()
            self.store.set("exit", str(code))
            return code
        try:
            self.store.wait(["exit"], timedelta(seconds=self.timeout_s + 60))
            return int(self.get_text("exit") or 2)
        except Exception:  # rank 0 never finished: it failed (and reported) or died
            if self.has_key("abort"):
                self._exit_after_report()
            self._write_error("error", f"rank {self.rank}: rank 0 did not finish the report within "
                                       f"{self.timeout_s + 60:g} s")
            return 2

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
        if not err.hint and self.hint_source is not None:
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
        _hard_exit(2)

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
                _hard_exit(2)
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
        _hard_exit(2)

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

    # ------------------------------------------------------------------ store helpers

    def _st(self) -> Any:
        """The store connection of the calling thread (the watchdog has its own)."""
        if self._watchdog is not None and threading.current_thread() is self._watchdog:
            return self._watch_store
        return self.store

    def has_key(self, key: str) -> bool:
        try:
            return bool(self._st().check([key]))
        except Exception:
            return False

    def get_text(self, key: str) -> str | None:
        if not self.has_key(key):
            return None
        try:
            value = self._st().get(key)
        except Exception:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)


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


def _default_write_error(kind: str, message: str) -> None:
    sys.stderr.write(f"gradprobe: {kind}: {' '.join(message.split())}\n")
    sys.stderr.flush()


def _hard_exit(code: int) -> None:
    """End this rank now (the main thread may be blocked inside a collective)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def phase(session: DistSession, name: str) -> Iterator[None]:
    """Run a block as phase ``name``: any exception in it becomes this rank's posted failure."""
    session.set_phase(name)
    try:
        yield
    except DistAbort:
        raise
    except (GradprobeError, KeyboardInterrupt) as exc:
        session.fail(exc)
    except SystemExit as exc:
        session.fail(GradprobeError(f"the model's code called sys.exit({exc.code!r}) during {name}"))
    except Exception as exc:
        if session.debug:
            import traceback

            traceback.print_exc()
        session.fail(exc)


def hostname() -> str:
    return socket.gethostname()
