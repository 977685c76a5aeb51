"""This rank's part of loading: the shared distributed options, the device, importing and building the target
after making sure a process group exists, per-rank inputs, and ``--wrap``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gradprobe.errors import GradprobeError, RunError, TargetError, UsageError
from gradprobe.judges.distributed.replicas import replicas_mismatch
from gradprobe.load.inputs import ExampleInputs, make_inputs
from gradprobe.load.model import LoadedModel, resolve_device
from gradprobe.load.user_code import load_object, search_paths
from gradprobe.run.distributed.collect import param_digests
from gradprobe.run.distributed.env import LaunchEnv
from gradprobe.run.distributed.session import DistSession, phase
from gradprobe.run.distributed.wrap import explain_fsdp1_error, wrap
from gradprobe.run.distributed.wrappers import Wrapped, describe, kind_of


@dataclass(frozen=True)
class DistOptions:
    """The distributed options every command shares."""

    timeout_s: float = 30.0
    wrap: str | None = None
    shard: tuple[str, ...] = ()
    use_orig_params: bool = False
    debug: bool = False
    reshard_after_forward: bool | None = None  # FSDP2 (--wrap fsdp); None: FSDP2's default
    mixed_precision: tuple[str, str | None] | None = None  # FSDP2 MixedPrecisionPolicy (param, reduce) dtype names


@dataclass
class LoadSpec:
    """What ``gradprobe.api.load`` takes."""

    target: str
    init: str | dict[str, Any] | None = None
    weights: str | None = None
    device: str | None = None
    inputs: str | None = None
    shapes: list[str] | None = None
    dtype: str = "float32"
    high: int = 2
    seed: int | None = 0
    per_rank_inputs: bool = True  # --shape inputs drawn with seed + rank, as a data-parallel loader would
    path: list[str] = field(default_factory=list)  # import directories (--path, the config's folder)


@dataclass
class RankModel:
    """One rank's loaded (and wrapped) model."""

    wrapped: Wrapped
    example: ExampleInputs
    loaded: LoadedModel
    pre_wrap: list[tuple[str, str]] = field(default_factory=list)
    inputs_per_rank: bool = False


@contextlib.contextmanager
def session(env: LaunchEnv, options: DistOptions) -> Iterator[DistSession]:
    """The rank's session; non-zero ranks ignore Python warnings (rank 0 speaks for all)."""
    import warnings

    with DistSession(env, options.timeout_s, debug=options.debug) as s, warnings.catch_warnings():
        if env.rank != 0:
            warnings.simplefilter("ignore")
        yield s


def rank_device(device: str | None, env: LaunchEnv) -> torch.device:
    """``--device cuda`` means each rank's own GPU (``cuda:LOCAL_RANK``)."""
    torch_device = resolve_device(device)
    if torch_device.type == "meta":
        raise UsageError("--device meta under torchrun: a meta run has no values to exchange between ranks; run "
                         "the meta estimate in one process (without torchrun/--nproc)")
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    return torch_device


def load_rank(s: DistSession, spec: LoadSpec, options: DistOptions) -> RankModel:
    """Import, make sure a process group exists, build, make this rank's inputs, wrap."""
    from gradprobe.api import load
    from gradprobe.load.hf import is_hf_folder

    with phase(s, "load"), search_paths(spec.path):
        device = rank_device(spec.device, s.env)
        if not is_hf_folder(spec.target):
            load_object(spec.target)  # the user's module-level code runs first: it may create the process group
        s.ensure_default_group(device)
        kwargs = dict(init=spec.init, weights=spec.weights, device=str(device), inputs=spec.inputs,
                      shapes=spec.shapes, dtype=spec.dtype, high=spec.high, seed=spec.seed, keep_distributed=True)
        try:
            loaded, example = load(spec.target, **kwargs)
        except TargetError as exc:
            if "process group twice" in str(exc) and s.owns_default_group:
                s.release_default_group()  # the factory initialises its own: let it
                loaded, example = load(spec.target, **kwargs)
            else:
                explained = explain_fsdp1_error(exc)
                if explained is not None:
                    raise TargetError(f"building '{spec.target}': {explained}") from exc
                raise
        per_rank = False
        if spec.shapes and not spec.inputs and spec.per_rank_inputs and s.world_size > 1:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((spec.seed or 0) + s.rank)
                example = make_inputs(loaded.model, shapes=spec.shapes, dtype=spec.dtype, high=spec.high,
                                      device=device, target=spec.target)
            per_rank = True
        model = loaded.model
        pre: list[tuple[str, str]] = []
        if options.wrap:
            found = kind_of(model)
            if found != "none":
                raise UsageError(f"--wrap {options.wrap}: the target is already wrapped ({found}); drop --wrap")
            pre = param_digests(model)
            try:
                model = wrap(model, options.wrap, options.shard, options.use_orig_params, device,
                             options.reshard_after_forward, options.mixed_precision)
            except RunError as exc:
                raise _explain_wrap_error(s, model, exc) from exc
            loaded.model = model
        elif options.shard or options.use_orig_params:
            raise UsageError("--shard and --use-orig-params apply to --wrap fsdp/fsdp1")
        elif options.reshard_after_forward is not None or options.mixed_precision is not None:
            raise UsageError("--reshard-after-forward and --mixed-precision set FSDP2's fully_shard: use them with "
                             "--wrap fsdp")
        wrapped = describe(model, "--wrap" if options.wrap else "target")
    s.checkpoint("loaded")
    with phase(s, "setup"):
        s.make_group()
    return RankModel(wrapped, example, loaded, pre, per_rank)


def _explain_wrap_error(s: DistSession, model: torch.nn.Module, exc: RunError) -> RunError:
    """DDP's construction compares the replicas collectively, so every rank raises its own count ("Rank 0 has 2
    params, while rank 1 has inconsistent 4 params"); the ranks exchange their parameter lists (on gradprobe's
    time-limited group) and every rank states the same cause: which parameters are missing, shaped or frozen
    differently where."""
    if "across all ranks" not in str(exc) or not str(exc).startswith("--wrap ddp"):
        return exc
    mine = [(n, p.requires_grad, tuple(p.shape)) for n, p in model.named_parameters()]
    cause = replicas_mismatch(s.all_gather(mine))
    if cause is None:
        return exc
    return RunError(f"--wrap ddp: DistributedDataParallel refused the replicas (DDP expects the same model across "
                    f"all ranks, and compares the parameters that require grad): {cause}; fix: build and freeze the "
                    f"model the same way on every rank before wrapping (not under `if rank == ...`)")


def describe_dist_error(exc: BaseException) -> GradprobeError:
    """Any exception as a one-line GradprobeError (for errors outside a phase)."""
    if isinstance(exc, GradprobeError):
        return exc
    first = (str(exc).strip().splitlines() or [""])[0]
    return GradprobeError(f"{type(exc).__name__}: {first}")
