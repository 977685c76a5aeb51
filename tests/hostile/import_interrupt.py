"""Ctrl-C while importing."""

raise KeyboardInterrupt
