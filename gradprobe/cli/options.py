"""Options every command shares, grouped into help panels.

Nothing here imports torch: ``gradprobe --help`` must stay instant.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gradprobe.cli.complete import complete_spec, complete_target

TARGET_PANEL = "Target & inputs"
RUN_PANEL = "Run"
OUTPUT_PANEL = "Output"
CI_PANEL = "CI"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"  # one self-contained page (issue 14); use with -o report.html


def flag(name: str, help: str, panel: str) -> Any:
    """A boolean switch: no value, so no type shown in --help."""
    return typer.Option(name, help=help, metavar="", rich_help_panel=panel, show_default=False)


TargetArg = Annotated[str | None, typer.Argument(
    metavar="TARGET", show_default=False, autocompletion=complete_target,
    help="The model: 'package.module:Name' or 'path/to/file.py:Name' (class, factory or instance), or a Hugging "
         "Face model folder (with config.json). May come from 'target' in \\[tool.gradprobe] of pyproject.toml.")]
InitOpt = Annotated[str | None, typer.Option(
    "--init", metavar="JSON", rich_help_panel=TARGET_PANEL,
    help="Keyword arguments for the class or factory (config values for a Hugging Face folder), as a JSON object.")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", metavar="FILE", rich_help_panel=TARGET_PANEL,
    help="State dict to load (.pt/.pth with weights_only=True, or .safetensors).")]
InputsOpt = Annotated[str | None, typer.Option(
    "--inputs", metavar="SPEC", rich_help_panel=TARGET_PANEL, autocompletion=complete_spec,
    help="'module:fn' or 'file.py:fn' returning a tensor, tuple (positional) or dict (keyword); it may take the "
         "model as its one argument.")]
ShapeOpt = Annotated[list[str] | None, typer.Option(
    "--shape", metavar="DIMS", rich_help_panel=TARGET_PANEL,
    help="Random input of this shape, e.g. 8,3,32,32; repeat once per positional input (a Hugging Face folder: "
         "B,T).")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", metavar="DTYPE", rich_help_panel=TARGET_PANEL,
    help="dtype of --shape inputs: float32, int64 (token ids), bool ...")]
HighOpt = Annotated[int | None, typer.Option(
    "--high", metavar="N", rich_help_panel=TARGET_PANEL, show_default=False,
    help="Integer --shape inputs are drawn from [0, N). Default: the num_embeddings of the model's first "
         "nn.Embedding, else 2.")]
PathOpt = Annotated[list[str] | None, typer.Option(
    "--path", metavar="DIR", rich_help_panel=TARGET_PANEL,
    help="Also import from DIR (repeatable); the current folder and its src/ are searched already.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE", dir_okay=False, rich_help_panel=TARGET_PANEL,
    help="TOML file with \\[tool.gradprobe]; default: the nearest pyproject.toml with that table, walking up from "
         "the current folder. Options given here win over it.")]
NoConfigOpt = Annotated[bool, flag("--no-config", "Ignore \\[tool.gradprobe] in pyproject.toml.", TARGET_PANEL)]
LossOpt = Annotated[str | None, typer.Option(
    "--loss", metavar="LOSS", rich_help_panel=RUN_PANEL, show_default=False, autocompletion=complete_spec,
    help="sum (of every float output; the default), mean, or MOD:fn(outputs, inputs) returning a scalar. A Hugging "
         "Face folder given labels defaults to the model's own loss.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", rich_help_panel=RUN_PANEL,
    help="cpu, cuda, cuda:N, mps, or meta (estimates without memory).")]
SeedOpt = Annotated[int, typer.Option("--seed", metavar="N", rich_help_panel=RUN_PANEL,
                                      help="Seed for inputs, initialisation and dropout.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.", case_sensitive=False,
                                                 rich_help_panel=OUTPUT_PANEL)]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="FILE", help="Write the report to FILE instead of stdout.", dir_okay=False,
    rich_help_panel=OUTPUT_PANEL)]
DebugOpt = Annotated[bool, flag("--debug", "Show tracebacks for errors.", OUTPUT_PANEL)]

# the options a pyproject table may set, as the command functions name them
LOADING = ("target", "init", "weights", "inputs", "shape", "dtype", "high", "device", "seed", "loss", "path")

F = TypeVar("F", bound=Callable[..., Any])


def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A shared option as a parameter of the command functions: its declaration and its default, once."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


# target & inputs: the first options of every command, in this order
LOAD_OPTIONS = (
    option("target", TargetArg, None), option("init", InitOpt, None), option("weights", WeightsOpt, None),
    option("inputs", InputsOpt, None), option("shape", ShapeOpt, None), option("dtype", DtypeOpt, "float32"),
    option("high", HighOpt, None), option("path", PathOpt, None), option("config", ConfigOpt, None),
    option("no_config", NoConfigOpt, False),
)


def with_options(first: Sequence[inspect.Parameter] = (), last: Sequence[inspect.Parameter] = ()) -> Callable[[F], F]:
    """Put option groups every command shares into a command's signature (what typer reads): ``first`` right
    after the context, ``last`` at the end, the command's own options in between, so --help keeps one order.
    The command receives the shared ones in ``**shared``."""

    def decorate(func: F) -> F:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        params = [*own[:1], *first, *own[1:], *last]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


def loading_values(own: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """The values of the options a pyproject table may set (``LOADING``), from a command's own and shared ones,
    in the order of the command's signature (the shared loading options come first)."""
    return {name: value for name, value in {**shared, **own}.items() if name in LOADING}


def examples(*lines: str) -> str:
    """An ``Examples`` epilog for a command's --help: one command per line."""
    body = "\n\n".join(f"  {line}" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"
