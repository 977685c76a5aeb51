"""Distributed options every command shares, and the route a command takes under torchrun or ``--nproc``.

Each command adds the options below and starts its body with ``route = dist_route(...)``; ``None`` means an
ordinary single-process run.  Nothing here imports torch until a distributed run actually starts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gradprobe.cli.options import option
from gradprobe.errors import UsageError


class WrapKind(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"
    fsdp1 = "fsdp1"


DIST_PANEL = "Distributed (torchrun)"
DEFAULT_DIST_TIMEOUT = 30.0

NprocOpt = Annotated[int | None, typer.Option(
    "--nproc", metavar="N", rich_help_panel=DIST_PANEL,
    help="Run on N processes of this machine through torch's own launcher (torch.distributed.run, as torchrun "
         "does); rank 0 prints one merged report. Under torchrun, leave it out.")]
DistTimeoutOpt = Annotated[float, typer.Option(
    "--dist-timeout", metavar="SECONDS", rich_help_panel=DIST_PANEL,
    help="How long a rank waits for the others at any point, and the timeout of a process group gradprobe "
         "creates: a rank that fails or hangs stops every rank within it.")]
WrapOpt = Annotated[WrapKind | None, typer.Option(
    "--wrap", rich_help_panel=DIST_PANEL, case_sensitive=False,
    help="Wrap a plain model target: ddp (DistributedDataParallel), fsdp (FSDP2 fully_shard) or fsdp1 "
         "(FullyShardedDataParallel). Without torchrun/--nproc it runs as a world of one process.")]
ShardOpt = Annotated[list[str] | None, typer.Option(
    "--shard", metavar="GLOB", rich_help_panel=DIST_PANEL,
    help="Modules that become FSDP units with --wrap fsdp/fsdp1 ('layers.*': every layers.N; '*' stays in one "
         "name segment, '**' spans several). Repeatable; the root is always a unit.")]
UseOrigParamsOpt = Annotated[bool, typer.Option(
    "--use-orig-params", rich_help_panel=DIST_PANEL, help="FSDP1 use_orig_params=True (with --wrap fsdp1).",
    metavar="", show_default=False)]

ReshardOpt = Annotated[bool | None, typer.Option(
    "--reshard-after-forward/--no-reshard-after-forward", rich_help_panel=DIST_PANEL, show_default=False, metavar="",
    help="FSDP2 reshard_after_forward (with --wrap fsdp, or --world-size on a target that applies fully_shard): "
         "on, FSDP2's default, every unit but the root frees its all-gathered parameters after its forward and "
         "all-gathers them again in backward; off, they stay from forward to backward.")]
MixedPrecisionOpt = Annotated[str | None, typer.Option(
    "--mixed-precision", metavar="PARAM[,REDUCE]", rich_help_panel=DIST_PANEL,
    help="FSDP2 MixedPrecisionPolicy with --wrap fsdp: param_dtype[,reduce_dtype], each bf16, fp16 or fp32 "
         "(bf16,fp32: parameters all-gathered and computed in bf16, gradients reduce-scattered in fp32, the "
         "sharded parameters and the optimizer stay fp32).")]


@dataclass(frozen=True)
class DistArgs:
    """The distributed option values of one command line."""

    nproc: int | None = None
    timeout_s: float = DEFAULT_DIST_TIMEOUT
    wrap: WrapKind | None = None
    shard: tuple[str, ...] = ()
    use_orig_params: bool = False
    reshard_after_forward: bool | None = None
    mixed_precision: str | None = None  # as typed: parsed inside the command body (bad input: one line, exit 2)

    @classmethod
    def of(cls, shared: dict[str, Any]) -> DistArgs:
        """From the values of ``DIST_OPTIONS`` a command received."""
        return cls(shared["nproc"], shared["dist_timeout"], shared["wrap"], tuple(shared["shard"] or ()),
                   shared["use_orig_params"], shared["reshard_after_forward"], shared["mixed_precision"])


# the last options of every command, in this order
DIST_OPTIONS = (
    option("nproc", NprocOpt, None), option("dist_timeout", DistTimeoutOpt, DEFAULT_DIST_TIMEOUT),
    option("wrap", WrapOpt, None), option("shard", ShardOpt, None), option("use_orig_params", UseOrigParamsOpt, False),
    option("reshard_after_forward", ReshardOpt, None), option("mixed_precision", MixedPrecisionOpt, None),
)


def dist_launch(args: DistArgs, debug: bool) -> int | None:
    """``--nproc N``: start torch.distributed.run on this command and return the ranks' exit code; None otherwise.

    Called first in a command body, before settings are read, so the launcher itself says nothing."""
    if args.timeout_s <= 0:
        raise UsageError(f"--dist-timeout {args.timeout_s:g}: use a positive number of seconds")
    if args.nproc is None:
        return None
    from gradprobe.run.distributed.env import launch_env

    if launch_env() is not None:
        raise UsageError("--nproc starts the processes itself: under torchrun (RANK/WORLD_SIZE set) leave it out")
    if "--nproc" not in " ".join(sys.argv[1:]):
        raise UsageError("--nproc works from the command line (it relaunches the same command on every rank)")
    from gradprobe.run.distributed.launch import launch, strip_nproc

    return launch(args.nproc, strip_nproc(sys.argv[1:]), debug=debug)


@contextlib.contextmanager
def rank0_speaks() -> Iterator[None]:
    """Under torchrun, what a block writes to stderr is kept from every rank but rank 0 (one report, one voice)."""
    import io
    import os

    if os.environ.get("RANK", "0") == "0" or "WORLD_SIZE" not in os.environ:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def dist_run(args: DistArgs, debug: bool, run: Callable[[Any, Any], int]) -> int | None:
    """Under a launcher (or with ``--wrap``): run ``run(env, options)`` as this rank and return its exit code;
    None for an ordinary single-process run."""
    from gradprobe.run.distributed.env import launch_env

    env = launch_env()
    if env is None and args.wrap is None:
        if args.shard or args.use_orig_params:
            raise UsageError("--shard and --use-orig-params apply to --wrap fsdp/fsdp1")
        if args.reshard_after_forward is not None or args.mixed_precision is not None:
            raise UsageError("--reshard-after-forward and --mixed-precision set FSDP2's fully_shard: use them with "
                             "--wrap fsdp (or --world-size)")
        return None
    from gradprobe.api_distributed.rank import DistOptions
    from gradprobe.run.fit.spec import parse_mixed_precision

    options = DistOptions(timeout_s=args.timeout_s, wrap=args.wrap.value if args.wrap else None, shard=args.shard,
                          use_orig_params=args.use_orig_params, debug=debug,
                          reshard_after_forward=args.reshard_after_forward,
                          mixed_precision=parse_mixed_precision(args.mixed_precision))
    if env is not None:
        return run(env, options)
    with _single_process_env() as single:  # --wrap in one process: a world of one
        return run(single, options)


@contextlib.contextmanager
def _single_process_env() -> Iterator[Any]:
    """RANK=0, WORLD_SIZE=1 and a free local port, for the duration of the run (the environment is put back)."""
    import os
    import socket

    from gradprobe.run.distributed.env import launch_env

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    values = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield launch_env()
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_rank(env: Any, options: Any, body: Callable[[Any], int | None]) -> int:
    """Run ``body(session)`` as this rank: returns the exit code every rank agrees on (rank 0 has printed)."""
    from gradprobe.api_distributed.rank import session
    from gradprobe.errors import GradprobeError
    from gradprobe.run.distributed.rank_error import DistAbort

    try:
        with session(env, options) as s:
            try:
                code = body(s)
            except DistAbort:
                raise
            except (GradprobeError, KeyboardInterrupt, Exception) as exc:  # outside a phase: still one line
                s.fail(exc)
                raise  # pragma: no cover - fail() raises DistAbort
            return s.finish(code if code is not None else 0)
    except DistAbort as abort:
        return abort.code
    except GradprobeError as exc:  # the session could not start (no store)
        from gradprobe.cli.command import print_error

        print_error(str(exc), exc.kind)
        return 2


def load_spec(s: Any) -> Any:
    """The loading settings of a command (``gradprobe.cli.command.settings``) as a ``LoadSpec``."""
    from gradprobe.api_distributed.rank import LoadSpec

    return LoadSpec(target=s["target"], init=s["init"], weights=s["weights"], device=s["device"], inputs=s["inputs"],
                    shapes=s["shape"], dtype=s["dtype"], high=s["high"], seed=s["seed"], path=list(s["path"] or ()))


# --------------------------------------------------------------------------- the three commands


def inspect_distributed(env: Any, options: Any, *, s: Any, probe: dict[str, Any], format_: Any,
                        output: Path | None, top: int, filter_: str | None, strict: bool,
                        graph: tuple[str, str] | None = None) -> int:
    """``graph``: (path, kind) of the --graph export, written by rank 0 from its own run's grad_fn graph."""
    from gradprobe.api import resolve_loss, user_output_to_stderr
    from gradprobe.api_distributed.inspect import inspect_rank

    def body(session: Any) -> int:
        from gradprobe.cli.output import write_report
        from gradprobe.run.distributed.session import phase

        with user_output_to_stderr():
            if isinstance(probe.get("loss"), str):
                with phase(session, "load"):
                    probe["loss"] = resolve_loss(probe["loss"])
            report = inspect_rank(session, load_spec(s), options, **probe)
        if report is None:
            return 0
        if graph is not None:
            from gradprobe.cli.output import write_text
            from gradprobe.render.graph.export import export_graph

            write_text(export_graph(report.report.facts, graph[1], probe.get("depth")), Path(graph[0]))
        from gradprobe.render.html.distributed import dist_inspect_html
        from gradprobe.render.inspect.distributed import dist_inspect_json, dist_inspect_markdown, render_dist_inspect

        write_report(format_, output, html=lambda: dist_inspect_html(report, probe.get("depth")),
                     json=lambda: dist_inspect_json(report),
                     markdown=lambda: dist_inspect_markdown(report, top or None),
                     table=lambda console: render_dist_inspect(report, console, top=top or None, pattern=filter_))
        return 1 if strict and report.has_errors else 0

    return run_rank(env, options, body)


