"""``[tool.gradprobe]`` in pyproject.toml: settings for every command, merged under the command line.

Precedence, for every key of every command: an option given on the command line > the table > the default.

* ``[tool.gradprobe]`` holds what every command shares (target, inputs, shape, device, path ...);
* ``[tool.gradprobe.inspect]``, ``[tool.gradprobe.compare-modes]`` and ``[tool.gradprobe.freeze]`` add to (and
  override) it for one command; the freeze table also holds the intended freeze (frozen, trainable, optimizer ...).

When the table names a ``target`` and the command line names another, the table's target-specific keys
(inputs, shape, optimizer, baseline ...) are not used: they were written for the other model.  Relative paths
in the table are relative to the pyproject.toml's folder.  No torch here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradprobe.errors import UsageError
from gradprobe.load.user_code import is_file_spec

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


# key -> kind of value; SHARED_KEYS may appear in every table
SHARED_KEYS: dict[str, str] = {
    "target": "spec", "inputs": "spec", "loss": "spec", "init": "init", "weights": "path", "shape": "shapes",
    "dtype": "str", "high": "int", "device": "str", "seed": "int", "path": "paths",
}
FREEZE_KEYS: dict[str, str] = {
    "optimizer": "spec", "frozen": "globs", "trainable": "globs", "unlisted": "str", "allow_buffer_updates": "bool",
    "baseline": "path",
}
CONFIG_KEYS: dict[str, str] = {**SHARED_KEYS, **FREEZE_KEYS}
# written for one model: not used when the command line names another target than the table
TARGET_KEYS = ("inputs", "shape", "dtype", "high", "init", "weights", "loss", "optimizer", "baseline")
# command -> its own table under [tool.gradprobe]
COMMAND_TABLES = {"inspect": "inspect", "compare-modes": "compare-modes", "freeze-check": "freeze"}


# --------------------------------------------------------------------------- finding and reading the file


def _load_toml(path: Path) -> dict[str, Any]:
    if tomllib is None:
        raise UsageError(f"reading {path} needs Python 3.11+ (tomllib) or the tomli package: pip install tomli")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"--config: cannot read '{path}' ({exc.strerror}); check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc}); fix the file") from exc


def _gradprobe_table(path: Path) -> dict[str, Any] | None:
    tool = _load_toml(path).get("tool", {})
    table = tool.get("gradprobe") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.gradprobe] must be a table; write it as a [tool.gradprobe] section")
    return table


def find_config(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.gradprobe]`` table, walking up from ``start``."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and _gradprobe_table(candidate) is not None:
            return candidate
    return None


def _check_value(where: str, key: str, kind: str, value: Any) -> Any:
    if kind in ("spec", "str", "path"):
        if not isinstance(value, str):
            raise UsageError(f"{where}: '{key}' must be a string, e.g. {key} = \"...\"")
        return value
    if kind in ("globs", "paths"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            example = '["backbone"]' if kind == "globs" else '["src", "third_party"]'
            raise UsageError(f"{where}: '{key}' must be a list of strings, e.g. {key} = {example}")
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
        return _shapes(where, value)
    raise AssertionError(kind)


def _shapes(where: str, value: Any) -> list[str]:
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


def _absolute(root: Path, kind: str, value: Any) -> Any:
    """Relative file specs and paths in the table are relative to the pyproject.toml's folder."""
    if kind == "spec" and value not in ("sum", "mean") and ":" in value and is_file_spec(value.rpartition(":")[0]):
        module_part, _, attr = value.rpartition(":")
        if not Path(module_part).expanduser().is_absolute():
            return f"{root / module_part}:{attr}"
    elif kind == "path" and not Path(value).expanduser().is_absolute():
        return str(root / value)
    elif kind == "paths":
        return [v if Path(v).expanduser().is_absolute() else str(root / v) for v in value]
    return value


def _read_section(path: Path, name: str, section: dict[str, Any], keys: dict[str, str],
                  subtables: Iterable[str] = ()) -> dict[str, Any]:
    where = f"{path} [{name}]"
    root = path.resolve().parent
    settings: dict[str, Any] = {}
    for raw_key, value in section.items():
        key = raw_key.replace("-", "_")
        if raw_key in subtables:
            continue
        kind = keys.get(key)
        if kind is None:
            if key in CONFIG_KEYS:
                raise UsageError(f"{where}: '{raw_key}' belongs under [tool.gradprobe.freeze]; move it there")
            close = difflib.get_close_matches(key, [*keys, *subtables], n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(keys)}"
            raise UsageError(f"{where}: unknown key '{raw_key}'; {hint}")
        settings[key] = _absolute(root, kind, _check_value(where, key, kind, value))
    return settings


