"""Raises while being imported."""

CONFIG = {}
HIDDEN = CONFIG["hidden"]
