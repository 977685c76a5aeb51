"""``gradprobe freeze-check``: the CI gate that proves the intended freeze holds.

Exit codes: 0 the freeze holds, 1 violations (or, with ``--strict``, warnings), 2 usage/load/run error (the
freeze could not be verified).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

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
    WeightsOpt,
    guarded,
    render_rich,
    write_text,
)
from gradprobe.errors import GradprobeError


class Unlisted(str, Enum):
    ignore = "ignore"
    warn = "warn"
    error = "error"


# options whose value may come from [tool.gradprobe.freeze] when not given on the command line
_CONFIGURABLE = ("target", "inputs", "optimizer", "loss", "init", "weights", "shape", "dtype", "high", "device",
                 "seed", "frozen", "trainable", "unlisted", "allow_buffer_updates", "baseline")


@contextlib.contextmanager
def _importable(directory: Path | None) -> Iterator[None]:
    """``module:fn`` specs in pyproject.toml import from the project root, wherever the command runs."""
    if directory is None or str(directory) in sys.path:
        yield
        return
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        if str(directory) in sys.path:
            sys.path.remove(str(directory))


def _given(ctx: typer.Context) -> set[str]:
    given = set()
    for name in _CONFIGURABLE:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            given.add(name)
    return given


TargetArg = Annotated[str | None, typer.Argument(
    metavar="TARGET", show_default=False,
    help="The model: 'package.module:Name' or 'path/to/file.py:Name'; may come from 'target' in "
         "\\[tool.gradprobe.freeze] of pyproject.toml.")]
FrozenOpt = Annotated[list[str] | None, typer.Option(
    "--frozen", metavar="GLOB", help="Parameters that must be frozen (fnmatch on every name; a bare module "
    "name 'backbone' means 'backbone.*'). Repeatable.")]
TrainableOpt = Annotated[list[str] | None, typer.Option(
    "--trainable", metavar="GLOB", help="Parameters that must be trained. Repeatable.")]
UnlistedOpt = Annotated[Unlisted, typer.Option(
    "--unlisted", help="Parameters matched by no pattern: ignore, warn, or error (a violation).")]
OptimizerOpt = Annotated[str | None, typer.Option(
    "--optimizer", metavar="SPEC", help="'module:fn' or 'file.py:fn' called with the model, returning a "
    "torch.optim.Optimizer: checks param groups and the steps a training loop runs (step(), zero_grad()).")]
BuffersOpt = Annotated[bool, typer.Option(
    "--allow-buffer-updates", help="Do not fail when buffers of frozen modules (BatchNorm statistics) change "
    "in the train-mode forward.")]
BaselineOpt = Annotated[str | None, typer.Option(
    "--baseline", metavar="FILE", help="Expected requires_grad of every parameter (from --write-baseline); any "
    "difference fails.")]
WriteBaselineOpt = Annotated[Path | None, typer.Option(
    "--write-baseline", metavar="FILE", dir_okay=False,
    help="Write the current requires_grad of every parameter to FILE (then check against it).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE", dir_okay=False, help="TOML file with \\[tool.gradprobe.freeze]; default: the "
    "nearest pyproject.toml with that table, walking up from the current directory.")]
LossOpt = Annotated[str, typer.Option("--loss", help="sum (of every float output), mean, or MOD:fn(outputs, "
                                      "inputs) returning a scalar.")]
JunitOpt = Annotated[Path | None, typer.Option(
    "--junit", metavar="FILE", dir_okay=False, help="Also write JUnit XML (one test case per check and "
    "pattern) for CI test reports.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Exit 1 on warnings too (e.g. a frozen parameter inside an optimizer param group, which "
    "would move once it got a gradient).")]


def freeze_check(
    ctx: typer.Context,
    target: TargetArg = None,
    frozen: FrozenOpt = None,
    trainable: TrainableOpt = None,
    unlisted: UnlistedOpt = Unlisted.warn,
    optimizer: OptimizerOpt = None,
    allow_buffer_updates: BuffersOpt = False,
    baseline: BaselineOpt = None,
    write_baseline: WriteBaselineOpt = None,
    config: ConfigOpt = None,
    loss: LossOpt = "sum",
    init: InitOpt = None,
    weights: WeightsOpt = None,
    inputs: InputsOpt = None,
    shape: ShapeOpt = None,
    dtype: DtypeOpt = "float32",
    high: HighOpt = 2,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    format_: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    junit: JunitOpt = None,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check that the intended freeze holds: flags, gradient flow, optimizer groups and steps, buffers.

    Exit 0 when it holds, 1 on violations (with --strict: on warnings too), 2 when it could not be verified.
    Under GitHub Actions, violations also become ::error annotations and a step summary.
    """
    cli_values: dict[str, Any] = {
        "target": target, "inputs": inputs, "optimizer": optimizer, "loss": loss, "init": init, "weights": weights,
        "shape": shape, "dtype": dtype, "high": high, "device": device, "seed": seed, "frozen": frozen,
        "trainable": trainable, "unlisted": unlisted.value, "allow_buffer_updates": allow_buffer_updates,
        "baseline": baseline,
    }
    given = _given(ctx)

    def body() -> int:
        from gradprobe.render.freeze import github

        try:
            return _run(cli_values, given, config, write_baseline, format_, output, junit, strict)
        except GradprobeError as exc:
            github.publish_error(str(exc), sys.stderr)
            raise

    guarded(debug, body)


