"""Never hang: a rank that fails stops every rank within --dist-timeout, with one line from rank 0 naming it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dist_helpers import HERE, dist_env

pytestmark = pytest.mark.slow

TIMEOUT = 6  # --dist-timeout for these runs
STARTUP = 90  # three interpreters importing torch on a busy 2-core machine


def run_group(*args: str, interrupt_when: Path | None = None,
              timeout: float = TIMEOUT) -> tuple[int, str, float, bool]:
    """``gradprobe ... --nproc 2`` in a session of its own: (exit code, stderr, seconds, processes left over).

    ``interrupt_when``: a folder where both ranks leave a mark once inside the forward; then Ctrl-C.
    """
    cmd = [str(Path(sys.executable).with_name("gradprobe")), *args, "--nproc", "2", "--dist-timeout", str(timeout)]
    marker = uuid.uuid4().hex  # in every process of this run's environment: torchrun gives each rank its own session
    env = dist_env({"GRADPROBE_TEST_RUN": marker, **({"GRADPROBE_TEST_MARKS": str(interrupt_when)}
                                                      if interrupt_when else {})})
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    start = time.monotonic()
    if interrupt_when is not None:
        while len(list(interrupt_when.iterdir())) < 2 and time.monotonic() - start < STARTUP:
            time.sleep(0.2)
        time.sleep(1.0)
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    try:
        _, err = proc.communicate(timeout=STARTUP + 4 * min(timeout, 60))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    seconds = time.monotonic() - start
    time.sleep(0.5)
    left = leftover(marker)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return proc.returncode, err, seconds, bool(left)


def leftover(marker: str) -> list[int]:
    """Processes still alive whose environment carries ``marker`` (the launcher and every rank had it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"GRADPROBE_TEST_RUN={marker}".encode() in environ:
            pids.append(int(entry.name))
    return pids


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_import_error_on_one_rank():
    code, err, _, left = run_group("inspect", "broken_on_rank1:Net")
    assert code == 2 and not left
    line = one_line(err)
    assert line.startswith("gradprobe: load error: rank 1: ")
    assert "No module named 'gradprobe_missing_dependency'" in line


def test_bad_input_on_one_rank():
    code, err, _, left = run_group("inspect", "dist_models:net", "--inputs", "dist_models:bad_inputs_on_rank1")
    assert code == 2 and not left
    line = one_line(err)
    assert line.startswith("gradprobe: input error: rank 1: ") and "no data shard for rank 1" in line


def test_forward_raising_on_one_rank():
    code, err, _, left = run_group("freeze-check", "dist_models:ForwardRaises", "--trainable", "*")
    assert code == 2 and not left
    line = one_line(err)
    assert line.startswith("gradprobe: run error: rank 1: ") and "rank 1 cannot run this forward" in line


@pytest.mark.parametrize(("target", "wrap", "where"), [
    ("InnerRaises", "ddp", "module 'head.1' (Boom)"),  # was 'module.head.1'
    ("InnerRaises", "fsdp1", "module 'head.1' (Boom)"),  # was '_fsdp_wrapped_module.head.1'
    ("ForwardRaises", "fsdp", "the model itself (ForwardRaises)"),  # was (FSDPForwardRaises)
])
def test_forward_raising_under_a_wrapper_names_the_users_module(target, wrap, where):
    import dist_models

    name, _, kind = where.partition("'")[2].partition("' (")
    if name:  # the module exists under that name and class in the plain model
        assert type(dict(getattr(dist_models, target)().named_modules())[name]).__name__ == kind.rstrip(")")
    code, err, _, left = run_group("inspect", f"dist_models:{target}", "--wrap", wrap)
    assert code == 2 and not left
    line = one_line(err)
    assert line.startswith("gradprobe: run error: rank 1: forward raised in " + where + ": RuntimeError"), line


def test_collective_timeout_stops_every_rank_within_the_timeout():
    code, err, _, left = run_group("inspect", "dist_models:ExtraCollective")
    assert code == 2 and not left
    line = one_line(err)
    assert line.startswith("gradprobe: run error: rank 0: ")
    assert f"a collective timed out after {TIMEOUT} s waiting for the other ranks" in line


def test_ddp_rank_dependent_branch_hang_is_stopped_and_explained():
    code, err, _, left = run_group("inspect", "dist_models:ddp_rank_branch", "--shape", "6,8")
    assert code == 2 and not left
    line = one_line(err)
    assert "rank 0: backward raised" in line and "a collective timed out" in line
    assert "cause: aux.weight, aux.bias got a gradient on rank 0 but none on rank 1" in line


@pytest.mark.parametrize("command", [("inspect",), ("freeze-check", "--trainable", "*")])
def test_ddp_refusing_a_rank_dependent_freeze_names_the_parameters(command):
    """--wrap ddp on a model that rank 1 freezes differently: DDP's own error ("Rank 0 has 8 params, while rank 1
    has inconsistent 6 params", a different line per rank) now names the parameters, the same on every rank."""
    import os

    import dist_models

    flags = []
    for r in (0, 1):  # plain PyTorch: each rank's model and its requires_grad flags
        os.environ["RANK"] = str(r)
        try:
            flags.append({n: p.requires_grad for n, p in dist_models.rank_frozen().named_parameters()})
        finally:
            del os.environ["RANK"]
    differ = [n for n in flags[0] if flags[0][n] != flags[1][n]]
    assert differ and all(flags[0][n] and not flags[1][n] for n in differ)
    code, err, _, left = run_group(command[0], "dist_models:rank_frozen", *command[1:], "--wrap", "ddp",
                                   "--shape", "4,8")
    assert code == 2 and not left
    line = one_line(err)
    assert line.startswith("gradprobe: run error: every rank: --wrap ddp: DistributedDataParallel refused"), line
    assert f"{', '.join(differ)} require grad on rank 0 but not on rank 1: the ranks freeze differently" in line


def test_native_crash_of_a_rank_is_reported_by_the_launcher():
    """An all-reduce whose size differs by rank: gloo aborts one rank in C++ (SIGABRT: no Python of it runs, and
    the launcher stops the other at once). gradprobe --nproc used to exit 2 with gloo's text only; the launcher
    now adds the one line naming the rank and the signal."""
    code, err, _, left = run_group("inspect", "dist_models:MismatchedCollective", timeout=10)
    assert code == 2 and not left
    ours = [line for line in err.splitlines() if line.startswith("gradprobe: ")]
    assert len(ours) == 1, err
    assert ours[0].startswith("gradprobe: run error: rank ") and "was ended by SIGABRT (exit code -6)" in ours[0]
    assert "before any rank could report" in ours[0] and "SIGTERM" not in ours[0]


def test_fsdp2_gradient_on_some_ranks_only_is_stopped_before_the_reduce_scatter():
    """FSDP2 reduce-scatters only the gradients a rank holds: with the aux branch run on rank 1's data only, the
    ranks' reduce-scatters differ in size and gloo aborted a rank in C++ (no report). The ranks now compare which
    parameters got a gradient before each unit's reduce-scatter and stop with them named."""
    import dist_models

    used = {}
    for r in (0, 1):  # plain PyTorch, no wrapper: which rank's data reaches aux
        os.environ["RANK"] = str(r)
        try:
            model = dist_models.DataBranch()
            model(model.example_input_array).sum().backward()
            used[r] = model.aux.weight.grad is not None and model.aux.bias.grad is not None
        finally:
            del os.environ["RANK"]
    assert used == {0: False, 1: True}
    code, err, _, left = run_group("inspect", "dist_models:DataBranch", "--wrap", "fsdp", timeout=10)
    assert code == 2 and not left
    line = one_line(err)  # gradprobe's line only: nothing aborted
    assert line.startswith("gradprobe: run error: every rank: backward raised")
    assert "aux.weight, aux.bias got a gradient on rank 1 but none on rank 0" in line
    assert "reduce-scatters of unit '(root)' would differ" in line and line.count("got a gradient") == 1


def test_crash_line_only_for_ranks_no_one_reported():
    from gradprobe.run.distributed.launch import crash_line

    assert crash_line({0: 2, 1: -15}) is None  # rank 0 reported (gradprobe's exit code)
    assert crash_line({0: -6, 1: -15}).startswith("rank 0 was ended by SIGABRT (exit code -6) before")
    assert crash_line({1: -15}).startswith("rank 1 was ended by SIGTERM (exit code -15) before")


def test_ctrl_c_tears_every_rank_down(tmp_path):
    # rank 1 sleeps a minute in its forward while rank 0 waits inside an all-reduce (C++, deaf to Python signals)
    code, err, seconds, left = run_group("inspect", "dist_models:StuckInCollective", interrupt_when=tmp_path,
                                         timeout=300)
    assert code == 2 and not left
    assert seconds < 15
    assert "interrupted (Ctrl-C); every rank stopped" in err and "Traceback" not in err
