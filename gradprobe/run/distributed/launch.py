"""``gradprobe COMMAND --nproc N``: start torch's own elastic launcher (``torch.distributed.run``, what the
``torchrun`` command runs) on ``python -m gradprobe COMMAND ...`` with N processes on this machine.

The launcher runs in this process so that its own reports stay quiet: the ranks' one error line (printed by
rank 0) is the whole story, and the exit code is the ranks' exit code rather than torchrun's generic 1.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from gradprobe.errors import UsageError

SHUTDOWN_TIMEOUT_S = 5  # after Ctrl-C (or a failed rank) the other ranks get this long before SIGKILL


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``: what every rank runs."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = i + 1 < len(argv)
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def _quiet_launcher_logs(debug: bool) -> None:
    """torchrun logs its own warnings and failure summaries; gradprobe's ranks already said what went wrong."""
    if debug:
        return
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def launch(nproc: int, argv: Sequence[str], *, debug: bool = False) -> int:
    """Run ``python -m gradprobe *argv`` on ``nproc`` local ranks through torch.distributed.run; the exit code."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: use 1 or more processes")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for several ranks, without its warning
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
                       "--monitor-interval=0.1", "--module", "gradprobe", *argv])
    _quiet_launcher_logs(debug)
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {rank: f.exitcode for rank, f in exc.failures.items()}
        line = crash_line(codes)
        if line is not None:
            from gradprobe.run.distributed.rank_error import default_write_error

            default_write_error("run error", line)
        return exit_code(codes)
    except SignalException:
        return 2
    except KeyboardInterrupt:
        return 2
    finally:
        sys.stdout.flush()
    return 0


def crash_line(codes: dict[int, int]) -> str | None:
    """The one line for ranks that a signal ended before any rank reported (a C++ abort or segfault inside a
    collective kills the process at once: no Python code of it runs, and the launcher then stops the others before
    they notice); None when a rank exited with gradprobe's own code (it printed the line)."""
    import signal

    if any(code > 0 for code in codes.values()):
        return None
    dead = sorted((rank, code) for rank, code in codes.items() if code < 0)
    if not dead:
        return None
    first = [(rank, code) for rank, code in dead if -code not in (signal.SIGTERM, signal.SIGINT)]
    dead = first or dead  # SIGTERM: the launcher stopping the other ranks after the first one died

    def name(code: int) -> str:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"

    who = "; ".join(f"rank {rank} was ended by {name(code)} (exit code {code})" for rank, code in dead)
    return (f"{who} before any rank could report: a crash in native code (torch, gloo/NCCL, a C++ extension) or a "
            f"kill from outside; what it printed, if anything, is above. The other ranks were stopped. A collective "
            f"that differs between ranks (a layer run on some ranks only, a rank-dependent model) makes gloo abort "
            f"like this ('Is there a distributed collective mismatch'); run with --debug for the launcher's report")


def exit_code(codes: dict[int, int]) -> int:
    """The ranks agree on one exit code (0, 1 or 2); ranks killed by a signal (negative codes) do not count."""
    if codes.get(0, 0) > 0:
        return codes[0]
    positive = [c for c in codes.values() if c > 0]
    return max(positive) if positive else 2
