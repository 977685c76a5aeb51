"""A progress line on stderr for runs that take a while (large models, meta estimates, several modes).

Shown only when stderr is a terminal, so pipes, files, CI logs and ``--format json`` on stdout never
see it; it is transient (erased when done).  No torch here: the CLI imports it at command time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

Step = Callable[..., None]


def _wanted() -> bool:
    if os.environ.get("GRADPROBE_NO_PROGRESS"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(title: str, total: int | None = None) -> Iterator[Step]:
    """Yield ``step(text, advance=0)``: names the phase running now (and advances a bar of ``total`` steps).

    Without a terminal on stderr, ``step`` does nothing.
    """
    if not _wanted():
        yield lambda *args, **kwargs: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[title]}[/] {task.description}"), BarColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True, redirect_stdout=False,
                   redirect_stderr=True)  # user code printing to stderr appears above the line
    with bar:
        task = bar.add_task("", total=total, title=title)

        def step(text: str, advance: int = 0) -> None:
            bar.update(task, description=text, advance=advance)

        yield step
