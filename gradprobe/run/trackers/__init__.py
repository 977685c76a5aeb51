"""Trackers: the torch-side observers that turn one probe run into facts."""
