"""Broken models and broken input factories for the hostile-input tests (not tests themselves)."""
