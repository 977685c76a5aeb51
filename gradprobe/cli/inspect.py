"""``gradprobe inspect``: one mode, in depth."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from gradprobe.cli.options import (
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    HighOpt,
    InitOpt,
    InputsOpt,
    OutputFormat,
    OutputOpt,
    SeedOpt,
    ShapeOpt,
    TargetArg,
    WeightsOpt,
    guarded,
    render_rich,
    write_text,
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


def inspect(
    target: TargetArg,
    mode: Annotated[Mode, typer.Option("--mode", help="Module mode for the forward.")] = Mode.train,
    grad: Annotated[GradMode, typer.Option("--grad", help="Grad mode for the forward.")] = GradMode.grad,
    loss: Annotated[str, typer.Option("--loss", help="sum (of every float output), mean, or MOD:fn(outputs, inputs)"
                                      " returning a scalar.")] = "sum",
    no_backward: Annotated[bool, typer.Option("--no-backward", help="Skip the backward pass.")] = False,
    init: InitOpt = None,
    weights: WeightsOpt = None,
    inputs: InputsOpt = None,
    shape: ShapeOpt = None,
    dtype: DtypeOpt = "float32",
    high: HighOpt = 2,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    depth: Annotated[int, typer.Option("--depth", help="Levels of the grad_fn tree to show (and of nested module "
                                       "calls in the --grads flow).")] = 8,
    top: Annotated[int, typer.Option("--top", help="Rows per table in the terminal view (0: all); JSON keeps "
                                     "every row.")] = 40,
    filter_: Annotated[str | None, typer.Option("--filter", metavar="GLOB",
                                                help="Show only names matching GLOB in the tables.")] = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Switch off the memory trackers.")] = False,
    no_tensors: Annotated[bool, typer.Option("--no-tensors", help="Do not record module output tensors.")] = False,
    memory_detail: Annotated[bool, typer.Option(
        "--memory-detail", help="Record every allocation and free: what is alive at each peak (by category, "
        "largest tensors) and a memory timeline. On with --format html.")] = False,
    optimizer_state: Annotated[OptimizerState, typer.Option(
        "--optimizer-state", help="Optimizer state in the training-step memory estimate: sgd (none), momentum "
        "(1 copy of the trainable parameters), adam (2 copies).")] = OptimizerState.adam,
    param_dtype: Annotated[ParamDtype | None, typer.Option(
        "--param-dtype", help="Estimate the training step with parameters in this dtype. On --device meta the "
        "model and its float inputs are cast for the run; elsewhere parameter, gradient and optimizer bytes are "
        "scaled.")] = None,
    grads: Annotated[bool, typer.Option("--grads", help="Gradient health: per-parameter gradient figures, the "
                                        "gradient reaching each module call, where NaN/Inf first appeared, "
                                        "vanishing/exploding, fp16 underflow, dead ReLU units.")] = False,
    grad_factor: Annotated[float, typer.Option("--grad-factor", metavar="FACTOR", help="With --grads: report a "
                                               "gradient that falls or rises by more than FACTOR across the "
                                               "model's blocks.")] = 1000.0,
    graph: Annotated[str | None, typer.Option(
        "--graph", metavar="FILE", help="Also write the grad_fn graph collapsed by module call (--depth expands "
        "it) as Graphviz DOT (.dot), Mermaid (.mmd) or SVG (.svg).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when an error finding exists.")] = False,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the model once in one mode and show what autograd sees: parameters, tensors, graph, memory, findings."""

    def body() -> int:
        from gradprobe.api import load, probe, resolve_loss, user_output_to_stderr
        from gradprobe.cli.progress import progress
        from gradprobe.errors import UsageError
        from gradprobe.facts.grad_health import GradThresholds

        if top < 0:
            raise UsageError(f"--top {top}: use 0 (all rows) or more")
        graph_kind = None
        if graph is not None:
            from gradprobe.render.graph.export import check_graph_path

            graph_kind = check_graph_path(graph)
        if memory_detail and no_memory:
            raise UsageError("--memory-detail needs the memory trackers: drop --no-memory")
        if depth < 0:  # checked before the user's code runs
            raise UsageError(f"--depth {depth}: use 0 or more")
        if not grad_factor > 1:
            raise UsageError(f"--grad-factor {grad_factor:g}: use a factor above 1 (e.g. 1000)")
        if loss not in ("sum", "mean") and ":" not in loss:
            raise UsageError(f"--loss '{loss}' is not a loss: use sum, mean, or MOD:fn (a function of "
                             f"(outputs, inputs) returning a scalar)")
        with progress("inspect") as step, user_output_to_stderr():
            step(f"loading {target}")
            loss_fn = resolve_loss(loss)
            loaded, example = load(target, init=init, weights=weights, device=device, inputs=inputs,
                                   shapes=shape, dtype=dtype, high=high, seed=seed)
            step(f"running {target} on {device} ({mode.value} + {grad.value})")
            report = probe(loaded.model, example, mode=mode.value, grad_mode=grad.value,
                           loss=loss_fn, backward=not no_backward, memory=not no_memory,
                           tensors=not no_tensors, depth=depth, seed=seed, target=target, loaded=loaded,
                           memory_detail=(memory_detail or format_ is OutputFormat.html) and not no_memory,
                           optimizer_state=optimizer_state.value,
                           param_dtype=param_dtype.value if param_dtype is not None else None,
                           grads=GradThresholds(factor=grad_factor) if grads else False)
        if graph is not None and graph_kind is not None:
            from pathlib import Path

            from gradprobe.render.graph.export import export_graph

            write_text(export_graph(report.facts, graph_kind, depth), Path(graph))
        if format_ is OutputFormat.html:
            from gradprobe.render.html.inspect import inspect_html

            write_text(inspect_html(report, depth), output)
        elif format_ is OutputFormat.json:
            from gradprobe.render.inspect.json_out import dumps, inspect_json

            write_text(dumps(inspect_json(report)), output)
        elif format_ is OutputFormat.markdown:
            from gradprobe.render.inspect.markdown import inspect_markdown

            write_text(inspect_markdown(report, top or None), output)
        else:
            from gradprobe.render.inspect.table import render_inspect

            render_rich(lambda console: render_inspect(report, console, top=top or None, pattern=filter_), output)
        return 1 if strict and report.has_errors else 0

    guarded(debug, body)
