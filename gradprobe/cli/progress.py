"""The one progress display: a transient line on stderr for runs that take a while.

Shown only when stderr is a terminal and ``GRADPROBE_NO_PROGRESS`` is unset, so pipes, files, CI logs and
``--format json`` on stdout never see it; erased when done.  No torch here: the CLI imports it at command time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

Step = Callable[..., None]


def wanted() -> bool:
    """A terminal on stderr and no ``GRADPROBE_NO_PROGRESS``."""
    if os.environ.get("GRADPROBE_NO_PROGRESS"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(title: str) -> Iterator[Step]:
    """Yield ``step(text, done=None, total=None)``: names the phase running now and, given ``done``/``total``,
    fills a bar (the API's ``progress(description, done, total)`` callback has that shape).

    Without a terminal on stderr, ``step`` does nothing.
    """
    if not wanted():
        yield lambda *args, **kwargs: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    count = TextColumn("{task.fields[count]}")
    bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[title]}[/] {task.description}"), BarColumn(),
                   count, TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                   redirect_stdout=False, redirect_stderr=True)  # user code printing to stderr appears above the line
    with bar:
        task = bar.add_task("", total=None, title=title, count="")

        def step(text: str, done: int | None = None, total: int | None = None) -> None:
            if done is None:
                bar.update(task, description=text)
            else:
                bar.update(task, description=text, completed=done, total=total, count=f"{done}/{total}")

        yield step
