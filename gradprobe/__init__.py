"""gradprobe: show what PyTorch's autograd sees in your model.

The public API is imported lazily so that ``gradprobe --help`` never imports torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "probe": "gradprobe.api",
    "load": "gradprobe.api",
    "compare_modes": "gradprobe.api",
    "freeze_check": "gradprobe.api",
    "assert_frozen": "gradprobe.api",
    "InspectReport": "gradprobe.facts.run",
    "Finding": "gradprobe.facts.run",
    "GradprobeError": "gradprobe.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradprobe' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
