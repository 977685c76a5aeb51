"""gradprobe under torchrun: process groups, wrapping, per-rank facts, and never hanging.

``env`` and ``launch`` are torch-free until called; ``session`` owns the control channel (a TCPStore next to
the launcher's), the process group gradprobe creates when the target did not, and every timeout; ``wrappers``
reads DDP/FSDP2/FSDP1 models; ``wrap`` makes them (``--wrap``); ``collect`` turns one rank's run into
``gradprobe.facts.distributed.RankFacts``; ``ddp`` proves DDP's unused-parameter failure.
"""
