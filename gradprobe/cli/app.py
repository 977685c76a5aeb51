"""The ``gradprobe`` command line: parse, call the API, render, set the exit code.

Importing this package must not import torch, so ``--help`` is instant.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from gradprobe.cli import compare, freeze
from gradprobe.cli import inspect as inspect_command


class _BareHelpFlag:
    """``--help`` takes no value: show no type for it in --help (newer typer prints ``<bool>``)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_BareHelpFlag, TyperCommand):
    pass


class Group(_BareHelpFlag, TyperGroup):
    pass


app = typer.Typer(
    name="gradprobe",
    cls=Group,
    help="Show what PyTorch's autograd sees in your model: gradients, graphs, memory, and the classic mistakes.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.command("inspect", cls=Command, rich_help_panel="Commands", epilog=inspect_command.EPILOG)(inspect_command.inspect)
app.command("compare-modes", cls=Command, rich_help_panel="Commands", epilog=compare.EPILOG)(compare.compare_modes)
app.command("freeze-check", cls=Command, rich_help_panel="Commands", epilog=freeze.EPILOG)(freeze.freeze_check)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"gradprobe {version('gradprobe')}")
        except PackageNotFoundError:
            print("gradprobe (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.",
                                 metavar=""),
) -> None:
    """Show what PyTorch's autograd sees in your model: gradients, graphs, memory, and the classic mistakes."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: click's usage errors become one line and exit code 2."""
    exits, aborts, usage_errors, click_errors = _click_exceptions()
    command = typer.main.get_command(app)
    for param in command.params:  # --install-completion/--show-completion are flags: no type in --help
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    try:
        result = command.main(args=argv, prog_name="gradprobe", standalone_mode=False)
    except exits as exc:
        return exc.exit_code  # type: ignore[attr-defined,no-any-return]
    except aborts:
        sys.stderr.write("gradprobe: error: aborted\n")
        return 2
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `gradprobe`: the help was already printed
            return 2
        ctx = exc.ctx  # type: ignore[attr-defined]
        sub = f" {ctx.info_name}" if ctx is not None and ctx.info_name != "gradprobe" else ""
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        sys.stderr.write(f"gradprobe: usage error: {message} (see 'gradprobe{sub} --help')\n")
        return 2
    except click_errors as exc:
        sys.stderr.write(f"gradprobe: error: {' '.join(exc.format_message().split())}\n")  # type: ignore[attr-defined]
        return 2
    return result if isinstance(result, int) else 0


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], ...]:
    """(exit, abort, usage error, click error) classes of whichever click typer runs on.

    Newer typer vendors its own click (``typer._click``; Exit/Abort in ``typer.exceptions``) and does not
    depend on the ``click`` package, whose exception classes are then different: catch both kinds.
    """
    exits: list[type[BaseException]] = [typer.Exit]
    aborts: list[type[BaseException]] = []
    usage: list[type[BaseException]] = []
    other: list[type[BaseException]] = []
    try:
        from typer import exceptions as typer_exceptions
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        aborts.append(typer_exceptions.Abort)
        usage.append(vendored.UsageError)
        other.append(vendored.ClickException)
    try:
        import click
    except ImportError:
        pass
    else:
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.exceptions.UsageError)
        other.append(click.exceptions.ClickException)
    return tuple(exits), tuple(aborts), tuple(usage), tuple(other)
