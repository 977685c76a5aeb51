"""``gradprobe inspect``: one mode, in depth."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from gradprobe.cli.distributed import (
    DIST_OPTIONS,
    DistArgs,
    dist_launch,
    dist_run,
    inspect_distributed,
    rank0_speaks,
)
from gradprobe.cli.fit import BudgetOpt, WorldSizeOpt
from gradprobe.cli.options import (
    CI_PANEL,
    LOAD_OPTIONS,
    OUTPUT_PANEL,
    RUN_PANEL,
    DebugOpt,
    DeviceOpt,
    FormatOpt,
    LossOpt,
    OutputFormat,
    OutputOpt,
    SeedOpt,
    examples,
    flag,
    loading_values,
    with_options,
)

EPILOG = examples(
    "gradprobe inspect gradprobe.examples:FineTuneNet --top 6",
    "gradprobe inspect gradprobe.examples:FineTuneNet --mode eval --grad no_grad --filter 'backbone*'",
    "gradprobe inspect gradprobe.examples:FineTuneNet --device meta --format json -o report.json",
)


class Mode(str, Enum):
    train = "train"
    eval = "eval"


class GradMode(str, Enum):
    grad = "grad"
    no_grad = "no_grad"
    inference_mode = "inference_mode"


class OptimizerState(str, Enum):
    sgd = "sgd"
    momentum = "momentum"
    adam = "adam"


class ParamDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@with_options(first=LOAD_OPTIONS, last=DIST_OPTIONS)
def inspect(
    ctx: typer.Context,
    mode: Annotated[Mode, typer.Option("--mode", help="Module mode for the forward.",
                                       rich_help_panel=RUN_PANEL)] = Mode.train,
    grad: Annotated[GradMode, typer.Option("--grad", help="Grad mode for the forward.",
                                           rich_help_panel=RUN_PANEL)] = GradMode.grad,
    loss: LossOpt = None,
    no_backward: Annotated[bool, flag("--no-backward", "Skip the backward pass.", RUN_PANEL)] = False,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    no_memory: Annotated[bool, flag("--no-memory", "Switch off the memory trackers.", RUN_PANEL)] = False,
    no_tensors: Annotated[bool, flag("--no-tensors", "Do not record module output tensors.", RUN_PANEL)] = False,
    memory_detail: Annotated[bool, flag(
        "--memory-detail", "Record every allocation and free: what is alive at each peak (by category, largest "
        "tensors) and a memory timeline. On with --format html.", RUN_PANEL)] = False,
    grads: Annotated[bool, flag("--grads", "Gradient health: per-parameter gradient figures, the gradient reaching "
                                "each module call, where NaN/Inf first appeared, vanishing/exploding, fp16 underflow, "
                                "dead ReLU units.", RUN_PANEL)] = False,
    grad_factor: Annotated[float, typer.Option("--grad-factor", metavar="FACTOR", rich_help_panel=RUN_PANEL,
                                               help="With --grads: report a gradient that falls or rises by more "
                                               "than FACTOR across the model's blocks.")] = 1000.0,
    optimizer_state: Annotated[OptimizerState, typer.Option(
        "--optimizer-state", rich_help_panel=RUN_PANEL, help="Optimizer state in the training-step memory estimate: "
        "sgd (none), momentum (1 copy of the trainable parameters), adam (2 copies).")] = OptimizerState.adam,
    param_dtype: Annotated[ParamDtype | None, typer.Option(
        "--param-dtype", rich_help_panel=RUN_PANEL, help="Estimate the training step with parameters in this dtype. "
        "On --device meta the model and its float inputs are cast for the run; elsewhere parameter, gradient and "
        "optimizer bytes are scaled.")] = None,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    top: Annotated[int, typer.Option("--top", metavar="N", rich_help_panel=OUTPUT_PANEL,
                                     help="Rows per table in the terminal view (0: all); JSON keeps every row.")] = 40,
    filter_: Annotated[str | None, typer.Option("--filter", metavar="GLOB", rich_help_panel=OUTPUT_PANEL,
                                                help="Show only names matching GLOB in the tables.")] = None,
    depth: Annotated[int, typer.Option("--depth", metavar="N", rich_help_panel=OUTPUT_PANEL,
                                       help="Levels of the grad_fn tree to show (and of nested module calls "
                                       "in the --grads flow and the --graph export).")] = 8,
    graph: Annotated[str | None, typer.Option(
        "--graph", metavar="FILE", rich_help_panel=OUTPUT_PANEL, help="Also write the grad_fn graph collapsed by "
        "module call (--depth expands it) as Graphviz DOT (.dot), Mermaid (.mmd) or SVG (.svg).")] = None,
    debug: DebugOpt = False,
    strict: Annotated[bool, flag("--strict", "Exit 1 when an error finding exists.", CI_PANEL)] = False,
    world_size: WorldSizeOpt = None,
    budget: BudgetOpt = None,
    **shared: Any,
) -> None:
    """Run the model once in one mode and show what autograd sees: parameters, tensors, graph, memory, findings."""
    values = loading_values(locals(), shared)
    dist = DistArgs.of(shared)

    def body() -> int:
        from gradprobe.cli.command import check_pattern, quiet_torch_import, settings
        from gradprobe.load.loss import check_loss_spec

        if world_size is not None and shared["nproc"] is not None:
            from gradprobe.errors import UsageError

            raise UsageError("--world-size simulates every rank in one process: leave out --nproc")
        launched = dist_launch(dist, debug)  # --nproc: this process only starts torch's launcher
        if launched is not None:
            return launched

        graph_kind = _check_options(top, depth, memory_detail, no_memory, grad_factor, graph)
        with rank0_speaks():
            s = settings(ctx, "inspect", values, shared["config"], shared["no_config"])
        if s["loss"] is not None:
            check_loss_spec(s["loss"])
        quiet_torch_import(debug)
        _check_one_process(grads, graph, world_size, dist)
        if world_size is not None:  # will it fit on N GPUs: every rank simulated in this process
            from gradprobe.cli.fit import inspect_fit

            if param_dtype is not None or no_backward or mode is not Mode.train:
                from gradprobe.errors import UsageError

                raise UsageError("--world-size measures a training step (train mode, backward, optimizer step) in the "
                                 "model's own dtypes: leave out --param-dtype, --no-backward and --mode eval")
            return inspect_fit(s=s, world_size=world_size, budget=budget, wrap=shared["wrap"], shard=shared["shard"],
                               reshard_after_forward=dist.reshard_after_forward,
                               mixed_precision=dist.mixed_precision,
                               nproc=shared["nproc"], optimizer_state=optimizer_state.value, format_=format_,
                               output=output)
        if budget is not None:
            from gradprobe.errors import UsageError

            raise UsageError("--budget applies to --world-size N (the per-rank peak it predicts)")
        routed = dist_run(dist, debug, lambda env, opts: inspect_distributed(
            env, opts, s=s, probe=dict(mode=mode.value, grad_mode=grad.value, loss=s["loss"], backward=not no_backward,
                                       memory=not no_memory, tensors=not no_tensors, depth=depth, seed=s["seed"],
                                       memory_detail=(memory_detail or format_ is OutputFormat.html) and not no_memory,
                                       optimizer_state=optimizer_state.value,
                                       param_dtype=param_dtype.value if param_dtype is not None else None),
            format_=format_, output=output, top=top, filter_=filter_, strict=strict,
            graph=(graph, graph_kind) if graph is not None and graph_kind is not None else None))
        if routed is not None:  # under torchrun (or --wrap): every rank ran, rank 0 reported
            return routed
        from gradprobe.api import probe, resolve_loss, user_output_to_stderr
        from gradprobe.cli.command import load_target
        from gradprobe.cli.progress import progress
        from gradprobe.facts.grad_health import GradThresholds
        from gradprobe.load.user_code import search_paths

        with progress("inspect") as step, user_output_to_stderr(), search_paths(s["path"]):
            step(f"loading {s['target']}")
            loss_fn = resolve_loss(s["loss"]) if s["loss"] is not None else None
            loaded, example = load_target(s)
            check_pattern("--filter", filter_, _names(loaded.model))
            step(f"running {s['target']} on {s['device']} ({mode.value} + {grad.value})")
            report = probe(loaded.model, example, mode=mode.value, grad_mode=grad.value,
                           loss=loss_fn, backward=not no_backward, memory=not no_memory,
                           tensors=not no_tensors, depth=depth, seed=s["seed"], target=s["target"], loaded=loaded,
                           memory_detail=(memory_detail or format_ is OutputFormat.html) and not no_memory,
                           optimizer_state=optimizer_state.value,
                           param_dtype=param_dtype.value if param_dtype is not None else None,
                           grads=GradThresholds(factor=grad_factor) if grads else False)
        if graph is not None and graph_kind is not None:
            from pathlib import Path

            from gradprobe.cli.output import write_text
            from gradprobe.render.graph.export import export_graph

            write_text(export_graph(report.facts, graph_kind, depth), Path(graph))
        _render(report, format_, output, top, filter_, depth)
        return 1 if strict and report.has_errors else 0

    from gradprobe.cli.command import guarded

    guarded(debug, body)


def _check_one_process(grads: bool, graph: str | None, world_size: str | None, dist: DistArgs) -> None:
    """--grads and --graph read one process's run: refused (not silently dropped) where no such run exists."""
    from gradprobe.errors import UsageError
    from gradprobe.run.distributed.env import launch_env

    if world_size is not None and (grads or graph is not None):
        raise UsageError("--world-size reports per-rank memory only: run --grads/--graph without --world-size")
    if grads and (dist.wrap is not None or launch_env() is not None):
        raise UsageError("--grads reads one process's gradients: run it without --wrap and outside torchrun "
                         "(the plain model in one process)")


