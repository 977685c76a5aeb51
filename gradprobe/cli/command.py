"""What every command body shares: settings from the command line over pyproject.toml, a quiet torch import,
one-line errors with exit code 2, and pattern options that match nothing.

No torch at import time: ``gradprobe --help`` must stay instant.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import typer

from gradprobe.errors import GradprobeError, UsageError
from gradprobe.load.config import Settings, resolve_settings


def print_error(message: str, kind: str = "error") -> None:
    """One line on stderr, no traceback."""
    sys.stderr.write(f"gradprobe: {kind}: {message}\n")
    sys.stderr.flush()


def _another_rank() -> bool:
    """Under a launcher, a rank other than 0.  Options are checked on every rank before the ranks meet (the same
    command line and settings everywhere): a usage error is then the same on every rank, and rank 0 says it once."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def guarded(debug: bool, body: Callable[[], int]) -> None:
    """Run a command body; turn every failure into one line and exit code 2."""
    try:
        with torch_warnings_quiet():
            code = body()
    except typer.Exit:
        raise
    except GradprobeError as exc:
        _traceback(debug)
        if not (isinstance(exc, UsageError) and _another_rank()):
            print_error(str(exc), exc.kind)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _traceback(debug)
        print_error("interrupted (KeyboardInterrupt); the model was restored and nothing was reported")
        raise typer.Exit(2) from None
    except SystemExit as exc:
        _traceback(debug)
        print_error(f"the model's code called sys.exit({exc.code!r}) during the run")
        raise typer.Exit(2) from None
    except RecursionError as exc:
        _traceback(debug)
        print_error(f"recursion limit hit ({exc}); run with --debug and report it")
        raise typer.Exit(2) from None
    except Exception as exc:  # a bug of ours or an unexpected failure in user code: still one line
        _traceback(debug)
        first = (str(exc).strip().splitlines() or [""])[0]
        print_error(f"{type(exc).__name__}: {first} (run with --debug for the traceback)", "unexpected error")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _traceback(debug: bool) -> None:
    if debug:
        traceback.print_exc()


def given_options(ctx: typer.Context, names: Iterable[str]) -> set[str]:
    """The options the user set on the command line (or in the environment), not left at their default."""
    given = set()
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            given.add(name)
    return given


def settings(ctx: typer.Context, command: str, values: Mapping[str, Any], config: Path | None,
             no_config: bool) -> Settings:
    """The command line over ``[tool.gradprobe]``; says on stderr which table was used and what it supplied."""
    resolved = resolve_settings(command, values, given_options(ctx, values), config, Path.cwd(), no_config)
    line = resolved.describe()
    if line is not None:
        sys.stderr.write(f"gradprobe: {line}\n")
    if not resolved["target"]:
        raise UsageError(f"no TARGET: pass one (gradprobe {command} pkg.module:Model) or set target = "
                         f"\"pkg.module:Model\" under [tool.gradprobe] in pyproject.toml")
    return resolved


def quiet_torch_import(debug: bool) -> None:
    """Import torch with its import-time warnings (e.g. NumPy missing) kept out of gradprobe's output: one line
    under --debug, nothing otherwise."""
    if "torch" in sys.modules:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch  # noqa: F401
    if debug and caught:
        first = " ".join(str(caught[0].message).split())
        more = f" (+{len(caught) - 1} more)" if len(caught) > 1 else ""
        sys.stderr.write(f"gradprobe: debug: importing torch warned: {first}{more}\n")


@contextlib.contextmanager
def torch_warnings_quiet() -> Iterator[None]:
    """torch repeats some import-time warnings at first use (NumPy missing): keep them off gradprobe's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        yield


def check_pattern(option: str, pattern: str | None, names: Iterable[str]) -> None:
    """A glob that matches none of ``names`` is a usage error, with the closest names as a suggestion."""
    if pattern is None:
        return
    pool = sorted(set(names))
    if any(fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*") for n in pool):
        return
    plain = pattern.strip("*?[]")
    close = difflib.get_close_matches(plain, pool, n=3, cutoff=0.5) or [n for n in pool if plain and plain in n][:3]
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
        f"names look like: {', '.join(pool[:5])}" if pool else "the model has no names to match"
    raise UsageError(f"{option} '{pattern}' matches no name; {hint} (globs use fnmatch: '*' and '?')")


def load_target(s: Settings) -> Any:
    """The model and example inputs the command's settings name (``gradprobe.api.load``): ``(loaded, example)``."""
    from gradprobe.api import load

    return load(s["target"], init=s["init"], weights=s["weights"], device=s["device"], inputs=s["inputs"],
                shapes=s["shape"], dtype=s["dtype"], high=s["high"], seed=s["seed"])
