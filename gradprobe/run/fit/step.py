"""Rank 0 of an N-rank FSDP2/DDP job, in this process: build on meta, wrap, materialise the local shards, run
one training step (forward, backward, optimizer step) and count the bytes alive at each phase's peak.

Two ways to run it, the same code: ``estimate=False`` allocates the local shards on the CPU (values are
meaningless: the fake group moves nothing), ``estimate=True`` runs everything under torch's ``FakeTensorMode``,
which allocates nothing, for models whose per-rank step does not fit this machine.  In both, FSDP2's own code
shards (dim-0 padding to the world size), all-gathers, reshards and reduce-scatters: nothing is re-derived.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from gradprobe.errors import GradprobeError, RunError, UsageError, describe_exception
from gradprobe.facts.fit import RankFit
from gradprobe.run.fit.group import check_still_fake, fake_group, real_group_error
from gradprobe.run.fit.prepare import check_mesh, materialise, prepare_wrap, wrapped_kind
from gradprobe.run.fit.spec import OPTIMIZERS, StepInputs, StepSpec
from gradprobe.run.fit.tracker import SavedByModule, make_tracker

Loader = Callable[[], tuple[Any, Any, Any]]  # () -> (model on meta, ExampleInputs, loss spec)


def run_step(load: Loader, world_size: int, spec: StepSpec) -> RankFit:
    """Rank 0's memory of one training step at ``world_size`` (the fake group lives only inside this call)."""
    if world_size < 1:
        raise UsageError(f"--world-size {world_size}: use 1 or more ranks")
    start = time.perf_counter()
    with warnings.catch_warnings(), fake_group(world_size):
        warnings.simplefilter("ignore")  # DTensor's "random operators may not have complete support on cpu"
        try:
            model, example, loss = load()
        except GradprobeError as exc:
            raise real_group_error(exc) or _build_error(exc, world_size) from exc
        check_still_fake()
        kind = wrapped_kind(model)
        if kind is not None and spec.wrap is not None:
            raise UsageError(f"the target is already wrapped ({kind}): leave --wrap out, it is measured as it is")
        kind = kind or spec.wrap
        if kind is None:
            raise UsageError("--world-size needs a wrapped model: add --wrap fsdp (with --shard GLOB) or --wrap "
                             "ddp, or give a factory that wraps the model itself")
        check_mesh(model, world_size)
        args, kwargs, batch = _inputs(example, spec.batch)
        prepare_wrap(model, kind, spec)  # on meta, outside the fake mode (FSDP2 reads sizes as Python numbers)
        with _fake_mode(spec.estimate):
            model, buckets = materialise(model, kind, spec.estimate, args, kwargs)
            fit = _measure(model, kind, args, kwargs, loss, example, spec, buckets)
    from dataclasses import replace

    return replace(fit, world_size=world_size, local_batch=batch, seconds=time.perf_counter() - start)


def _build_error(exc: GradprobeError, world_size: int) -> GradprobeError:
    """The loader's one line, with what --world-size needs of the build."""
    text = str(exc)
    if "mesh" in text.lower():
        return type(exc)(f"{text}; the target's device mesh does not fit --world-size {world_size}: choose a "
                         f"world size its mesh shape multiplies to")
    if "meta" in text:
        return type(exc)(f"{text}; --world-size builds the model on the meta device (nothing allocated): build it "
                         f"without reading parameter values (load weights afterwards)")
    return exc


