"""Command-line interface (typer). `app.py` holds the typer app; commands live one per module."""
