"""Shell completion of ``module:Name`` / ``file.py:Name`` specs in the current folder, cheaply.

Files are read with ``ast``, never imported: completing must not run the user's code (or import torch).
"""

from __future__ import annotations

from pathlib import Path

from gradprobe.load.user_code import public_names

_SKIP = {"__pycache__", "node_modules", "site-packages"}


def _module_file(module: str, roots: list[Path]) -> Path | None:
    parts = module.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _roots() -> list[Path]:
    cwd = Path.cwd()
    return [d for d in (cwd, cwd / "src") if d.is_dir()]


def _names(module_part: str, prefix: str) -> list[str]:
    if module_part.endswith(".py") or "/" in module_part:
        path: Path | None = Path(module_part).expanduser()
    else:
        path = _module_file(module_part, _roots())
    if path is None or not path.is_file():
        return []
    return [f"{module_part}:{n}" for n in public_names(path) if n.startswith(prefix)]


def _paths(incomplete: str) -> list[str]:
    """``.py`` files and folders under the typed folder, and importable modules/packages of the current folder."""
    folder, _, stem = incomplete.rpartition("/")
    base = Path(folder or ".").expanduser()
    if not base.is_dir():
        return []
    out: list[str] = []
    prefix = f"{folder}/" if folder else ""
    for entry in sorted(base.iterdir()):
        name = entry.name
        if name.startswith((".", "_")) or name in _SKIP or not name.startswith(stem):
            continue
        if entry.is_dir():
            out.append(f"{prefix}{name}/")
        elif name.endswith(".py"):
            out.append(f"{prefix}{name}:")
    if not folder:  # dotted module names from the current folder and src/
        for root in _roots():
            for entry in sorted(root.iterdir()):
                module = entry.stem if entry.suffix == ".py" else entry.name
                if module.isidentifier() and module.startswith(incomplete) and (
                        entry.suffix == ".py" or (entry / "__init__.py").is_file()):
                    out.append(f"{module}:")
    return list(dict.fromkeys(out))


def complete_spec(incomplete: str) -> list[str]:
    """Candidates for a ``module:Name`` / ``file.py:Name`` option value."""
    try:
        if ":" in incomplete:
            module_part, _, prefix = incomplete.rpartition(":")
            return _names(module_part, prefix)
        return _paths(incomplete)
    except OSError:
        return []


def complete_target(incomplete: str) -> list[str]:
    """Candidates for TARGET: specs; folders are offered too (a Hugging Face model folder is a target)."""
    return complete_spec(incomplete)
