"""``gradprobe compare-modes``: every train/eval x grad-mode combination side by side."""

from __future__ import annotations

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


def compare_modes(
    target: TargetArg,
    modes: Annotated[str | None, typer.Option(
        "--modes", metavar="LIST", help="Combinations to run, e.g. train:grad,eval:no_grad (MODE: train|eval; "
        "GRAD: grad|no_grad|inference_mode). Default: all six.")] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Timed forwards per combination (the median is shown), "
                                        "after one warm-up run that also takes the measurements.")] = 5,
    backward: Annotated[bool, typer.Option("--backward", help="Also time the backward (sum of the float outputs) "
                                           "and measure its peak, where one is possible.")] = False,
    init: InitOpt = None,
    weights: WeightsOpt = None,
    inputs: InputsOpt = None,
    shape: ShapeOpt = None,
    dtype: DtypeOpt = "float32",
    high: HighOpt = 2,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when an error finding exists (e.g. a "
                                         "combination whose forward fails).")] = False,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the forward under train/eval x grad/no_grad/inference_mode from one starting state and compare
    flags, graph, saved bytes, peak memory, time, outputs and buffers, with a verdict in plain words."""

    def body() -> int:
        from gradprobe.errors import UsageError
        from gradprobe.load.modes import parse_modes

        if repeat < 1:
            raise UsageError(f"--repeat {repeat}: use 1 or more")
        pairs = parse_modes(modes)  # bad options fail before torch is even imported

        from gradprobe.api import compare_modes as api_compare_modes
        from gradprobe.api import load, user_output_to_stderr
        from gradprobe.cli.progress import progress
        with user_output_to_stderr():
            loaded, example = load(target, init=init, weights=weights, device=device, inputs=inputs,
                                   shapes=shape, dtype=dtype, high=high, seed=seed)
            with progress("compare-modes") as step:
                report = api_compare_modes(loaded.model, example, modes=pairs, repeat=repeat, backward=backward,
                                           seed=seed, target=target, loaded=loaded, progress=step)
        if report.rows and not any(row.ok for row in report.rows):  # nothing ran: no comparison to show
            from gradprobe.errors import RunError

            first = report.rows[0]
            hints = "".join(f"; {note}" for note in report.comparison.notes if note.startswith("hint:"))
            raise RunError(f"every mode failed; {first.mode}:{first.grad_mode}: {first.error}{hints}")
        if format_ is OutputFormat.json:
            from gradprobe.render.common import dumps
            from gradprobe.render.compare.json_out import compare_json

            write_text(dumps(compare_json(report)), output)
        elif format_ is OutputFormat.markdown:
            from gradprobe.render.compare.markdown import compare_markdown

            write_text(compare_markdown(report), output)
        else:
            from gradprobe.render.compare.table import render_compare

            render_rich(lambda console: render_compare(report, console), output)
        return 1 if strict and report.has_errors else 0

    guarded(debug, body)