@contextlib.contextmanager
def _fake_mode(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


def _inputs(example: Any, batch: int | None) -> tuple[tuple[Any, ...], dict[str, Any], int | None]:
    """The example inputs on the CPU (their values where loading kept them), cut to ``batch`` rows."""
    args, kwargs = example.host if example.host is not None else (example.args, example.kwargs)

    def cpu(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.device.type != "meta":
            return t
        return torch.zeros(t.shape, dtype=t.dtype) if not t.is_floating_point() else torch.randn(t.shape).to(t.dtype)

    args, kwargs = tree_map(cpu, (tuple(args), dict(kwargs)))
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() > 0]
    loaded = tensors[0].shape[0] if tensors else None
    if batch is None or loaded is None or batch == loaded:
        return args, kwargs, loaded

    def cut(t: Any) -> Any:
        return t[:batch].clone() if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == loaded else t

    args, kwargs = tree_map(cut, (args, kwargs))
    return args, kwargs, batch


def _optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer | None:
    """The optimizer, its state already allocated (as in every step after the first).

    One step on zero gradients would do it, at ~14 ops per parameter through DTensor and the fake-tensor mode.
    Instead the state is made directly (:func:`initial_state`), and a throw-away optimizer takes that one step
    on a single parameter of each kind (shape, strides, dtype, sharding): what the step leaves behind besides
    the state (DTensor's sharding-propagation cache and the fake-tensor dispatch cache, whose misses allocate
    tensors the tracker would count in the measured step) is then the same as after a step on every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    if name not in OPTIMIZERS:
        raise UsageError(f"--optimizer-state '{name}': use sgd, momentum or adam")
    make = _make_optimizer(name)
    _first_step(make, params)
    opt = make(params)
    initial_state(opt)
    return opt


def _make_optimizer(name: str) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    if name == "adam":
        return lambda params: torch.optim.Adam(params, lr=1e-3)
    momentum = 0.9 if name == "momentum" else 0.0
    return lambda params: torch.optim.SGD(params, lr=1e-3, momentum=momentum)


def _first_step(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], params: list[torch.Tensor]) -> None:
    """One step on zero gradients of one parameter per kind, its optimizer and state then dropped."""
    kinds: dict[Any, torch.Tensor] = {}
    for p in params:
        kinds.setdefault(_kind(p), p)
    chosen = list(kinds.values())
    try:
        for p in chosen:
            p.grad = torch.zeros_like(p)
        make(chosen).step()
    finally:
        for p in chosen:
            p.grad = None


def _kind(p: torch.Tensor) -> Any:
    """What an optimizer step's ops depend on besides values: the tensor's metadata and its DTensor sharding."""
    local = getattr(p, "_local_tensor", p)  # a DTensor's shard (to_local() is an autograd op: slower)
    mesh = getattr(p, "device_mesh", None)
    return (type(p), tuple(p.shape), p.stride(), p.dtype, p.device, tuple(getattr(p, "placements", ())),
            None if mesh is None else id(mesh), tuple(local.shape), local.stride(), local.dtype, local.device)


def initial_state(opt: torch.optim.Optimizer) -> None:
    """The state torch.optim's Adam and SGD(momentum) hold after their first step (their own lazy
    initialisation: Adam's ``step`` a CPU scalar holding 1, ``exp_avg``/``exp_avg_sq`` ``zeros_like`` the
    parameter; SGD's ``momentum_buffer`` a clone of the zero gradient), allocated without the step."""
    from torch.optim.optimizer import _get_scalar_dtype

    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if isinstance(opt, torch.optim.Adam):
                state["step"] = torch.tensor(1.0, dtype=_get_scalar_dtype(), device="cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif isinstance(opt, torch.optim.SGD) and group["momentum"] != 0:
                state["momentum_buffer"] = torch.zeros_like(p).detach()


def _measure(model: nn.Module, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], loss: Any,
             example: Any, spec: StepSpec, buckets: int) -> RankFit:
    return measure_step(model, kind, args, kwargs, loss, spec, buckets=buckets, source=example.source,
                        inputs_type=type(example))


def measure_step(model: nn.Module, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], loss: Any,
                 spec: StepSpec, *, buckets: int = 0, source: str = "", inputs_type: Any = None,
                 backend_bytes: list[int] | None = None) -> RankFit:
    """One training step of an already wrapped, materialised model, measured: the part a real torchrun rank
    and the simulation share (tests run it under torchrun on gloo to check the simulation against it)."""
    from gradprobe.run.flatten import flatten_tensors
    from gradprobe.run.loss import make_loss

    make_inputs = inputs_type or StepInputs
    opt = _optimizer(model, spec.optimizer)
    inputs = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    tracker = make_tracker(model, opt, tuple(inputs))
    tracker.extra = {"allreduce_buckets": buckets} if buckets else {}
    if kind == "ddp" and spec.estimate:  # DDP's own copy of the gradients, which the plain model lacks
        copy = {"temporaries": buckets}
        tracker.extra_by_phase = {"backward": copy, "optimizer": copy}
    saved = SavedByModule(getattr(model, "module", model) if kind == "ddp" else model, tracker)
    try:
        with tracker:
            tracker.set_phase("forward")
            with saved.install():
                out = model(*args, **kwargs)
                value = make_loss(loss, out, flatten_tensors(out), make_inputs(args, kwargs, source))
            if value is None:
                raise RunError("the model's outputs hold no floating tensor to backpropagate: pass --loss")
            tracker.set_phase("backward")
            value.backward()
            del value, out
            if opt is not None:
                tracker.set_phase("optimizer")
                opt.step()
    except GradprobeError:
        raise
    except Exception as exc:
        raise RunError(f"the training step raised {describe_exception(exc)}") from exc
    if backend_bytes is not None:  # what a real process group allocated out of the tracker's view (gloo)
        backend_bytes += tracker.backend_bytes
    return RankFit(world_size=0, rank=0, method="estimated" if spec.estimate else "simulated", wrapper=kind,
                   units=_units(model), local_batch=None, phases=tracker.phases(), saved_by_module=saved.facts(),
                   checkpointed=spec.checkpoint, reshard_after_forward=_reshards(model),
                   mixed_precision=_mixed_precision(model))


def _units(model: nn.Module) -> tuple[str, ...]:
    from torch.distributed.fsdp import FSDPModule

    return tuple(name for name, m in model.named_modules() if isinstance(m, FSDPModule))


def _reshards(model: nn.Module) -> bool | None:
    """Whether the non-root FSDP units free their unsharded parameters after forward (None: no FSDP units)."""
    from torch.distributed.fsdp import FSDPModule

    values = []
    for name, m in model.named_modules():
        if name and isinstance(m, FSDPModule):
            group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)
            if group is not None:
                values.append(group.post_forward_mesh_info is not None)
    return all(values) if values else None


def _mixed_precision(model: nn.Module) -> tuple[str | None, str | None] | None:
    """(param_dtype, reduce_dtype) of the FSDP2 units' MixedPrecisionPolicy, as dtype names (None: the
    parameter's own dtype); None when no unit sets either (or no FSDP units)."""
    from torch.distributed.fsdp import FSDPModule

    policies = set()
    for m in model.modules():
        if isinstance(m, FSDPModule):
            group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)
            policy = getattr(group, "mp_policy", None)
            if policy is not None:
                policies.add(tuple(str(d).removeprefix("torch.") if d is not None else None
                                   for d in (policy.param_dtype, policy.reduce_dtype)))
    if not policies or policies == {(None, None)}:
        return None
    param, reduce = sorted(policies, key=str)[0] if len(policies) == 1 else ("mixed", "mixed")
    return param, reduce

