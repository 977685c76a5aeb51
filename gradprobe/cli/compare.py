"""``gradprobe compare-modes``: every train/eval x grad-mode combination side by side."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gradprobe.cli.distributed import (
    DIST_OPTIONS,
    DistArgs,
    compare_distributed,
    dist_launch,
    dist_run,
    rank0_speaks,
)
from gradprobe.cli.options import (
    CI_PANEL,
    LOAD_OPTIONS,
    RUN_PANEL,
    DebugOpt,
    DeviceOpt,
    FormatOpt,
    OutputFormat,
    OutputOpt,
    SeedOpt,
    examples,
    flag,
    loading_values,
    with_options,
)

EPILOG = examples(
    "gradprobe compare-modes gradprobe.examples:FineTuneNet",
    "gradprobe compare-modes gradprobe.examples:FineTuneNet --modes train:grad,eval:no_grad --backward",
    "gradprobe compare-modes gradprobe.examples:fixed --repeat 2 --strict --format json -o modes.json",
)


@with_options(first=LOAD_OPTIONS, last=DIST_OPTIONS)
def compare_modes(
    ctx: typer.Context,
    modes: Annotated[str | None, typer.Option(
        "--modes", metavar="LIST", rich_help_panel=RUN_PANEL, help="Combinations to run, e.g. train:grad,eval:no_grad "
        "(MODE: train|eval; GRAD: grad|no_grad|inference_mode). Default: all six.")] = None,
    repeat: Annotated[int, typer.Option("--repeat", metavar="N", rich_help_panel=RUN_PANEL,
                                        help="Timed forwards per combination (the median is shown), after one "
                                             "warm-up run that also takes the measurements.")] = 5,
    backward: Annotated[bool, flag("--backward", "Also time the backward (sum of the float outputs) and measure "
                                   "its peak, where one is possible.", RUN_PANEL)] = False,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
    strict: Annotated[bool, flag("--strict", "Exit 1 when an error finding exists (e.g. a combination whose "
                                 "forward fails).", CI_PANEL)] = False,
    **shared: Any,
) -> None:
    """Run the forward under train/eval x grad/no_grad/inference_mode from one starting state and compare flags, graph, saved bytes, peak memory, time, outputs and buffers, with a verdict in plain words."""  # noqa: E501
    values = loading_values(locals(), shared)

    def body() -> int:
        from gradprobe.cli.command import quiet_torch_import, settings
        from gradprobe.errors import UsageError
        from gradprobe.load.modes import parse_modes

        if repeat < 1:
            raise UsageError(f"--repeat {repeat}: use 1 or more")
        pairs = parse_modes(modes)  # bad options fail before torch is even imported
        dist = DistArgs.of(shared)
        launched = dist_launch(dist, debug)  # --nproc: this process only starts torch's launcher
        if launched is not None:
            return launched
        with rank0_speaks():
            s = settings(ctx, "compare-modes", values, shared["config"], shared["no_config"])
        quiet_torch_import(debug)
        routed = dist_run(dist, debug, lambda env, opts: compare_distributed(
            env, opts, s=s, modes=pairs, repeat=repeat, backward=backward, format_=format_, output=output,
            strict=strict))
        if routed is not None:  # under torchrun (or --wrap): every rank ran, rank 0 reported
            return routed

        from gradprobe.api import compare_modes as api_compare_modes
        from gradprobe.api import user_output_to_stderr
        from gradprobe.cli.command import load_target
        from gradprobe.cli.progress import progress
        from gradprobe.load.user_code import search_paths

        with user_output_to_stderr(), search_paths(s["path"]):
            loaded, example = load_target(s)
            with progress("compare-modes") as step:
                report = api_compare_modes(loaded.model, example, modes=pairs, repeat=repeat, backward=backward,
                                           seed=s["seed"], target=s["target"], loaded=loaded, progress=step,
                                           memory_detail=format_ is OutputFormat.html)
        if report.rows and not any(row.ok for row in report.rows):  # nothing ran: no comparison to show
            from gradprobe.errors import RunError

            first = report.rows[0]
            hints = "".join(f"; {note}" for note in report.comparison.notes if note.startswith("hint:"))
            raise RunError(f"every mode failed; {first.mode}:{first.grad_mode}: {first.error}{hints}")
        from gradprobe.cli.output import write_report
        from gradprobe.render.compare.json_out import compare_json
        from gradprobe.render.compare.markdown import compare_markdown
        from gradprobe.render.compare.table import render_compare
        from gradprobe.render.html.compare import compare_html

        write_report(format_, output, html=lambda: compare_html(report), json=lambda: compare_json(report),
                     markdown=lambda: compare_markdown(report), table=lambda console: render_compare(report, console))
        return 1 if strict and report.has_errors else 0

    from gradprobe.cli.command import guarded

    guarded(debug, body)