def _run(cli_values: dict[str, Any], given: set[str], config: Path | None, write_baseline: Path | None,
         format_: OutputFormat, output: Path | None, junit: Path | None, strict: bool = False) -> int:
    from gradprobe.errors import UsageError
    from gradprobe.load.config import resolve_settings

    settings = resolve_settings(cli_values, given, config, Path.cwd())
    if not settings.target:
        raise UsageError("no TARGET: pass one (gradprobe freeze-check pkg.module:Model) or set target = "
                         "\"pkg.module:Model\" under [tool.gradprobe.freeze] in pyproject.toml")
    with _importable(settings.import_root):
        from gradprobe.api import freeze_check, load, user_output_to_stderr

        with user_output_to_stderr():
            loaded, example = load(settings.target, init=settings.init, weights=settings.weights,
                                   device=settings.device, inputs=settings.inputs, shapes=settings.shape,
                                   dtype=settings.dtype, high=settings.high, seed=settings.seed)
            report = freeze_check(
                loaded.model, example, frozen=settings.frozen, trainable=settings.trainable,
                optimizer=settings.optimizer, unlisted=settings.unlisted,
                allow_buffer_updates=settings.allow_buffer_updates, baseline=settings.baseline,
                write_baseline=write_baseline, loss=settings.loss, seed=settings.seed, target=settings.target,
                loaded=loaded, config=settings.config)
    if write_baseline is not None:
        sys.stderr.write(f"gradprobe: wrote baseline {write_baseline} ({len(report.parameters)} parameters)\n")
    from gradprobe.render.freeze import github
    from gradprobe.render.freeze.view import freeze_json, freeze_markdown, render_freeze

    if format_ is OutputFormat.html:
        from gradprobe.render.html.freeze import freeze_html

        write_text(freeze_html(report), output)
    elif format_ is OutputFormat.json:
        from gradprobe.render.common import dumps

        write_text(dumps(freeze_json(report)), output)
    elif format_ is OutputFormat.markdown:
        write_text(freeze_markdown(report), output)
    else:
        render_rich(lambda console: render_freeze(report, console), output)
    if junit is not None:
        from gradprobe.render.freeze.junit import junit_xml

        try:
            junit.write_text(junit_xml(report), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--junit: cannot write '{junit}' ({exc.strerror}); choose a writable path") from exc
    github.publish(report, freeze_markdown(report), sys.stderr)
    return 0 if report.passed and not (strict and report.warnings) else 1
