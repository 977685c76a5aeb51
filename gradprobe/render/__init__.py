"""Renderers: facts and reports → rich tables, JSON, Markdown, JUnit.  No torch here."""
