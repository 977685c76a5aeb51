"""Views of the autograd graph built from :class:`gradprobe.facts.run.GraphFact` (display trees; exports)."""
