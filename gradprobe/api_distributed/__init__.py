"""The commands under torchrun: what each rank runs, and the merged report rank 0 gets back.

Every function here runs on every rank inside a ``DistSession`` (gradprobe.run.distributed.session) and
returns the merged result on rank 0 (None elsewhere).  Phases: load (import → process group → build →
``--wrap``) → run (through the wrapper, observed by ``RankCollector``) → [DDP's second iteration] →
gather (``dist.gather_object`` on gradprobe's own gloo group) → rank 0 merges and judges.

Modules: ``rank`` (options, loading and wrapping this rank's model), ``observe`` (the run under the rank
collector, parameter usage across ranks, DDP's second iteration), one module per command (``inspect``,
``freeze``, ``compare``).
"""

from gradprobe.api_distributed.compare import compare_rank
from gradprobe.api_distributed.freeze import freeze_rank
from gradprobe.api_distributed.inspect import inspect_loaded, inspect_rank
from gradprobe.api_distributed.rank import DistOptions, LoadSpec, RankModel, session
from gradprobe.facts.distributed import NO_SHARD

__all__ = ["NO_SHARD", "DistOptions", "LoadSpec", "RankModel", "compare_rank", "freeze_rank", "inspect_loaded",
           "inspect_rank", "session"]
