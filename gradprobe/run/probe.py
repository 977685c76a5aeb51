"""One probe run in one mode: snapshot → forward → loss and graph → backward → facts → restore.

The engine produces facts and judges nothing.  It owns every torch-side measurement and guarantees
the model is restored, also when the run raises.  The phases install the run's trackers
(:mod:`gradprobe.run.trackers.setup` says which, :mod:`gradprobe.run.trackers.base` how); the fact
builders (:mod:`gradprobe.run.builders`) turn what they saw into :class:`~gradprobe.facts.run.RunFacts`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, describe_exception
from gradprobe.facts.grad_health import GradThresholds
from gradprobe.facts.run import GradState, GraphFact, MemoryFact, RunFacts
from gradprobe.run import builders
from gradprobe.run.builders import named_params, names_by_id, param_names
from gradprobe.run.flatten import describe_leaf_types, flatten_tensors
from gradprobe.run.gc_pause import gc_paused
from gradprobe.run.inputs import RunInputs as ExampleInputs
from gradprobe.run.loss import LossFn, backward_blocker, make_loss, nonfinite, output_versions, proven_finite, sum_loss
from gradprobe.run.state import (
    ModelState,
    apply_training,
    check_mode,
    grad_context,
    inference_state,
    refuses_inference_tensors,
    seed_generators,
)
from gradprobe.run.timing import clock, lap
from gradprobe.run.trackers.base import BACKWARD, FORWARD
from gradprobe.run.trackers.events import call_tree, run_event_log
from gradprobe.run.trackers.experts import find_fused_experts
from gradprobe.run.trackers.graph import walk_graph
from gradprobe.run.trackers.host_values import HostInputs, NoHostValues, input_values
from gradprobe.run.trackers.meta import explain_meta_failure, meta_failure_message
from gradprobe.run.trackers.modules import tensor_fact
from gradprobe.run.trackers.release import release_on_big_stack
from gradprobe.run.trackers.setup import RunTrackers, make_trackers
from gradprobe.run.trackers.writes import ParamWriteGuard
from gradprobe.run.trackers.zero_factor import zero_factor_partners

__all__ = ["LossFn", "ProbeOptions", "ProbeResult", "RunSetup", "capture_state", "device_of", "module_phrase",
           "param_names", "prepare_runs", "run_probe", "sum_loss"]

_SHALLOW_DEPTH = 10_000  # freeing recurses ~205 B of C stack per level: 10k levels fit the main thread's 8 MiB


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
    tree_depth: int = 8  # levels of the graph a display shows (GraphFact.display_depth); 0: counts only
    seed: int | None = 0
    grads: GradThresholds | None = None  # --grads: gradient health with these thresholds (None: off)
    memory_detail: bool = False  # record the memory event log: peak anatomy and timeline (issue 14)
    # graph cuts and parameters read: a TorchFunctionMode over every torch call of the forward (5-7 µs each);
    # compare-modes' rows read neither, so its tracked runs switch it off (issue 16)
    cuts: bool = True
    # only the facts a compare-modes row reads (outputs, graph node count, memory peaks and saved bytes, buffers
    # changed); parameters, modules, leaves, per-module memory and the non-finite check are left empty (issue 16)
    row_facts: bool = False
    # the module call stack during the forward (global module hooks, ~0.2 ms a tiny GPT-2 forward): it names the
    # module a failing forward raised in.  Off (compare-modes' rows, off meta), a failing forward must be run
    # again with it on for that message (rows.py does); the stack is kept on meta either way (issue 16)
    module_calls: bool = True


@dataclass
class ProbeResult:
    """The facts of one run."""

    facts: RunFacts


@dataclass
class _GraphOwners:
    """The tensors that own the run's autograd graph, and whether freeing it here is safe."""

    refs: list[Any] = field(default_factory=list)
    shallow: bool = False  # walked, and at most _SHALLOW_DEPTH deep: no thread with a big stack is needed


@dataclass
class _Run:
    """What the phases of one run share."""

    model: nn.Module
    inputs: ExampleInputs
    options: ProbeOptions
    target: str
    state: ModelState
    guard: ParamWriteGuard
    owners: _GraphOwners
    device: torch.device
    trackers: RunTrackers
    before: dict[str, nn.Parameter]  # parameters by name as handed over
    after: dict[str, nn.Parameter] = field(default_factory=dict)  # as the forward left them
    names: dict[int, list[str]] = field(default_factory=dict)  # id(param) -> names, after the forward
    notes: list[str] = field(default_factory=list)
    forward_time: float | None = None
    backward_time: float | None = None
    proven_finite: dict[int, int] = field(default_factory=dict)  # outputs the default loss proved finite
    input_tensors: list[torch.Tensor] = field(default_factory=list)