@dataclass
class Table:
    """What the pyproject.toml says for one command: merged values, and the sections they came from."""

    path: Path
    sections: tuple[str, ...]
    values: dict[str, Any]


def read_config(path: Path, command: str = "freeze-check") -> Table:
    """``[tool.gradprobe]`` merged with the command's own table, validated, relative paths made absolute."""
    table = _gradprobe_table(path)
    if table is None:
        raise UsageError(f"--config: '{path}' has no [tool.gradprobe] table; add one or drop --config")
    own = COMMAND_TABLES[command]
    for sub in COMMAND_TABLES.values():
        if sub in table and not isinstance(table[sub], dict):
            raise UsageError(f"{path}: [tool.gradprobe.{sub}] must be a table; write it as a "
                             f"[tool.gradprobe.{sub}] section")
    shared = {k: v for k, v in table.items() if k not in COMMAND_TABLES.values()}
    values = _read_section(path, "tool.gradprobe", shared, SHARED_KEYS)
    sections = ["[tool.gradprobe]"] if shared else []
    # every command's table is validated, so a typo in another command's table is caught too
    for sub in COMMAND_TABLES.values():
        if sub in table:
            keys = CONFIG_KEYS if sub == "freeze" else SHARED_KEYS
            section = _read_section(path, f"tool.gradprobe.{sub}", table[sub], keys)
            if sub == own:
                values.update(section)
                sections.append(f"[tool.gradprobe.{sub}]")
    return Table(path, tuple(sections), values)


# --------------------------------------------------------------------------- merging with the command line


@dataclass
class Settings:
    """A command's option values after merging the command line over the table."""

    values: dict[str, Any]
    config: Path | None = None  # the pyproject.toml that was read
    sections: tuple[str, ...] = ()
    supplied: tuple[str, ...] = ()  # keys whose value came from the table
    skipped: tuple[str, ...] = ()  # target-specific keys not used: the table was written for another target
    table_target: str | None = None
    paths: list[str] = field(default_factory=list)  # import directories: --path, the table's path, its folder

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def describe(self) -> str | None:
        """One line for stderr: which table was used and which keys it supplied; None without a table."""
        if self.config is None:
            return None
        where = f"{self.config} {' + '.join(self.sections) or '[tool.gradprobe]'}"
        used = f"supplied {', '.join(self.supplied)}" if self.supplied else "supplied nothing" if self.skipped \
            else "supplied nothing: the command line gave every key it sets"
        skipped = f"; not used, as written for target '{self.table_target}': {', '.join(self.skipped)}" \
            if self.skipped else ""
        return f"config: {where} {used}{skipped}"


def _same_target(given: str, written: str, cwd: Path) -> bool:
    if given == written:
        return True
    module_a, _, attr_a = given.rpartition(":")
    module_b, _, attr_b = written.rpartition(":")
    if attr_a != attr_b or not (module_a and module_b):
        return False
    if is_file_spec(module_a) and is_file_spec(module_b):
        return (cwd / Path(module_a).expanduser()).resolve() == Path(module_b).expanduser().resolve()
    return False


def resolve_settings(command: str, cli: Mapping[str, Any], given: Iterable[str], config: Path | None, cwd: Path,
                     no_config: bool = False) -> Settings:
    """Command-line values given explicitly win; the table fills in the rest; the defaults what remains."""
    given = set(given)
    path = None if no_config else (config if config is not None else find_config(cwd))
    table = read_config(path, command) if path is not None else None
    found = dict(table.values) if table is not None else {}
    written_for = found.get("target")
    skipped: list[str] = []
    if written_for and "target" in given and cli.get("target") and not _same_target(cli["target"], written_for, cwd):
        skipped = [k for k in TARGET_KEYS if k in found and k in cli and k not in given]
        for key in TARGET_KEYS:
            found.pop(key, None)
    values: dict[str, Any] = {}
    supplied: list[str] = []
    for key, value in cli.items():
        if key in given or key not in found:
            values[key] = value
        else:
            values[key] = found[key]
            supplied.append(key)
    paths = [str(p) for p in cli.get("path") or []]
    if "path" in found and "path" not in supplied:
        supplied.append("path")
    if path is not None:
        root = path.resolve().parent
        for entry in found.get("path", []):
            if not Path(entry).is_dir():
                raise UsageError(f"{path} [tool.gradprobe]: path entry '{entry}' is not a directory; fix the entry")
            paths.append(entry)
        paths += [str(d) for d in (root, root / "src") if d.is_dir()]
    values["path"] = paths
    return Settings(values, path, table.sections if table is not None else (), tuple(supplied), tuple(skipped),
                    written_for, paths)
