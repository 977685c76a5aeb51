"""``inspect --world-size N[,N...] [--budget SIZE]``: will it fit on N GPUs?  The options and the route.

The run happens in this one process (no launcher): see gradprobe.api_fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gradprobe.errors import UsageError

FIT_PANEL = "Will it fit? (one process, any world size)"

WorldSizeOpt = Annotated[str | None, typer.Option(
    "--world-size", metavar="N[,N...]", rich_help_panel=FIT_PANEL,
    help="Per-rank memory of one training step (forward, backward, optimizer) for N ranks, in this one process: "
         "rank 0 runs through torch's fake process group with only its shards allocated (--device meta: "
         "nothing allocated, an estimate). Needs --wrap fsdp|ddp or a factory that wraps itself. 8,16,64: one "
         "row per world size.")]
BudgetOpt = Annotated[str | None, typer.Option(
    "--budget", metavar="SIZE", rich_help_panel=FIT_PANEL,
    help="With --world-size: per-rank memory budget (80GiB, 40GB): exit 1 when the peak exceeds it, naming "
         "what takes the most and the cheapest lever that fits, each measured by running the step again.")]


def inspect_fit(*, s: Any, world_size: str, budget: str | None, wrap: Any, shard: list[str] | None,
                nproc: int | None, optimizer_state: str, format_: Any, output: Path | None,
                reshard_after_forward: bool | None = None,
                mixed_precision: str | None = None) -> int:
    """The body of ``inspect`` with --world-size: exit 1 when over --budget."""
    import os

    from gradprobe.api import resolve_loss, user_output_to_stderr
    from gradprobe.api_fit import fit
    from gradprobe.cli.options import OutputFormat
    from gradprobe.cli.output import render_rich, write_text
    from gradprobe.cli.progress import progress

    if nproc is not None or "WORLD_SIZE" in os.environ:
        raise UsageError("--world-size simulates every rank in one process: leave out --nproc and torchrun")
    with progress("inspect") as step, user_output_to_stderr():
        step(f"one training step of {s['target']} as rank 0 of {world_size} rank(s)")
        report = fit(s["target"], world_sizes=world_size, wrap=wrap.value if wrap is not None else None,
                     shard=shard or (), optimizer=optimizer_state, device=s["device"], budget=budget,
                     init=s["init"], inputs=s["inputs"], shapes=s["shape"], dtype=s["dtype"], high=s["high"],
                     seed=s["seed"], path=list(s["path"] or ()), reshard_after_forward=reshard_after_forward,
                     mixed_precision=mixed_precision,
                     loss=resolve_loss(s["loss"]) if s["loss"] is not None else None)
    from gradprobe.render.common import dumps
    from gradprobe.render.fit.view import fit_json, fit_markdown, render_fit

    if format_ is OutputFormat.json:
        write_text(dumps(fit_json(report)), output)
    elif format_ is OutputFormat.markdown:
        write_text(fit_markdown(report), output)
    else:
        render_rich(lambda console: render_fit(report, console), output)
    return 1 if report.verdict is not None and not report.verdict.fits else 0