@dataclass
class RunSetup:
    """What a run derives from the model before anything of the user's runs: its state, parameters by name,
    the module walk, device, canonical names, the tensors that cost no new bytes, the fused experts.

    Runs that each start from exactly the model :func:`prepare_runs` saw (compare-modes' tracked rows: every
    one restores the state the first captured, registrations included) share one instead of walking the
    model again per run (issue 16).
    """

    state: ModelState
    input_tensors: list[torch.Tensor]
    before: dict[str, nn.Parameter]  # read only
    device: torch.device
    named: list[tuple[str, nn.Module]]  # model.named_modules(remove_duplicate=False)
    canonical: dict[int, str]  # id(param) -> its first name
    state_tensors: list[torch.Tensor]  # parameters (once each) and buffers
    fused: list[Any]  # find_fused_experts(named)
    # each module's flag after model.train() ("train") and model.eval() ("eval"), asked once: set directly
    # instead of a recursive train() call per run (None: each run calls model.train())
    mode_flags: Mapping[str, Sequence[tuple[nn.Module, bool]]] | None = None


def prepare_runs(model: nn.Module, inputs: ExampleInputs,
                 mode_flags: Mapping[str, Sequence[tuple[nn.Module, bool]]] | None = None) -> RunSetup:
    """The :class:`RunSetup` of ``model`` as it is now, for runs that each start from this state (``mode_flags``:
    see :attr:`RunSetup.mode_flags`)."""
    input_tensors = [t for _, t in flatten_tensors((inputs.args, inputs.kwargs))]
    before = named_params(model)
    state = capture_state(model, input_tensors)
    named = list(model.named_modules(remove_duplicate=False))
    return RunSetup(state, input_tensors, before, device_of(model, input_tensors, list(before.values())), named,
                    {pid: ns[0] for pid, ns in names_by_id(before).items()}, _state_tensors(before, state),
                    find_fused_experts(named), mode_flags)


def _state_tensors(before: dict[str, nn.Parameter], state: ModelState) -> list[torch.Tensor]:
    return list({id(p): p for p in before.values()}.values()) + [b for _, _, b, _ in state.buffers if b is not None]


def run_probe(model: nn.Module, inputs: ExampleInputs, options: ProbeOptions, target: str = "", *,
              state: ModelState | None = None, setup: RunSetup | None = None) -> ProbeResult:
    """Run ``model`` once in the requested mode and collect the facts; the model is restored afterwards.

    ``state``: the model's state as :func:`capture_state` took it, when the caller knows the model is exactly
    in that state now (compare-modes puts it back before every run): the run restores it and skips capturing
    its own.  Never on the meta device, where buffer facts read the version counters of this run's start.
    ``setup``: likewise, everything :func:`prepare_runs` derived from the model in that state (``state`` too).
    """
    if options.grads is None:
        return _run_probe(model, inputs, options, target, state, setup)
    with gc_paused():
        return _run_probe(model, inputs, options, target, state, setup)


def _run_probe(model: nn.Module, inputs: ExampleInputs, options: ProbeOptions, target: str,
               state: ModelState | None, setup: RunSetup | None) -> ProbeResult:
    t0 = clock()
    check_mode(options.mode, options.grad_mode)
    if setup is not None:
        input_tensors, before, state = setup.input_tensors, setup.before, setup.state
    else:
        input_tensors = [t for _, t in flatten_tensors((inputs.args, inputs.kwargs))]
        before = named_params(model)
    if state is None:
        state = capture_state(model, input_tensors)
    guard = ParamWriteGuard(before.values())  # copies a parameter before the run first writes into it
    owners = _GraphOwners()  # every tensor that owns the autograd graph: a walked deep graph is freed on a big stack
    try:
        state.clear_grads()  # backward never accumulates into the user's gradients
        run = _start(model, inputs, options, target or type(model).__name__, state, guard, owners, input_tensors,
                     before, setup)
        lap("setup", t0)
        return ProbeResult(_run(run))
    except BaseException as exc:
        if owners.refs:  # the traceback's frames hold the graph too: clear them there as well
            release_on_big_stack(owners.refs, exc)
        raise
    finally:
        t0 = clock()
        try:
            state.restore()
        finally:
            guard.undo()
            if owners.shallow:
                owners.refs.clear()
            else:
                release_on_big_stack(owners.refs)
            lap("restore", t0)


