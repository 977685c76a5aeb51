"""Per-rank memory of a sharded training step for any world size, in one process (``--world-size``)."""
