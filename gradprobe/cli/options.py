"""Options every command shares, error handling, and output writing.

Nothing here imports torch: ``gradprobe --help`` must stay instant.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gradprobe.errors import GradprobeError


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


TargetArg = Annotated[str, typer.Argument(
    metavar="TARGET", help="The model: 'package.module:Name' or 'path/to/file.py:Name' (class, factory or instance).",
    show_default=False)]
InitOpt = Annotated[str | None, typer.Option(
    "--init", metavar="JSON", help="Keyword arguments for the class or factory, as a JSON object.")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", metavar="FILE", help="State dict to load (.pt/.pth with weights_only=True, or .safetensors).")]
InputsOpt = Annotated[str | None, typer.Option(
    "--inputs", metavar="SPEC", help="'module:fn' or 'file.py:fn' returning a tensor, tuple (positional) or dict "
    "(keyword); it may take the model as its one argument.")]
ShapeOpt = Annotated[list[str] | None, typer.Option(
    "--shape", metavar="DIMS", help="Random input of this shape, e.g. 8,3,32,32; repeat once per positional input.")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="dtype of --shape inputs (integer dtypes draw from [0, --high)).")]
HighOpt = Annotated[int, typer.Option("--high", help="Upper bound (exclusive) for integer --shape inputs.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, mps, or meta (estimates without memory).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for inputs, initialisation and dropout.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.", case_sensitive=False)]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="FILE", help="Write the report to FILE instead of stdout.", dir_okay=False)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]


def print_error(message: str, kind: str = "error") -> None:
    """One line on stderr, no traceback."""
    sys.stderr.write(f"gradprobe: {kind}: {message}\n")
    sys.stderr.flush()


def guarded(debug: bool, body: Callable[[], int]) -> None:
    """Run a command body; turn every failure into one line and exit code 2."""
    try:
        code = body()
    except typer.Exit:
        raise
    except GradprobeError as exc:
        if debug:
            traceback.print_exc()
        print_error(str(exc), exc.kind)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print_error("interrupted (KeyboardInterrupt); the model was restored and nothing was reported")
        raise typer.Exit(2) from None
    except SystemExit as exc:
        if debug:
            traceback.print_exc()
        print_error(f"the model's code called sys.exit({exc.code!r}) during the run")
        raise typer.Exit(2) from None
    except RecursionError as exc:
        if debug:
            traceback.print_exc()
        print_error(f"recursion limit hit ({exc}); run with --debug and report it")
        raise typer.Exit(2) from None
    except Exception as exc:  # a bug of ours or an unexpected failure in user code: still one line
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        print_error(f"{type(exc).__name__}: {first} (run with --debug for the traceback)", "unexpected error")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def write_text(text: str, output: Path | None) -> None:
    """Write a JSON/Markdown document to stdout or the file the user named."""
    if output is None:
        try:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `gradprobe ... | head`: the reader left; keep the exit code, say nothing
            _silence_stdout()
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise GradprobeError(f"--output: cannot write '{output}' ({exc.strerror}); choose a writable path") from exc
    sys.stderr.write(f"gradprobe: wrote {output}\n")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def render_rich(draw: Callable[[Any], None], output: Path | None) -> None:
    """Draw rich renderables on stdout, or into a plain-text file at a fixed width."""
    from rich.console import Console

    if output is None:
        try:
            draw(Console(soft_wrap=False))
        except (BrokenPipeError, SystemExit):  # rich turns a closed pipe into SystemExit(1)
            _silence_stdout()
        return
    try:
        with output.open("w", encoding="utf-8") as fh:
            draw(Console(file=fh, width=int(os.environ.get("COLUMNS", "120")), force_terminal=False,
                         color_system=None))
    except OSError as exc:
        raise GradprobeError(f"--output: cannot write '{output}' ({exc.strerror}); choose a writable path") from exc
    sys.stderr.write(f"gradprobe: wrote {output}\n")
