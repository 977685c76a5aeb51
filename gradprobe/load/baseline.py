"""Freeze baseline files (``--write-baseline`` / ``--baseline``): the expected ``requires_grad`` of every parameter.

No torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gradprobe.errors import UsageError

BASELINE_SCHEMA = "gradprobe.freeze-baseline/1"


def read_baseline(path: str | Path) -> dict[str, bool]:
    """Load a ``--write-baseline`` file: qualified name → expected ``requires_grad``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"--baseline: '{path}' not found; create it with --write-baseline {path}") from exc
    except OSError as exc:
        raise UsageError(f"--baseline: cannot read '{path}' ({exc.strerror}); check the path") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"--baseline: '{path}' is not JSON ({exc.msg}, line {exc.lineno}); "
                         f"rewrite it with --write-baseline {path}") from exc
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, bool) for k, v in params.items()):
        raise UsageError(f"--baseline: '{path}' has no 'parameters' object of name → requires_grad; "
                         f"rewrite it with --write-baseline {path}")
    if doc.get("schema") != BASELINE_SCHEMA:
        raise UsageError(f"--baseline: '{path}' has schema {doc.get('schema')!r}, expected '{BASELINE_SCHEMA}'; "
                         f"rewrite it with --write-baseline {path}")
    return dict(params)


def baseline_document(params: Iterable[tuple[Iterable[str], bool]], target: str) -> dict[str, Any]:
    """Every name of every parameter (tied aliases too) with its ``requires_grad``, sorted for clean diffs."""
    flags: dict[str, bool] = {}
    for names, requires_grad in params:
        for n in names:
            flags[n] = bool(requires_grad)
    return {"schema": BASELINE_SCHEMA, "target": target, "parameters": dict(sorted(flags.items()))}


def write_baseline(path: str | Path, params: Iterable[tuple[Iterable[str], bool]], target: str) -> None:
    doc = baseline_document(params, target)
    try:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--write-baseline: cannot write '{path}' ({exc.strerror}); choose a writable path") from exc


# --------------------------------------------------------------------------- baseline for one check


def resolve_baseline(
    baseline: str | os.PathLike[str] | Mapping[str, bool] | None,
    write_to: str | os.PathLike[str] | None,
    params: list[tuple[list[str], bool]],
    target: str,
) -> tuple[dict[str, bool] | None, str | None]:
    """(expected flags, where they came from): ``write_to`` is written from ``params`` first and, when no
    ``baseline`` is given, checked against; a mapping is taken as is."""
    if write_to is not None:
        write_baseline(write_to, params, target)
        if baseline is None:
            baseline = write_to
    if baseline is None:
        return None, None
    if isinstance(baseline, Mapping):
        return {str(k): bool(v) for k, v in baseline.items()}, "(mapping)"
    path = os.fspath(baseline)
    return read_baseline(path), path
