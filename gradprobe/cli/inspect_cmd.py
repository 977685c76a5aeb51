"""``gradprobe inspect``: one mode, in depth."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from gradprobe.cli.common import (
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
    depth: Annotated[int, typer.Option("--depth", help="Levels of the grad_fn tree to show.")] = 8,
    top: Annotated[int, typer.Option("--top", help="Rows per table in the terminal view (0: all); JSON keeps "
                                     "every row.")] = 40,
    filter_: Annotated[str | None, typer.Option("--filter", metavar="GLOB",
                                                help="Show only names matching GLOB in the tables.")] = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Switch off the memory trackers.")] = False,
    no_tensors: Annotated[bool, typer.Option("--no-tensors", help="Do not record module output tensors.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when an error finding exists.")] = False,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the model once in one mode and show what autograd sees: parameters, tensors, graph, memory, findings."""

    def body() -> int:
        from gradprobe.api import load, probe, resolve_loss, user_output_to_stderr
        from gradprobe.errors import UsageError

        if top < 0:
            raise UsageError(f"--top {top}: use 0 (all rows) or more")
        with user_output_to_stderr():
            loaded, example = load(target, init=init, weights=weights, device=device, inputs=inputs,
                                   shapes=shape, dtype=dtype, high=high, seed=seed)
            report = probe(loaded.model, example, mode=mode.value, grad_mode=grad.value,
                           loss=resolve_loss(loss), backward=not no_backward, memory=not no_memory,
                           tensors=not no_tensors, depth=depth, seed=seed, target=target, loaded=loaded)
        if format_ is OutputFormat.json:
            from gradprobe.render.json_out import dumps, inspect_json

            write_text(dumps(inspect_json(report)), output)
        elif format_ is OutputFormat.markdown:
            from gradprobe.render.markdown import inspect_markdown

            write_text(inspect_markdown(report, top or None), output)
        else:
            from gradprobe.render.table import render_inspect

            render_rich(lambda console: render_inspect(report, console, top=top or None, pattern=filter_), output)
        return 1 if strict and report.has_errors else 0

    guarded(debug, body)
