"""Where this process stands in a distributed launch: read from the environment torchrun (or SLURM through
torchrun, or any launcher setting RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT) gives each rank.  No torch here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gradprobe.errors import UsageError

REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class LaunchEnv:
    """One rank's coordinates."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun's agent hosts the TCPStore at MASTER_ADDR:MASTER_PORT
    run_id: str  # distinguishes jobs (and restarts) sharing one store

    @property
    def is_reporter(self) -> bool:
        """Rank 0 prints the merged report and the one error line."""
        return self.rank == 0


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The launch coordinates, or None outside a distributed launch (no RANK and no WORLD_SIZE)."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        raise UsageError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         f"not: start gradprobe with torchrun (torchrun --nproc-per-node N -m gradprobe ...) or "
                         f"with --nproc N")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", env["RANK"]))
        port = int(env["MASTER_PORT"])
    except ValueError as exc:
        raise UsageError(f"RANK/WORLD_SIZE/LOCAL_RANK/MASTER_PORT must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    run_id = f"{env.get('TORCHELASTIC_RUN_ID', 'none')}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return LaunchEnv(rank=rank, world_size=world, local_rank=local, master_addr=env["MASTER_ADDR"], master_port=port,
                     agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True", run_id=run_id)
