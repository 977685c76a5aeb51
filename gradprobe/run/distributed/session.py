"""One rank's part in a distributed gradprobe run: coordination, process groups, timeouts, failure propagation.

Coordination goes through a control channel that exists before any user code runs: a ``TCPStore`` client on
``MASTER_ADDR:MASTER_PORT`` (torchrun's agent hosts that store; under a plain launcher rank 0 hosts it with
``multi_tenant=True``, the way ``init_process_group`` itself does, so the two share the server), under a key
prefix of its own.  Through it every rank posts the phase it reached and, on failure, its one-line error.

Never hang: each wait has a timeout (``--dist-timeout``); a failure on any rank stops every rank, and rank 0
prints one line naming the failing rank(s) and error, then every rank exits 2 (``failure.py``: the watchdog
and the report; ``rank_error.py``: the error line itself).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from gradprobe.errors import GradprobeError, describe_exception
from gradprobe.run.distributed.env import LaunchEnv
from gradprobe.run.distributed.failure import FailurePropagation
from gradprobe.run.distributed.rank_error import DistAbort, RankError, default_write_error

CHECKPOINT_MARGIN_S = 5.0  # a stuck collective of the model (timeout = --dist-timeout) fails before our waits do


class DistSession(FailurePropagation):
    """Control channel, process groups and timeouts of one rank; use as a context manager."""

    def __init__(self, env: LaunchEnv, timeout_s: float, *, debug: bool = False,
                 write_error: Callable[[str, str], None] | None = None) -> None:
        self.env = env
        self.rank = env.rank
        self.world_size = env.world_size
        self.timeout_s = float(timeout_s)
        self.debug = debug
        self._write_error = write_error or default_write_error
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
