"""Views of ``inspect --world-size``: rich tables, JSON (``memory.per_rank``) and Markdown."""
