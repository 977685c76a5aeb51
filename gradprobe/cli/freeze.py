"""``gradprobe freeze-check``: the CI gate that proves the intended freeze holds.

Exit codes: 0 the freeze holds, 1 violations (or, with ``--strict``, warnings), 2 usage/load/run error (the
freeze could not be verified).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gradprobe.cli.complete import complete_spec
from gradprobe.cli.distributed import (
    DIST_OPTIONS,
    DistArgs,
    dist_launch,
    dist_run,
    freeze_distributed,
    rank0_speaks,
)
from gradprobe.cli.options import (
    CI_PANEL,
    LOAD_OPTIONS,
    LOADING,
    DebugOpt,
    DeviceOpt,
    FormatOpt,
    LossOpt,
    OutputFormat,
    OutputOpt,
    SeedOpt,
    examples,
    flag,
    with_options,
)
from gradprobe.errors import GradprobeError

FREEZE_PANEL = "The intended freeze"
EPILOG = examples(
    "gradprobe freeze-check gradprobe.examples:fixed --frozen backbone --trainable head",
    "gradprobe freeze-check gradprobe.examples:fixed --frozen 'backbone.*' --trainable head --unlisted error "
    "--junit freeze-junit.xml",
    "gradprobe freeze-check gradprobe.examples:fixed --write-baseline freeze-baseline.json",
)


class Unlisted(str, Enum):
    ignore = "ignore"
    warn = "warn"
    error = "error"


# options whose value may come from [tool.gradprobe] / [tool.gradprobe.freeze] when not given on the command line
_CONFIGURABLE = (*LOADING, "frozen", "trainable", "unlisted", "optimizer", "allow_buffer_updates", "baseline")

FrozenOpt = Annotated[list[str] | None, typer.Option(
    "--frozen", metavar="GLOB", rich_help_panel=FREEZE_PANEL, help="Parameters that must be frozen (fnmatch on "
    "every name; a bare module name 'backbone' means 'backbone.*'). Repeatable.")]
TrainableOpt = Annotated[list[str] | None, typer.Option(
    "--trainable", metavar="GLOB", rich_help_panel=FREEZE_PANEL, help="Parameters that must be trained. Repeatable.")]
UnlistedOpt = Annotated[Unlisted, typer.Option(
    "--unlisted", rich_help_panel=FREEZE_PANEL,
    help="Parameters matched by no pattern: ignore, warn, or error (a violation).")]
OptimizerOpt = Annotated[str | None, typer.Option(
    "--optimizer", metavar="SPEC", rich_help_panel=FREEZE_PANEL, autocompletion=complete_spec,
    help="'module:fn' or 'file.py:fn' called with the model, returning a torch.optim.Optimizer: checks param "
         "groups and the steps a training loop runs (step(), zero_grad()).")]
BuffersOpt = Annotated[bool, flag(
    "--allow-buffer-updates", "Do not fail when buffers of frozen modules (BatchNorm statistics) change in the "
    "train-mode forward.", FREEZE_PANEL)]
BaselineOpt = Annotated[str | None, typer.Option(
    "--baseline", metavar="FILE", rich_help_panel=CI_PANEL, help="Expected requires_grad of every parameter (from "
    "--write-baseline); any difference fails.")]
WriteBaselineOpt = Annotated[Path | None, typer.Option(
    "--write-baseline", metavar="FILE", dir_okay=False, rich_help_panel=CI_PANEL,
    help="Write the current requires_grad of every parameter to FILE (then check against it).")]
JunitOpt = Annotated[Path | None, typer.Option(
    "--junit", metavar="FILE", dir_okay=False, rich_help_panel=CI_PANEL, help="Also write JUnit XML (one test case "
    "per check and pattern) for CI test reports.")]
StrictOpt = Annotated[bool, flag(
    "--strict", "Exit 1 on warnings too (e.g. a frozen parameter inside an optimizer param group, which would move "
    "once it got a gradient).", CI_PANEL)]


@with_options(first=LOAD_OPTIONS, last=DIST_OPTIONS)
def freeze_check(
    ctx: typer.Context,
    frozen: FrozenOpt = None,
    trainable: TrainableOpt = None,
    unlisted: UnlistedOpt = Unlisted.warn,
    optimizer: OptimizerOpt = None,
    allow_buffer_updates: BuffersOpt = False,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
    baseline: BaselineOpt = None,
    write_baseline: WriteBaselineOpt = None,
    junit: JunitOpt = None,
    strict: StrictOpt = False,
    **shared: Any,
) -> None:
    """Check that the intended freeze holds: flags, gradient flow, optimizer groups and steps, buffers.

    Exit 0 when it holds, 1 on violations (with --strict: on warnings too), 2 when it could not be verified.
    Under GitHub Actions, violations also become ::error annotations and a step summary.
    """
    values: dict[str, Any] = {n: v for n, v in {**shared, **locals()}.items() if n in _CONFIGURABLE}
    values["unlisted"] = unlisted.value
    dist = DistArgs.of(shared)

    def body() -> int:
        from gradprobe.render.freeze import github

        try:
            launched = dist_launch(dist, debug)  # --nproc: this process only starts torch's launcher
            if launched is not None:
                return launched
            return _run(ctx, values, shared["config"], shared["no_config"], write_baseline, format_, output, junit,
                        debug, strict, dist)
        except GradprobeError as exc:
            github.publish_error(str(exc), sys.stderr)
            raise

    from gradprobe.cli.command import guarded

    guarded(debug, body)


def _run(ctx: typer.Context, values: dict[str, Any], config: Path | None, no_config: bool,
         write_baseline: Path | None, format_: OutputFormat, output: Path | None, junit: Path | None,
         debug: bool, strict: bool = False, dist: DistArgs | None = None) -> int:
    from gradprobe.cli.command import quiet_torch_import, settings
    from gradprobe.load.loss import check_loss_spec

    with rank0_speaks():
        s = settings(ctx, "freeze-check", values, config, no_config)
    if s["loss"] is not None:
        check_loss_spec(s["loss"])
    quiet_torch_import(debug)
    routed = dist_run(dist or DistArgs(), debug, lambda env, opts: freeze_distributed(
        env, opts, s=s, write_baseline=write_baseline, format_=format_, output=output, junit=junit, strict=strict))
    if routed is not None:  # under torchrun (or --wrap): every rank checked its freeze, rank 0 reported
        return routed
    from gradprobe.api import freeze_check, user_output_to_stderr
    from gradprobe.cli.command import load_target
    from gradprobe.load.user_code import search_paths

    with user_output_to_stderr(), search_paths(s["path"]):
        loaded, example = load_target(s)
        report = freeze_check(
            loaded.model, example, frozen=s["frozen"] or [], trainable=s["trainable"] or [], optimizer=s["optimizer"],
            unlisted=s["unlisted"], allow_buffer_updates=s["allow_buffer_updates"], baseline=s["baseline"],
            write_baseline=write_baseline, loss=s["loss"], seed=s["seed"], target=s["target"], loaded=loaded,
            config=s.config, memory_detail=format_ is OutputFormat.html)
    return publish(report, format_, output, junit, strict, write_baseline)


def publish(report: Any, format_: OutputFormat, output: Path | None, junit: Path | None, strict: bool,
            write_baseline: Path | None, world_size: int | None = None) -> int:
    """Everything freeze-check does with its report, in one process or on rank 0 (``world_size``): the baseline
    line, the report, JUnit XML, GitHub annotations; returns the exit code."""
    from gradprobe.errors import UsageError
    from gradprobe.render.freeze import github
    from gradprobe.render.freeze.view import freeze_markdown

    if write_baseline is not None:
        sys.stderr.write(f"gradprobe: wrote baseline {write_baseline} ({len(report.parameters)} parameters)\n")
    _write(report, format_, output, world_size)
    if junit is not None:
        from gradprobe.render.freeze.junit import junit_xml

        try:
            junit.write_text(junit_xml(report), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--junit: cannot write '{junit}' ({exc.strerror}); choose a writable path") from exc
    github.publish(report, freeze_markdown(report), sys.stderr)
    if report.passed and strict and report.warnings:  # the report says PASS: say why the exit code is 1 anyway
        sys.stderr.write(f"gradprobe: exit 1: --strict fails on the {len(report.warnings)} warning(s); the freeze "
                         f"itself holds (0 violations)\n")
    return 0 if report.passed and not (strict and report.warnings) else 1


def _write(report: Any, format_: OutputFormat, output: Path | None, world_size: int | None) -> None:
    """Distributed reports add ``world_size`` to the JSON; their HTML page is rank 0's run with every rank's
    violations and warnings (each naming its ranks)."""
    from gradprobe.cli.output import write_report
    from gradprobe.render.freeze.view import freeze_json, freeze_markdown, render_freeze
    from gradprobe.render.html.freeze import freeze_html

    def doc() -> dict[str, Any]:
        d = freeze_json(report)
        if world_size is not None:
            d["world_size"] = world_size
        return d

    write_report(format_, output, html=lambda: freeze_html(report), json=doc,
                 markdown=lambda: freeze_markdown(report), table=lambda console: render_freeze(report, console))