def capture_state(model: nn.Module, input_tensors: list[torch.Tensor]) -> ModelState:
    """What a run restores: the model's state, and the inputs that require grad (they receive gradients too:
    their ``.grad`` comes back with the model's state)."""
    return ModelState.capture(model, extra=[t for t in input_tensors if t.requires_grad])


def _start(model: nn.Module, inputs: ExampleInputs, options: ProbeOptions, target: str, state: ModelState,
           guard: ParamWriteGuard, owners: _GraphOwners, input_tensors: list[torch.Tensor],
           before: dict[str, nn.Parameter], setup: RunSetup | None = None) -> _Run:
    """Seed, set the mode, and build the trackers, before anything of the user's runs."""
    if options.seed is not None:
        first = next(iter(before.values()), None)
        seed_generators(options.seed, first.device if first is not None else torch.device("cpu"))
    if setup is not None and setup.mode_flags is not None:
        apply_training(setup.mode_flags[options.mode])
    else:
        model.train(options.mode == "train")
    if setup is not None:
        device, named, canonical, state_tensors = setup.device, setup.named, setup.canonical, setup.state_tensors
    else:
        device = device_of(model, input_tensors, list(before.values()))
        named = list(model.named_modules(remove_duplicate=False))  # one walk for every tracker (issue 16)
        state_tensors = _state_tensors(before, state)
        canonical = {pid: ns[0] for pid, ns in names_by_id(before).items()}
    trackers = make_trackers(model, device, memory=options.memory, tensors=options.tensors,
                             grad=options.grad_mode == "grad", guard=guard, names=canonical,
                             # a compare-modes no_grad row too: a forward may enable grad inside and save
                             # tensors (the hooks cost nothing until autograd saves one)
                             saved=options.grad_mode == "grad"
                             or (options.row_facts and options.grad_mode == "no_grad"),
                             state_tensors=state_tensors, input_tensors=input_tensors, grads=options.grads,
                             depth=options.tree_depth, events=options.memory_detail,
                             host_inputs=_host_values(inputs, device), cuts=options.cuts,
                             rows=options.row_facts, named=named, module_calls=options.module_calls,
                             fused=setup.fused if setup is not None else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return _Run(model, inputs, options, target, state, guard, owners, device, trackers, before,
                input_tensors=input_tensors)


def _host_values(inputs: ExampleInputs, device: torch.device) -> HostInputs:
    """On meta: each input with its CPU copy (``inputs.host``, kept where the inputs were moved from the CPU),
    and the meta inputs without one."""
    if device.type != "meta":
        return [], []
    return input_values(inputs.args, inputs.kwargs, getattr(inputs, "host", None))


def _run(run: _Run) -> RunFacts:
    t0 = clock()
    output = forward(run)
    t0 = lap("forward", t0)
    flat_out, loss, graph = loss_and_graph(run, output)
    t0 = lap("loss", t0)
    reason = backward_blocker(run.options.grad_mode, run.options.backward, loss, flat_out)
    did_backward = backward(run, loss) if reason is None and loss is not None else False
    t0 = lap("backward", t0)
    loss_value = float(loss.detach()) if loss is not None and loss.device.type != "meta" else None
    if run.options.row_facts:
        facts = _row_facts(run, flat_out, loss_value, graph, did_backward, reason)
        lap("facts", t0)
        return facts
    run.proven_finite = proven_finite(run.proven_finite, loss_value)
    facts = _facts(run, flat_out, loss_value, graph, did_backward, reason)
    if did_backward and loss is not None:
        facts = _zero_partners(run, loss, facts)
    lap("facts", t0)  # grad_states and nonfinite included
    return facts


def _zero_partners(run: _Run, loss: torch.Tensor, facts: RunFacts) -> RunFacts:
    """Exactly zero gradients explained by an all-zero factor they are multiplied with (LoRA's B)."""
    zero = [p.name for p in facts.parameters if p.requires_grad and p.grad is GradState.ZERO]
    if not zero:
        return replace(facts, zero_grad_partners=())
    canonical = {pid: ns[0] for pid, ns in run.names.items()}
    params = [p for p in {id(p): p for p in run.after.values()}.values() if p.requires_grad]
    return replace(facts, zero_grad_partners=zero_factor_partners([loss.grad_fn], canonical, zero, params))


def forward(run: _Run) -> Any:
    """The user's forward, every forward tracker installed; a failure becomes one RunError line."""
    model, inputs = run.model, run.inputs
    t0 = time.perf_counter()
    try:
        with grad_context(run.options.grad_mode), run.trackers.installed(FORWARD):
            output = model(*inputs.args, **inputs.kwargs)
    except (KeyboardInterrupt, RunError):
        raise
    except SystemExit as exc:
        raise RunError(f"forward of {run.target} called sys.exit({exc.code!r}); a model must not exit the "
                       f"process", phase="forward") from exc
    except Exception as exc:
        where = run.trackers.recorder.failed_in
        failed = where[0] if where else ""
        kind = _module_kind(model, failed)
        module = _module_label(failed, kind)
        values = _no_host_values(exc)
        if values is not None:
            raise RunError(f"forward on the meta device failed in module {module}: {values}; {values.fix()}",
                           phase="forward") from exc
        value_op = explain_meta_failure(exc) if run.device.type == "meta" else None
        if value_op is not None:
            raise RunError(meta_failure_message(value_op, module), phase="forward") from exc
        raise RunError(
            f"forward raised in {module_phrase(failed, kind)}: {describe_exception(exc)}; "
            f"{_inference_state_note(model, exc)}inputs: {inputs.describe()}", phase="forward", debug_hint=True,
            module=(failed, kind),
        ) from exc
    run.forward_time = time.perf_counter() - t0
    return output


def _inference_state_note(model: nn.Module, exc: BaseException) -> str:
    """When autograd refused inference tensors: which of the model's own parameters and buffers are ones
    (checked now, on the model); empty when none is, or the error is another."""
    if not refuses_inference_tensors(exc):
        return ""
    names = inference_state(model)
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"the model holds inference tensors (made under torch.inference_mode(); .clone() them outside it to "
            f"train with them): {shown}; ")


