"""One probe run in one mode: snapshot → trackers on → forward → loss → backward → facts → restore.

The engine produces facts and judges nothing.  It owns every torch-side
measurement and guarantees the model is restored, also when the run raises.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, UsageError, describe_exception
from gradprobe.facts.run import (
    BufferFact,
    GraphFact,
    MemoryFact,
    ModuleFact,
    ParamFact,
    RunFacts,
)
from gradprobe.load.inputs import ExampleInputs
from gradprobe.run.flatten import describe_leaf_types, flatten_tensors
from gradprobe.run.state import ModelState, check_mode, clear_grads, grad_context, table_get
from gradprobe.run.trackers.cuts import CutTracker
from gradprobe.run.trackers.grads import grad_states, stored_bytes
from gradprobe.run.trackers.graph import walk_graph
from gradprobe.run.trackers.memory import LiveBytesTracker, storage_key
from gradprobe.run.trackers.meta import explain_meta_failure, meta_failure_message, meta_fidelity
from gradprobe.run.trackers.modules import ModuleRecorder, dtype_name, tensor_fact
from gradprobe.run.trackers.release import release_on_big_stack
from gradprobe.run.trackers.saved import SavedTensorTracker, module_memory

LossFn = Callable[[Any, ExampleInputs], torch.Tensor]

_TRAINING_DEPENDENT: tuple[type, ...] = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass
class ProbeOptions:
    """How to run: the mode pair, the loss, and which trackers to switch on."""

    mode: str = "train"
    grad_mode: str = "grad"
    loss: str | LossFn = "sum"
    backward: bool = True
    memory: bool = True
    tensors: bool = True
    graph: bool = True
    tree_depth: int = 8
    seed: int | None = 0
    keep_outputs: bool = False


@dataclass
class ProbeResult:
    """Facts plus, on request, detached copies of the outputs (compare-modes diffs them)."""

    facts: RunFacts
    outputs: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    raw_output: Any = None


def param_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(param)`` → every qualified name it has (tied parameters have several), in model order."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        known = names.setdefault(id(param), [])
        if name not in known:  # an overridden named_parameters may yield the same (name, param) twice
            known.append(name)
    return names


def _owners(model: nn.Module) -> dict[int, str]:
    """``id(param)`` → qualified name of the first module owning it directly."""
    owners: dict[int, str] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for param in mod._parameters.values():
            if param is not None:
                owners.setdefault(id(param), mod_name)
    return owners


def _is_training_dependent(mod: nn.Module) -> bool:
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        return bool(mod.track_running_stats)
    if isinstance(mod, nn.RNNBase):
        return mod.dropout > 0
    return isinstance(mod, _TRAINING_DEPENDENT)


def sum_loss(outputs: list[tuple[str, torch.Tensor]], reduce: str) -> torch.Tensor | None:
    terms = []
    for _, t in outputs:
        if t.is_nested:  # sum/mean are not implemented for nested tensors; their elements are values()
            t = t.values()
        if t.is_floating_point():
            value = t.float()
        elif t.is_complex():
            value = t.real.float()
        else:
            continue
        if reduce == "mean":  # sparse tensors have no mean(): average over every element, zeros included
            terms.append(value.mean() if value.layout == torch.strided else value.sum() / max(1, value.numel()))
        else:
            terms.append(value.sum())
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _buffer_changed(buf: torch.Tensor | None, before: torch.Tensor | None, version: int | None) -> bool | None:
    if buf is None:
        return None
    if before is None:  # meta: values unknown, an in-place update still bumps the version counter
        return None if version is None else buf._version != version
    if buf.shape != before.shape or buf.dtype != before.dtype:
        return True
    if buf.is_floating_point() or buf.is_complex():
        return not torch.equal(torch.nan_to_num(buf), torch.nan_to_num(before)) or not torch.equal(
            torch.isnan(buf), torch.isnan(before))
    return not torch.equal(buf, before)


def _nonfinite(outputs: list[tuple[str, torch.Tensor]]) -> tuple[str, ...]:
    bad = []
    for path, t in outputs:
        if t.device.type == "meta" or not (t.is_floating_point() or t.is_complex()):
            continue
        if not bool(torch.isfinite(_elements(t)).all()):
            bad.append(path)
    return tuple(bad)


def _elements(t: torch.Tensor) -> torch.Tensor:
    """The stored elements of a sparse or nested tensor as a dense one (elementwise checks need strided)."""
    if t.is_sparse:
        return t._values()
    if t.is_nested or t.layout != torch.strided:
        return t.values()
    return t


def run_probe(model: nn.Module, inputs: ExampleInputs, options: ProbeOptions, target: str = "") -> ProbeResult:
    """Run ``model`` once in the requested mode and collect the facts; the model is restored afterwards."""
    check_mode(options.mode, options.grad_mode)
    state = ModelState.capture(model)
    ambient_grad = state.grad_enabled
    # inputs that require grad receive gradients too: put their .grad back as well
    input_grads = [(t, t.grad) for _, t in flatten_tensors((inputs.args, inputs.kwargs)) if t.requires_grad]
    # _run moves every tensor that owns the autograd graph here: a walked deep graph must be freed on a big stack
    owners = _GraphOwners()
    try:
        for tensor, _ in input_grads:  # so backward never accumulates into the user's gradient
            tensor.grad = None
        return _run(model, inputs, options, target or type(model).__name__, state, ambient_grad, owners)
    except BaseException as exc:
        if owners.refs:  # the traceback's frames hold the graph too: clear them there as well
            release_on_big_stack(owners.refs, exc)
        raise
    finally:
        state.restore()
        for tensor, grad in input_grads:
            tensor.grad = grad
        if owners.shallow:
            owners.refs.clear()
        else:
            release_on_big_stack(owners.refs)


_SHALLOW_DEPTH = 10_000  # freeing recurses ~205 B of C stack per level: 10k levels fit the main thread's 8 MiB


@dataclass
class _GraphOwners:
    """The tensors that own the run's autograd graph, and whether freeing it here is safe."""

    refs: list[Any] = field(default_factory=list)
    shallow: bool = False  # walked, and at most _SHALLOW_DEPTH deep: no thread with a big stack is needed


