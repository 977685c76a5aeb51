"""Run one model under several train/eval x grad-mode combinations from one starting state, and compare.

- :mod:`.command` puts it together: rows, the eval reference, the cross-checks, the attribution.
- :mod:`.rows`: per combination one tracked run through :func:`gradprobe.run.probe.run_probe` (flags,
  graph, saved bytes, forward peak, buffers; it doubles as the warm-up), then ``repeat`` plain forwards
  with every tracker off for the time.
- :mod:`.session`, :mod:`.start`, :mod:`.inputs`: before every run, buffers, parameters, the RNG and the
  user's inputs go back to the starting state, so a BatchNorm update, a dropout draw or a forward that
  edits its input in one run never leaks into the next.
- :mod:`.outputs`, :mod:`.diffs`: outputs compared element by element, with a float tolerance per dtype
  and output magnitude; :mod:`.kernels` names the ATen ops behind a difference within it.
- :mod:`.fastpath`: ``nn.TransformerEncoder``'s nested-tensor fast path, which zeroes padded positions.
- :mod:`.attribution`: which modules make train and eval differ, by flipping one module's own
  ``training`` flag at a time on a copy of exactly what it received.

Produces :class:`gradprobe.facts.compare.Comparison`; judges nothing.
"""

from gradprobe.run.compare.attribution import reads_training
from gradprobe.run.compare.command import run_compare

__all__ = ["reads_training", "run_compare"]