def loss_and_graph(run: _Run, output: Any) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor | None,
                                                      GraphFact | None]:
    """The output tensors, the loss over them, and the graph reachable from it (walked before backward)."""
    flat_out = _output_tensors(run, output)
    run.owners.refs += (output, flat_out)  # with the loss: the last owners of the graph, freed by run_probe
    with torch.enable_grad():
        loss = make_loss(run.options.loss, output, flat_out, run.inputs)
    run.proven_finite = output_versions(run.options.loss, flat_out)  # proof only once the loss is finite
    run.owners.refs.append(loss)
    rows = run.options.row_facts
    if not rows:  # a row reads no parameter; its graph names none
        run.after = named_params(run.model)  # a forward may register or replace parameters
        run.names = names_by_id(run.after)
    if loss is None or loss.grad_fn is None or not run.options.graph:
        run.owners.shallow = _no_graph_touched(run, flat_out, loss)
        return flat_out, loss, None
    if rows:  # the node count (and the depth, for freeing): no names, module calls, saved bytes or call tree
        t0 = clock()
        graph = walk_graph([loss.grad_fn], {})
        lap("graph", t0)
        run.owners.shallow = graph.depth <= _SHALLOW_DEPTH
        return flat_out, loss, graph
    saved = run.trackers.saved
    t0 = clock()
    graph = walk_graph([loss.grad_fn], {pid: ns[0] for pid, ns in run.names.items()},
                       timeline=run.trackers.recorder.timeline(),
                       saved_by_node=saved.facts().by_node() if saved is not None else None)
    lap("graph", t0)
    run.owners.shallow = graph.depth <= _SHALLOW_DEPTH
    return flat_out, loss, replace(graph, display_depth=max(0, run.options.tree_depth),
                                   call_tree=call_tree(run.trackers.recorder.timeline()))


def _no_graph_touched(run: _Run, flat_out: list[tuple[str, torch.Tensor]], loss: torch.Tensor | None) -> bool:
    """Whether the run's Python touched no autograd node, so plain freeing is safe without a big-stack thread.

    Freeing recurses only through nodes Python has touched (see trackers.release).  Outside grad mode the cut
    tracker walks nothing, and the recorder reads only the grad_fn of module outputs: when none of those, no
    output and no loss has one, no node was touched.  Saves a thread start (~0.3-0.6 ms) per no_grad or
    inference_mode run: four of compare-modes' six tracked runs."""
    if run.options.grad_mode == "grad" or (loss is not None and loss.grad_fn is not None):
        return False
    if any(t.grad_fn is not None for _, t in flat_out):
        return False
    return not any(run.trackers.recorder.graph_outputs.values())


