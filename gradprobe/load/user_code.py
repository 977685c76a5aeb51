"""Import the user's code: ``package.module:Name`` and ``path/to/file.py:Name`` specs.

Where a module is looked for: the directories given with ``--path`` (and ``path`` in the pyproject table),
then the current directory and its ``src/`` folder (the usual ``src`` layout), then ``sys.path``.  A file
inside a package (``__init__.py`` files above it) is imported as that package's module, so its relative
imports work.  Every failure becomes a one-line ``TargetError`` naming the fix.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from gradprobe.errors import TargetError, UsageError, describe_exception

SPEC_FORMS = "'package.module:Name' or 'path/to/file.py:Name'"
PATH_HINT = "add the folder that holds it with --path DIR (repeatable) or path = [\"DIR\"] under [tool.gradprobe] " \
            "in pyproject.toml"

# extra import directories for this command (--path, the pyproject table's `path` and the table's own folder)
_EXTRA_DIRS: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("gradprobe_extra_dirs", default=())


@contextlib.contextmanager
def search_paths(directories: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """Look for user modules in ``directories`` (first) while the block runs."""
    dirs: list[Path] = []
    for directory in directories:
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise UsageError(f"--path '{directory}' is not a directory; name the folder that holds your package")
        dirs.append(path.resolve())
    token = _EXTRA_DIRS.set((*dirs, *_EXTRA_DIRS.get()))
    try:
        yield
    finally:
        _EXTRA_DIRS.reset(token)


def search_dirs() -> list[Path]:
    """Where ``package.module`` specs are looked for, in order (before ``sys.path``)."""
    cwd = Path.cwd()
    found: list[Path] = []
    for directory in (*_EXTRA_DIRS.get(), cwd, cwd / "src"):
        if directory.is_dir() and directory not in found:
            found.append(directory)
    return found


def is_file_spec(module_part: str) -> bool:
    """``file.py`` or ``dir/file`` rather than a dotted module name."""
    return module_part.endswith(".py") or os.sep in module_part or "/" in module_part


# --------------------------------------------------------------------------- specs


def split_spec(spec: str, option: str = "TARGET") -> tuple[str, str]:
    """Split ``mod:Name`` / ``file.py:Name`` into its module part and dotted attribute path."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(f"{option} '{spec}' is not a spec: write it as {SPEC_FORMS}{_names_in_file(spec)}")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"{option} '{spec}': '{attr}' is not a (dotted) Python name")
    return module_part, attr