def _seed(seed: int, device: torch.device) -> None:
    """torch.manual_seed also seeds every lazy accelerator backend (formatting a stack trace each, ~0.4 ms):
    a CPU or meta run needs only the CPU generator."""
    if device.type in ("cpu", "meta"):
        torch.random.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _run(model: nn.Module, inputs: ExampleInputs, options: ProbeOptions, target: str,
         state: ModelState, ambient_grad: bool, owners: _GraphOwners) -> ProbeResult:
    names = param_names(model)
    canonical = {pid: ns[0] for pid, ns in names.items()}
    params = {id(p): p for p in model.parameters()}
    if options.seed is not None:
        _seed(options.seed, next(iter(params.values())).device if params else torch.device("cpu"))
    model.train(options.mode == "train")
    clear_grads(model)
    buffer_versions = {id(buf): buf._version for _, _, buf, _ in state.buffers if buf is not None}
    # cloning every parameter per run would double the probe's cost; the version counter tells us cheaply
    # whether the forward wrote into one (an in-place EMA, weight normalisation), which no restore can undo
    param_versions = {pid: p._version for pid, p in params.items()}
    model_state_tensors = list(params.values()) + [b for _, _, b, _ in state.buffers if b is not None]
    input_tensors = [t for _, t in flatten_tensors((inputs.args, inputs.kwargs))]
    device = device_of(model, input_tensors)
    skipped: list[str] = []
    if not options.memory:
        skipped.append("memory (--no-memory)")
    if not options.tensors:
        skipped.append("module output tensors (--no-tensors)")

    recorder = ModuleRecorder(model, record_tensors=options.tensors, record_inputs=options.memory)
    live = LiveBytesTracker(known=model_state_tensors + input_tensors) if options.memory else None
    saved = SavedTensorTracker(exclude=model_state_tensors, stack=recorder.stack, inputs=recorder.inputs) \
        if options.memory and options.grad_mode == "grad" else None
    cuts = CutTracker(model, canonical, cuts=options.grad_mode == "grad")  # where forward cuts the graph
    # on meta, ops take the kernels (and give the outputs) a CPU run would: see gradprobe.run.trackers.meta
    kernels = meta_fidelity() if device.type == "meta" else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # ---- forward
    t0 = time.perf_counter()
    try:
        with recorder, grad_context(options.grad_mode), kernels as fidelity, cuts:
            if live is not None:
                live.__enter__()
            try:
                if saved is not None:
                    with saved:
                        output = model(*inputs.args, **inputs.kwargs)
                else:
                    output = model(*inputs.args, **inputs.kwargs)
            finally:
                if live is not None:
                    live.__exit__(None, None, None)
    except (KeyboardInterrupt, RunError):
        raise
    except SystemExit as exc:
        raise RunError(f"forward of {target} called sys.exit({exc.code!r}); a model must not exit the process",
                       phase="forward") from exc
    except Exception as exc:
        where = recorder.failed_in
        module = _module_label(model, where[0] if where else "")
        value_op = explain_meta_failure(exc) if device.type == "meta" else None
        if value_op is not None:
            raise RunError(meta_failure_message(value_op, module), phase="forward") from exc
        raise RunError(
            f"forward raised in {'module ' if where and where[0] else ''}{module}: {describe_exception(exc)}; "
            f"inputs: {inputs.describe()}", phase="forward", debug_hint=True,
        ) from exc
    forward_time = time.perf_counter() - t0
    forward_peak = live.peak if live is not None else None

    flat_out = flatten_tensors(output)
    owners.refs += (output, flat_out)  # with the loss: the last owners of the graph, freed by run_probe
    if not flat_out:
        raise RunError(f"forward of {target} returned {describe_leaf_types(output)}, not tensors; "
                       f"return the output tensor(s) (a tensor, tuple, dict or dataclass of tensors)")
    output_facts = tuple(tensor_fact("", 0, path, t) for path, t in flat_out)
    nonfinite = _nonfinite(flat_out)

    # ---- loss
    with torch.enable_grad():
        loss = _make_loss(options.loss, output, flat_out, inputs)
    owners.refs.append(loss)
    loss_value: float | None = None
    if loss is not None and loss.device.type != "meta":
        loss_value = float(loss.detach())

    reason = _backward_blocker(options, loss, flat_out)
    graph: GraphFact | None = None
    if loss is not None and loss.grad_fn is not None and options.graph:
        graph = walk_graph([loss.grad_fn], canonical, tree_depth=max(1, options.tree_depth))
        owners.shallow = graph.depth <= _SHALLOW_DEPTH
        if options.tree_depth == 0:  # --depth 0: counts only, no tree
            graph = replace(graph, tree=None)

    backward_peak = None
    backward_time = None
    did_backward = False
    if reason is None and loss is not None:
        t1 = time.perf_counter()
        if live is not None:
            live.reset_peak()
            live.__enter__()
        try:
            loss.backward()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise RunError(f"backward raised: {describe_exception(exc).rstrip('.')}; the forward of {target} ran, "
                           f"the gradient computation failed", phase="backward", debug_hint=True) from exc
        finally:
            if live is not None:
                live.__exit__(None, None, None)
        backward_time = time.perf_counter() - t1
        backward_peak = live.peak if live is not None else None
        did_backward = True

    # ---- facts (outside every tracker)
    owner_of = _owners(model)  # not `owners`: that is the graph holder run_probe frees
    training = {name: mod.training for name, mod in model.named_modules(remove_duplicate=False)}
    param_facts = []
    grad_bytes = 0
    states = iter(grad_states(list(params.values())) if did_backward else ())
    for pid, param in params.items():
        grad, norm = next(states) if did_backward else (None, None)
        if param.grad is not None:
            grad_bytes += stored_bytes(param.grad)
        owner = owner_of.get(pid, "")
        all_names = names[pid]
        param_facts.append(ParamFact(
            name=all_names[0], aliases=tuple(all_names[1:]), shape=tuple(param.shape),
            dtype=dtype_name(param.dtype), requires_grad=param.requires_grad, grad=grad, grad_norm=norm,
            module=owner, module_training=training.get(owner, model.training), numel=param.numel(),
            nbytes=param.numel() * param.element_size(),
        ))
    buffer_facts = []
    for mod, bname, buf, before in state.buffers:
        mod_name = recorder.names.get(id(mod), "")
        current = table_get(mod._buffers, bname)
        full = f"{mod_name}.{bname}" if mod_name else bname
        if buf is None and current is None:
            continue  # a None slot (BatchNorm without running stats) is no buffer: state_dict has no entry
        if buf is None:
            changed: bool | None = True  # the forward created it
        elif current is not buf:
            # reassigned (not in-place): changed only if the values differ; on meta values are unknown
            changed = True if before is None or current is None else _buffer_changed(current, before, None)
        else:
            changed = _buffer_changed(current, before, buffer_versions.get(id(buf)))
            if changed is False and fidelity is not None and storage_key(current) in fidelity.written:
                changed = True  # written on meta by a kernel that does not bump the version (BatchNorm stats)
        shape = tuple(current.shape) if current is not None else ()
        buffer_facts.append(BufferFact(full, shape, dtype_name(current.dtype) if current is not None else "none",
                                       changed, mod_name))
    module_facts = []
    for mod_name, mod in model.named_modules():
        attr = mod.__dict__.get("requires_grad")
        module_facts.append(ModuleFact(
            name=mod_name, type=type(mod).__name__, training=mod.training, calls=recorder.calls.get(mod_name, 0),
            direct_params=tuple(canonical[id(p)] for p in mod._parameters.values() if p is not None),
            requires_grad_attr=attr if isinstance(attr, bool) else None,
            training_dependent=_is_training_dependent(mod),
            output_grad_fn=recorder.graph_outputs.get(mod_name),
        ))
    memory = None
    if live is not None:
        memory = MemoryFact(
            method=f"tensor storage bytes via TorchDispatchMode on {device.type}"
                   + (" (estimate: no memory allocated)" if device.type == "meta" else ""),
            forward_peak_bytes=forward_peak,
            backward_peak_bytes=backward_peak,
            saved_for_backward_bytes=saved.total_bytes if saved is not None else 0,
            parameter_bytes=sum(p.numel() * p.element_size() for p in params.values()),
            gradient_bytes=grad_bytes if did_backward else None,
            cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            by_module=module_memory(saved, recorder.output_bytes),
        )
    facts = RunFacts(
        target=target, torch_version=torch.__version__, device=str(device), mode=options.mode,
        grad_mode=options.grad_mode, backward=did_backward, backward_skipped_reason=reason, loss=loss_value,
        parameters=tuple(param_facts), buffers=tuple(buffer_facts), modules=tuple(module_facts),
        tensors=tuple(recorder.tensors),
        outputs=output_facts, graph=graph, memory=memory, global_grad_enabled=ambient_grad,
        forward_time_s=forward_time, backward_time_s=backward_time, skipped=tuple(skipped),
        nonfinite_outputs=nonfinite,
        modified_parameters=tuple(names[pid][0] for pid, p in params.items() if p._version != param_versions[pid]),
    )
    facts = cuts.apply(facts)
    kept = [(p, t.detach().clone() if t.device.type != "meta" else t.detach()) for p, t in flat_out] \
        if options.keep_outputs else []
    return ProbeResult(facts, kept)


