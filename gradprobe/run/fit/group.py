"""torch's fake process group: rank 0 of an N-rank job in this one process, collectives that move nothing.

Nothing else may hold a process group meanwhile: a real one (under torchrun, or one the target created) would
make the simulation talk to real ranks.  Both are refused with one line; the fake group is always destroyed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from gradprobe.errors import UsageError

FAKE = "fake"
REAL_GROUP = ("--world-size simulates the ranks in this one process, but {what} (backend {backend}); {fix}")


@contextlib.contextmanager
def fake_group(world_size: int) -> Iterator[None]:
    """The default process group as torch's fake group of ``world_size`` ranks, this process being rank 0."""
    if not dist.is_available():
        raise UsageError("--world-size needs torch.distributed, which this torch build lacks")
    if dist.is_initialized():
        raise UsageError(REAL_GROUP.format(what="a process group is already initialised here",
                                           backend=dist.get_backend(),
                                           fix="run it without torchrun/--nproc"))
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group(FAKE, rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_still_fake() -> None:
    """The target must not have replaced the fake group with a real one (it would start talking to ranks)."""
    backend = str(dist.get_backend()) if dist.is_initialized() else "none"
    if backend != FAKE:
        raise UsageError(REAL_GROUP.format(what="the target initialised a process group of its own",
                                           backend=backend, fix=REAL_FIX))


REAL_FIX = ("make the factory skip dist.init_process_group when a group exists (if not dist.is_initialized()), "
            "or use --wrap on the plain model")


def real_group_error(exc: BaseException) -> UsageError | None:
    """A factory calling ``init_process_group`` while the fake group is up: the one-line refusal."""
    text = str(exc)
    if "default process group twice" in text or "init_process_group" in text:
        return UsageError(f"--world-size simulates the ranks in this one process, but the target calls "
                          f"dist.init_process_group itself; {REAL_FIX}")
    return None
