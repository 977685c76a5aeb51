"""``[tool.gradprobe.freeze]`` in pyproject.toml and freeze baseline files: reading and writing them.

No torch here.  Patterns are ``fnmatch`` globs matched against every name a parameter has (tied
parameters have several); a bare module name ``backbone`` also matches ``backbone.*``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradprobe.errors import UsageError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


BASELINE_SCHEMA = "gradprobe.freeze-baseline/1"

# key in [tool.gradprobe.freeze] -> kind of value
CONFIG_KEYS: dict[str, str] = {
    "target": "spec", "inputs": "spec", "optimizer": "spec", "loss": "spec",
    "frozen": "globs", "trainable": "globs", "unlisted": "str", "allow_buffer_updates": "bool",
    "baseline": "path", "weights": "path", "init": "init", "shape": "shapes", "dtype": "str",
    "high": "int", "device": "str", "seed": "int",
}


# --------------------------------------------------------------------------- baseline


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


# --------------------------------------------------------------------------- pyproject.toml


def find_config(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.gradprobe.freeze]`` table, walking up from ``start``."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            if _read_table(candidate) is not None:
                return candidate
    return None


def _read_table(path: Path) -> dict[str, Any] | None:
    if tomllib is None:
        raise UsageError(f"reading {path} needs Python 3.11+ (tomllib) or the tomli package: pip install tomli")
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"--config: cannot read '{path}' ({exc.strerror}); check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc}); fix the file") from exc
    table = doc.get("tool", {}).get("gradprobe", {}).get("freeze")
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.gradprobe.freeze] must be a table; write it as a [tool.gradprobe.freeze] "
                         f"section")
    return table


def _is_file_spec(spec: str) -> bool:
    module_part = spec.rpartition(":")[0]
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def _check_value(path: Path, key: str, kind: str, value: Any) -> Any:
    where = f"{path} [tool.gradprobe.freeze]"
    if kind in ("spec", "str", "path"):
        if not isinstance(value, str):
            raise UsageError(f"{where}: '{key}' must be a string, e.g. {key} = \"...\"")
        return value
    if kind == "globs":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{where}: '{key}' must be a list of glob strings, e.g. {key} = [\"backbone\"]")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"{where}: '{key}' must be true or false")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{where}: '{key}' must be an integer")
        return value
    if kind == "init":
        if not isinstance(value, (dict, str)):
            raise UsageError(f"{where}: 'init' must be a table or a JSON string of keyword arguments")
        return value
    if kind == "shapes":
        items = [value] if isinstance(value, str) or (isinstance(value, list) and value
                                                        and all(isinstance(v, int) for v in value)) else value
        if not isinstance(items, list):
            raise UsageError(f"{where}: 'shape' must be \"8,3,32,32\" or a list of them")
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in item):
                out.append(",".join(str(v) for v in item))
            else:
                raise UsageError(f"{where}: 'shape' must be \"8,3,32,32\" or a list of them")
        return out
    raise AssertionError(kind)


def read_config(path: Path) -> dict[str, Any]:
    """``[tool.gradprobe.freeze]`` of ``path``, validated, with relative paths made absolute to its directory."""
    table = _read_table(path)
    if table is None:
        raise UsageError(f"--config: '{path}' has no [tool.gradprobe.freeze] table; add one or drop --config")
    root = path.resolve().parent
    settings: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        kind = CONFIG_KEYS.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, list(CONFIG_KEYS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(CONFIG_KEYS)}"
            raise UsageError(f"{path} [tool.gradprobe.freeze]: unknown key '{raw_key}'; {hint}")
        value = _check_value(path, key, kind, value)
        if kind == "spec" and value not in ("sum", "mean") and ":" in value and _is_file_spec(value):
            module_part, _, attr = value.rpartition(":")
            if not Path(module_part).expanduser().is_absolute():
                value = f"{root / module_part}:{attr}"
        elif kind == "path" and not Path(value).expanduser().is_absolute():
            value = str(root / value)
        settings[key] = value
    return settings


@dataclass
class FreezeSettings:
    """Everything a ``freeze-check`` run needs, after merging pyproject.toml and the command line."""

    target: str | None = None
    inputs: str | None = None
    optimizer: str | None = None
    loss: str = "sum"
    init: str | dict[str, Any] | None = None
    weights: str | None = None
    shape: list[str] | None = None
    dtype: str = "float32"
    high: int = 2
    device: str = "cpu"
    seed: int = 0
    frozen: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    unlisted: str = "warn"
    allow_buffer_updates: bool = False
    baseline: str | None = None
    config: Path | None = None  # the pyproject.toml the settings came from

    @property
    def import_root(self) -> Path | None:
        """``module:fn`` specs from the config import relative to the config's directory."""
        return self.config.resolve().parent if self.config is not None else None


def resolve_settings(cli: Mapping[str, Any], given: Iterable[str], config: Path | None, cwd: Path) -> FreezeSettings:
    """Command-line values override ``[tool.gradprobe.freeze]``; the table fills in what the command line left out."""
    given = set(given)
    path = config if config is not None else find_config(cwd)
    table = read_config(path) if path is not None else {}
    settings = FreezeSettings(config=path)
    for key in vars(settings):
        if key == "config":
            continue
        if key in given or key not in table:
            if key in cli:
                value = cli[key]
                if key in ("frozen", "trainable"):
                    value = list(value or [])
                setattr(settings, key, value)
        else:
            setattr(settings, key, table[key])
    return settings


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