def device_of(model: nn.Module, inputs: list[torch.Tensor]) -> torch.device:
    """Where the model lives: its first parameter, else buffer, else input; CPU for an empty model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    for t in inputs:
        return t.device
    return torch.device("cpu")


def _module_label(model: nn.Module, name: str) -> str:
    mod = dict(model.named_modules(remove_duplicate=False)).get(name)
    kind = type(mod).__name__ if mod is not None else "?"
    return f"'{name}' ({kind})" if name else f"the model itself ({kind})"


def _make_loss(spec: str | LossFn, output: Any, flat_out: list[tuple[str, torch.Tensor]],
               inputs: ExampleInputs) -> torch.Tensor | None:
    if spec in ("sum", "mean"):
        return sum_loss(flat_out, str(spec))
    if isinstance(spec, str):
        raise UsageError(f"--loss '{spec}' is not a loss; use sum, mean or module:fn")
    try:
        loss = spec(output, inputs.as_user_value())
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise RunError(f"the loss function raised {describe_exception(exc)}") from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise RunError(f"the loss function returned {got}; return a scalar tensor (e.g. outputs.sum())")
    return loss if loss.dim() == 0 else loss.reshape(())  # no gradprobe-made ViewBackward0 atop the user's graph


def _backward_blocker(options: ProbeOptions, loss: torch.Tensor | None,
                      flat_out: list[tuple[str, torch.Tensor]]) -> str | None:
    if options.grad_mode == "no_grad":
        return "the forward ran under no_grad: no graph was built"
    if options.grad_mode == "inference_mode":
        return "the forward ran under inference_mode: outputs are inference tensors and no graph was built"
    if loss is None:
        return "the model returned no floating-point tensor to build a loss from"
    if not loss.requires_grad:
        if any(t.is_inference() for _, t in flat_out):
            return ("the outputs are inference tensors (torch.inference_mode() inside forward, or a cached "
                    "inference tensor): no graph was built")
        return ("no output requires grad: every parameter is frozen, or the graph is cut inside forward "
                "(no_grad, detach)")
    if not options.backward:
        return "skipped by --no-backward"
    return None