def _output_tensors(run: _Run, output: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the output; inside plain objects' attributes only when nothing else holds one."""
    flat_out = flatten_tensors(output)
    default_loss = run.options.loss in ("sum", "mean")
    if not flat_out:
        flat_out = flatten_tensors(output, objects=True)
        if flat_out and default_loss:
            run.notes.append(
                f"the output is a {type(output).__name__}: the default loss sums the tensors in its attributes "
                f"({_paths(flat_out)}); pass --loss module:fn to choose the loss")
    elif isinstance(output, torch.distributions.Distribution) and default_loss:
        run.notes.append(
            f"the output is a {type(output).__name__} distribution: the default loss sums its parameters "
            f"({_paths(flat_out)}); for a real loss pass --loss module:fn, e.g. a function returning "
            f"-outputs.log_prob(target).mean()")
    if not flat_out and default_loss:
        raise RunError(f"forward of {run.target} returned {describe_leaf_types(output)}, not tensors; return the "
                       f"output tensor(s) (a tensor, tuple, dict or dataclass of tensors), or pass --loss "
                       f"module:fn, a function(outputs, inputs) returning a scalar tensor computed from it",
                       phase="output")
    return flat_out


def _paths(flat: list[tuple[str, torch.Tensor]], limit: int = 4) -> str:
    shown = ", ".join(p for p, _ in flat[:limit])
    return shown + (f", +{len(flat) - limit} more" if len(flat) > limit else "")


def backward(run: _Run, loss: torch.Tensor) -> bool:
    """``loss.backward()`` with every backward tracker installed; a failure becomes one RunError line."""
    t1 = time.perf_counter()
    try:
        with run.trackers.installed(BACKWARD):
            loss.backward()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        values = _no_host_values(exc)
        if values is not None:
            where = _backward_module(run, values.seq)
            raise RunError(f"backward on the meta device failed in {values.node or 'a backward node'} (the "
                           f"gradient of {where}): {values}; {values.fix()}", phase="backward") from exc
        raise RunError(f"backward raised: {describe_exception(exc).rstrip('.')}; the forward of {run.target} ran, "
                       f"the gradient computation failed", phase="backward", debug_hint=True) from exc
    run.backward_time = time.perf_counter() - t1
    return True


def _no_host_values(exc: BaseException) -> NoHostValues | None:
    """The meta run's "these values are unknown" error, wherever in the exception chain it is."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, NoHostValues):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _backward_module(run: _Run, seq: int | None) -> str:
    """The module whose forward made the backward node numbered ``seq``, in words."""
    call = run.trackers.recorder.timeline().call_of(seq) if seq is not None else None
    if call is None:
        return "an op outside any module"
    return f"module {_module_label(call[0], _module_kind(run.model, call[0]))}"


def _facts(run: _Run, flat_out: list[tuple[str, torch.Tensor]], loss_value: float | None, graph: GraphFact | None,
           did_backward: bool, reason: str | None) -> RunFacts:
    """Every fact builder, outside every tracker, before the state is restored."""
    model, options, trackers = run.model, run.options, run.trackers
    calls = trackers.recorder.facts()
    t0 = clock()
    walk = list(model.named_modules(remove_duplicate=False))  # one walk for the parameter and module facts
    # the parameters registered after the backward, looked up only when one that trains got no gradient (FSDP2's
    # root unit: see builders.param_facts)
    now = named_params(model) if did_backward and any(
        p.grad is None and p.requires_grad for p in run.after.values()) else None
    params, grad_bytes = builders.param_facts(model, run.after, run.names, did_backward, walk, now)
    t0 = lap("grad_states", t0)
    bad = nonfinite(flat_out, run.proven_finite)
    lap("nonfinite", t0)
    kernels = trackers.kernels.facts() if trackers.kernels is not None else frozenset()
    memory = None
    if trackers.live is not None:
        memory = builders.memory_fact(
            run.device, trackers.live.facts(), trackers.saved.facts() if trackers.saved is not None else None,
            calls.output_bytes, sum(p.nbytes for p in params), grad_bytes if did_backward else None)
        if trackers.kernels is not None and trackers.kernels.approximate:
            memory = replace(memory, approximate=trackers.kernels.approximate)
        if trackers.events is not None:
            saved_first = {k: r.first for k, r in trackers.saved.facts().records.items()} if trackers.saved else None
            memory = replace(memory, events=run_event_log(
                trackers.events, model, run.input_tensors, [t for _, t in flat_out], saved_first,
                run.device.type == "meta"))
    changes = builders.param_changes(run.before, run.after, run.guard.facts())
    skipped = tuple(what for what, off in (("memory (--no-memory)", not options.memory),
                                           ("module output tensors (--no-tensors)", not options.tensors)) if off)
    return trackers.refine(RunFacts(
        target=run.target, torch_version=torch.__version__, device=str(run.device), mode=options.mode,
        grad_mode=options.grad_mode, backward=did_backward, backward_skipped_reason=reason, loss=loss_value,
        parameters=params, buffers=builders.buffer_facts(run.state, calls.names, kernels),
        modules=builders.module_facts(run.names, calls, walk), tensors=calls.tensors,
        outputs=tuple(tensor_fact("", 0, path, t) for path, t in flat_out), graph=graph, memory=memory,
        global_grad_enabled=run.state.grad_enabled, forward_time_s=run.forward_time,
        backward_time_s=run.backward_time, skipped=skipped, notes=tuple(run.notes),
        nonfinite_outputs=bad,
        modified_parameters=builders.written_in(changes, FORWARD),
        modified_in_backward=builders.written_in(changes, BACKWARD), param_changes=changes,
        leaves=builders.leaf_facts(run.state.leaves, calls.names, did_backward),
    ))


def _row_facts(run: _Run, flat_out: list[tuple[str, torch.Tensor]], loss_value: float | None,
               graph: GraphFact | None, did_backward: bool, reason: str | None) -> RunFacts:
    """The facts of :attr:`ProbeOptions.row_facts`: what a compare-modes row reads, the same values as
    :func:`_facts` gives them; every other fact is left empty."""
    trackers = run.trackers
    memory = None
    if trackers.live is not None:
        peaks = trackers.live.facts()
        memory = MemoryFact(
            method=f"tensor storage bytes via TorchDispatchMode on {run.device.type}"
                   + (" (estimate: no memory allocated)" if run.device.type == "meta" else ""),
            forward_peak_bytes=peaks.forward, backward_peak_bytes=peaks.backward,
            saved_for_backward_bytes=trackers.saved.facts().total_bytes if trackers.saved is not None else 0,
            parameter_bytes=0, gradient_bytes=None)
    kernels = trackers.kernels.facts() if trackers.kernels is not None else frozenset()
    return RunFacts(
        target=run.target, torch_version=torch.__version__, device=str(run.device), mode=run.options.mode,
        grad_mode=run.options.grad_mode, backward=did_backward, backward_skipped_reason=reason, loss=loss_value,
        parameters=(), buffers=builders.buffer_facts(run.state, trackers.recorder.names, kernels), modules=(),
        tensors=(), outputs=tuple(tensor_fact("", 0, path, t) for path, t in flat_out), graph=graph, memory=memory,
        global_grad_enabled=run.state.grad_enabled, forward_time_s=run.forward_time,
        backward_time_s=run.backward_time, notes=tuple(run.notes))


def device_of(model: nn.Module, inputs: list[torch.Tensor], params: list[torch.Tensor] | None = None) -> torch.device:
    """Where the model lives: its first parameter, else buffer, else input; CPU for an empty model.  Meta when
    any parameter is on meta (a model built on meta can keep a stray CPU parameter: values are unknown).
    ``params``: the model's parameters when the caller has them already (repeats change neither answer)."""
    if params is None:
        params = list(model.parameters())
    if any(p.is_meta for p in params):
        return torch.device("meta")
    for p in params:
        return p.device
    for b in model.buffers():
        return b.device
    for t in inputs:
        return t.device
    return torch.device("cpu")


def _module_kind(model: nn.Module, name: str) -> str:
    mod = dict(model.named_modules(remove_duplicate=False)).get(name)
    return type(mod).__name__ if mod is not None else "?"


def _module_label(name: str, kind: str) -> str:
    """``'enc.fc' (Linear)``, or ``the model itself (Net)`` for the root."""
    return f"'{name}' ({kind})" if name else f"the model itself ({kind})"


def module_phrase(name: str, kind: str) -> str:
    """``module 'enc.fc' (Linear)``, or ``the model itself (Net)`` for the root: where a forward raised."""
    return f"module {_module_label(name, kind)}" if name else _module_label(name, kind)
