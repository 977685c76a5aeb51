"""The ``gradprobe`` command line: parse, call the API, render, set the exit code.

Importing this package must not import torch, so ``--help`` is instant.
"""

from __future__ import annotations

import sys

import typer

from gradprobe.cli.inspect_cmd import inspect

app = typer.Typer(
    name="gradprobe",
    help="Show what PyTorch's autograd sees in your model: gradients, graphs, memory, and the classic mistakes.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.command("inspect")(inspect)


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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Show what PyTorch's autograd sees in your model: gradients, graphs, memory, and the classic mistakes."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: click's usage errors become one line and exit code 2."""
    import click

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="gradprobe", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        sys.stderr.write("gradprobe: error: aborted\n")
        return 2
    except click.exceptions.UsageError as exc:
        sub = f" {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx.info_name != "gradprobe" else ""
        sys.stderr.write(f"gradprobe: usage error: {exc.format_message()} (see 'gradprobe{sub} --help')\n")
        return 2
    except click.exceptions.ClickException as exc:
        sys.stderr.write(f"gradprobe: error: {exc.format_message()}\n")
        return 2
    return result if isinstance(result, int) else 0