def _check_options(top: int, depth: int, memory_detail: bool, no_memory: bool, grad_factor: float,
                   graph: str | None) -> str | None:
    """Option values that cannot work, refused before the user's code runs; the --graph export's kind."""
    from gradprobe.errors import UsageError

    if top < 0:
        raise UsageError(f"--top {top}: use 0 (all rows) or more")
    if depth < 0:
        raise UsageError(f"--depth {depth}: use 0 or more")
    if memory_detail and no_memory:
        raise UsageError("--memory-detail needs the memory trackers: drop --no-memory")
    if not grad_factor > 1:
        raise UsageError(f"--grad-factor {grad_factor:g}: use a factor above 1 (e.g. 1000)")
    if graph is None:
        return None
    from gradprobe.render.graph.export import check_graph_path

    return check_graph_path(graph)


def _names(model: Any) -> list[str]:
    """Every name --filter can match: parameters (tied aliases too), buffers, modules."""
    return [*(n for n, _ in model.named_parameters(remove_duplicate=False)),
            *(n for n, _ in model.named_buffers(remove_duplicate=False)),
            *(n for n, _ in model.named_modules(remove_duplicate=False) if n)]


def _render(report: Any, format_: OutputFormat, output: Any, top: int, filter_: str | None, depth: int) -> None:
    from gradprobe.cli.output import write_report
    from gradprobe.render.html.inspect import inspect_html
    from gradprobe.render.inspect.json_out import inspect_json
    from gradprobe.render.inspect.markdown import inspect_markdown
    from gradprobe.render.inspect.table import render_inspect

    write_report(format_, output, html=lambda: inspect_html(report, depth), json=lambda: inspect_json(report),
                 markdown=lambda: inspect_markdown(report, top or None),
                 table=lambda console: render_inspect(report, console, top=top or None, pattern=filter_))
