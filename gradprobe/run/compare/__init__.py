"""Run one model under several train/eval x grad-mode combinations from one starting state, and compare.

Per combination (:mod:`.rows`): one tracked run through :func:`gradprobe.run.probe.run_probe` (flags,
graph, saved bytes, forward peak, buffers; it doubles as the warm-up), then ``repeat`` plain forwards with
every tracker off for the time.  Between runs, buffers, parameters and the RNG go back to the starting
state (:mod:`.start`), so a BatchNorm update or a dropout draw in one run never leaks into the next.
Outputs are compared element by element (:mod:`.outputs`); which modules make train and eval differ is
found by flipping one module's own ``training`` flag at a time (:mod:`.attribution`).  :mod:`.command`
puts it together.

Produces :class:`gradprobe.facts.compare.Comparison`; judges nothing.
"""

from gradprobe.run.compare.attribution import reads_training
from gradprobe.run.compare.command import run_compare

__all__ = ["reads_training", "run_compare"]