def public_names(path: Path) -> list[str]:
    """Top-level classes and functions of a .py file, read with ast (nothing is run); [] if unreadable."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):  # model = Net(): an instance target
            names += [t.id for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    return names


def _names_in_file(path_text: str) -> str:
    """``; it defines: Net, build`` for a .py path given without ``:Name``."""
    path = Path(path_text.rstrip(":"))
    if path.suffix != ".py" or not path.is_file():
        return ""
    names = public_names(path)
    return f"; '{path_text.rstrip(':')}' defines: {', '.join(names[:8])}" if names else ""


# --------------------------------------------------------------------------- importing


@contextlib.contextmanager
def _on_sys_path(directories: Iterable[Path]) -> Iterator[None]:
    """Make ``directories`` importable (first, in order) for the duration of the import, as ``python -m`` does."""
    added = [str(d) for d in directories if str(d) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    """Import user code without writing ``__pycache__`` into the user's project (gradprobe writes no files)."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def user_frame(exc: BaseException) -> str:
    """`` (at file:line)`` for the innermost frame of the traceback, if any."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    code = last.tb_frame.f_code
    return f" (at {code.co_filename}:{last.tb_lineno})"


def _run_user_import(load: Callable[[], Any], label: str, option: str) -> Any:
    try:
        with _no_bytecode():
            return load()
    except ModuleNotFoundError:
        raise
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else label
        raise TargetError(f"{option}: syntax error in {where}: {exc.msg}; fix the file and retry") from exc
    except SystemExit as exc:
        raise TargetError(
            f"{option}: importing '{label}' called sys.exit({exc.code!r}); guard script code with "
            f"`if __name__ == \"__main__\":`"
        ) from exc
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise TargetError(
            f"{option}: importing '{label}' raised {describe_exception(exc)}{user_frame(exc)}; "
            f"fix the import-time error (run it with --debug for the traceback)"
        ) from exc


def _missing_dependency(exc: ModuleNotFoundError, label: str, option: str) -> TargetError:
    return TargetError(f"{option}: importing '{label}' failed: {describe_exception(exc)} (a dependency of your "
                       f"code); install it in this environment")


def _searched(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs) + " and this Python's sys.path"


def package_module(path: Path) -> tuple[Path, str] | None:
    """(root, dotted name) when ``path`` sits inside a package (``__init__.py`` in its folder), else None."""
    parts = [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file() and directory.parent != directory:
        parts.insert(0, directory.name)
        directory = directory.parent
    if len(parts) == 1 or not all(p.isidentifier() for p in parts):
        return None
    if parts[-1] == "__init__":
        parts.pop()
    return directory, ".".join(parts)


def _import_package_file(path: Path, root: Path, name: str, path_text: str, option: str) -> ModuleType:
    """Import a file inside a package as ``package.module`` so its relative imports work."""
    try:
        with _on_sys_path([*_EXTRA_DIRS.get(), root, path.parent]):  # script-style sibling imports work too
            module = _run_user_import(lambda: importlib.import_module(name), path_text, option)
    except ModuleNotFoundError as exc:
        raise _missing_dependency(exc, path_text, option) from exc
    found = getattr(module, "__file__", None)
    if found is None or Path(found).resolve() != path:
        top = name.split(".")[0]
        where = getattr(sys.modules.get(top), "__file__", None) or "elsewhere"
        raise TargetError(
            f"{option}: '{path_text}' is module '{name}' of a package, but '{top}' is imported from {where} "
            f"(another copy, e.g. an installed one); name the module instead ('{name}:...') or install the "
            f"project in editable mode (pip install -e .)"
        )
    return module


def _import_file(path_text: str, option: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise TargetError(f"{option}: file '{path_text}' not found (looked in {Path.cwd()}); check the path")
    if path.is_dir():
        raise TargetError(f"{option}: '{path_text}' is a directory; name a .py file, "
                          f"e.g. '{path_text.rstrip('/')}/model.py:Net'")
    path = path.resolve()
    inside = package_module(path) if path.suffix == ".py" else None
    if inside is not None:
        return _import_package_file(path, inside[0], inside[1], path_text, option)
    name = f"_gradprobe_user_{path.stem}_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"{option}: '{path_text}' cannot be imported as Python; name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path([*_EXTRA_DIRS.get(), path.parent]):
            _run_user_import(lambda: spec.loader.exec_module(module), path_text, option)  # type: ignore[union-attr]
    except ModuleNotFoundError as exc:  # the file imports a package this environment lacks
        sys.modules.pop(name, None)
        raise _missing_dependency(exc, path_text, option) from exc
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(module_name: str, option: str) -> ModuleType:
    dirs = search_dirs()
    with _on_sys_path(dirs):
        try:
            return _run_user_import(lambda: importlib.import_module(module_name), module_name, option)  # type: ignore[no-any-return]
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                raise TargetError(
                    f"{option}: module '{module_name}' not found; searched {_searched(dirs)}; check the spelling, "
                    f"{PATH_HINT}, or name a file: 'path/to/file.py:Name'"
                ) from exc
            raise _missing_dependency(exc, module_name, option) from exc


def import_part(module_part: str, option: str = "TARGET") -> ModuleType:
    """Import the module part of a spec: a file path or a dotted module name."""
    return _import_file(module_part, option) if is_file_spec(module_part) else _import_module(module_part, option)


def load_object(spec: str, option: str = "TARGET") -> Any:
    """Import the module part of ``spec`` and return the (dotted) attribute it names."""
    module_part, attr = split_spec(spec, option)
    module = import_part(module_part, option)
    obj: Any = module
    walked: list[str] = []
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = ".".join([module_part.rsplit("/", 1)[-1], *walked]) if walked else module_part
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
                f"it has: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}" if names else "it is empty"
            )
            raise TargetError(f"{option}: '{owner}' has no attribute '{part}'; {hint}")
        obj = getattr(obj, part)
        walked.append(part)
    return obj