def compare_distributed(env: Any, options: Any, *, s: Any, modes: Any, repeat: int, backward: bool, format_: Any,
                        output: Path | None, strict: bool) -> int:
    from gradprobe.api import user_output_to_stderr
    from gradprobe.api_distributed.compare import compare_rank

    def body(session: Any) -> int:
        from gradprobe.cli.output import write_report

        with user_output_to_stderr():
            report = compare_rank(session, load_spec(s), options, modes=modes, repeat=repeat, backward=backward,
                                  memory_detail=getattr(format_, "value", format_) == "html")
        if report is None:
            return 0
        from gradprobe.render.compare.json_out import compare_json
        from gradprobe.render.compare.markdown import compare_markdown
        from gradprobe.render.compare.table import render_compare
        from gradprobe.render.html.compare import compare_html

        def doc() -> dict[str, Any]:
            return {**compare_json(report), "world_size": session.world_size}

        write_report(format_, output, html=lambda: compare_html(report), json=doc,
                     markdown=lambda: compare_markdown(report),
                     table=lambda console: render_compare(report, console))
        return 1 if strict and report.has_errors else 0

    return run_rank(env, options, body)


def freeze_distributed(env: Any, options: Any, *, s: Any, write_baseline: Path | None, format_: Any,
                       output: Path | None, junit: Path | None, strict: bool = False) -> int:
    """freeze-check on every rank; exit 1 when any rank violates the freeze (violations name the ranks)."""
    from gradprobe.api import user_output_to_stderr
    from gradprobe.api_distributed.freeze import freeze_rank

    def body(session: Any) -> int:

        with user_output_to_stderr():
            report = freeze_rank(session, load_spec(s), options, frozen=s["frozen"] or [],
                                 trainable=s["trainable"] or [], optimizer=s["optimizer"], unlisted=s["unlisted"],
                                 allow_buffer_updates=s["allow_buffer_updates"], baseline=s["baseline"],
                                 write_baseline=write_baseline, loss=s["loss"] or "sum", config=s.config,
                                 memory_detail=getattr(format_, "value", format_) == "html")
        if report is None:
            return 0
        from gradprobe.cli.freeze import publish

        return publish(report, format_, output, junit, strict, write_baseline, world_size=session.world_size)

    return run_rank(env, options, body)
