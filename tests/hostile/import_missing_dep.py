"""Imports a package that is not installed."""

import gradprobe_no_such_dependency  # noqa: F401
