"""Writing a report: JSON/Markdown text, or rich views drawn for a terminal, a pipe or a file.

Piped or written to a file, rich output is plain text: no ANSI codes and no trailing spaces (rich pads table
cells and panels to their width).  No torch here.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradprobe.errors import GradprobeError


def write_text(text: str, output: Path | None) -> None:
    """Write a JSON/Markdown document to stdout or the file the user named."""
    text = text if text.endswith("\n") else text + "\n"
    if output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `gradprobe ... | head`: the reader left; keep the exit code, say nothing
            _silence_stdout()
        return
    _write_file(text, output)


def _write_file(text: str, output: Path) -> None:
    """The report into the file the user named (--output), said on stderr."""
    try:
        output.write_text(text, encoding="utf-8")
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


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def plain_text(draw: Callable[[Any], None], width: int) -> str:
    """What ``draw`` shows at ``width`` columns, as plain text without trailing spaces."""
    from rich.console import Console

    buffer = io.StringIO()
    draw(Console(file=buffer, width=width, force_terminal=False, color_system=None, soft_wrap=False,
                 legacy_windows=False))
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def render_rich(draw: Callable[[Any], None], output: Path | None) -> None:
    """Draw rich renderables on the terminal, or as plain text into a pipe or the file the user named."""
    from rich.console import Console

    if output is None and _is_terminal():
        try:
            draw(Console(soft_wrap=False))
        except (BrokenPipeError, SystemExit):  # rich turns a closed pipe into SystemExit(1)
            _silence_stdout()
        return
    width = int(os.environ.get("COLUMNS", "120" if output is not None else "80"))
    text = plain_text(draw, width)
    if output is None:
        write_text(text, None)
        return
    _write_file(text, output)


def write_report(format_: Any, output: Path | None, *, json: Callable[[], Any], markdown: Callable[[], str],
                 table: Callable[[Any], None], html: Callable[[], str] | None = None) -> None:
    """The report in the ``--format`` chosen: ``json`` gives the document (dumped here), ``markdown`` and ``html``
    the text, ``table`` draws on a rich console.  Only the chosen view is built; a command without an HTML view
    shows the table for ``--format html``."""
    kind = getattr(format_, "value", format_)
    if kind == "html" and html is not None:
        write_text(html(), output)
    elif kind == "json":
        from gradprobe.render.common import dumps

        write_text(dumps(json()), output)
    elif kind == "markdown":
        write_text(markdown(), output)
    else:
        render_rich(table, output)
