"""The torch side of the distributed run, piece by piece, in one process (world size 1 where a group is needed)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gradprobe.errors import UsageError
from gradprobe.run.distributed.ddp import quote
from gradprobe.run.distributed.env import launch_env
from gradprobe.run.distributed.launch import exit_code, strip_nproc
from gradprobe.run.distributed.rank_error import RankError, clean_collective_error, error_line
from gradprobe.run.distributed.wrap import mixed_units, segment_match, shard_modules


def test_error_line_merges_ranks_and_prefers_real_errors_over_timeouts():
    a = RankError(1, "load error", "importing 'm' raised ImportError: x", "load")
    b = RankError(0, "timeout", "rank(s) 1 did not reach 'loaded'", "load")
    assert error_line([a, b], 2) == ("load error", "rank 1: importing 'm' raised ImportError: x")
    c = RankError(0, "load error", "importing 'm' raised ImportError: x", "load")
    assert error_line([a, c], 2) == ("load error", "every rank: importing 'm' raised ImportError: x")
    d = RankError(2, "run error", "forward raised", "run", hint="cause: y")
    kind, message = error_line([a, d], 4)
    assert kind == "error"
    assert message == "rank 1: importing 'm' raised ImportError: x; rank 2: forward raised; cause: y"
    assert error_line([b], 2) == ("timeout", "rank 0: rank(s) 1 did not reach 'loaded'")


def test_gloo_timeouts_read_as_sentences():
    raw = ("RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
           "waiting 5000ms for recv operation to complete")
    assert clean_collective_error(raw) == ("RuntimeError: a collective timed out after 5 s waiting for the other "
                                           "ranks (they never joined it)")


def test_ddp_error_quote_keeps_the_first_sentence_and_the_indices():
    text = ("Expected to have finished reduction in the prior iteration before starting a new one. This error "
            "indicates that your module has parameters that were not used in producing loss. You can enable "
            "unused parameter detection by passing the keyword argument `find_unused_parameters=True`. "
            "Parameter indices which did not receive grad for rank 0: 6 7 In addition, you can set the environment")
    assert quote(RuntimeError(text)) == ("Expected to have finished reduction in the prior iteration before starting "
                                         "a new one. Parameter indices which did not receive grad for rank 0: 6 7.")


@pytest.mark.parametrize(("name", "glob", "hit"), [
    ("layers.0", "layers.*", True), ("layers.0.attn", "layers.*", False), ("layers.0.attn", "layers.**", True),
    ("blocks.1.adapter", "blocks.*.adapter", True), ("encoder", "enc*", True), ("encoder.x", "enc*", False),
    ("layers.10", "layers.[0-9]", False), ("layers.3", "layers.[0-9]", True),
])
def test_shard_globs_stay_inside_a_name_segment(name, glob, hit):
    assert segment_match(name, glob) is hit


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)) for _ in range(2))
        self.out = nn.Linear(4, 2)
        self.blocks[0][0].requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.out(x)


def test_units_and_mixed_units():
    model = Tower()
    units = shard_modules(model, ["blocks.*"])
    assert units == ["blocks.0", "blocks.1"]
    assert mixed_units(model, units) == [("blocks.0", ["blocks.0.0.weight", "blocks.0.0.bias"],
                                          ["blocks.0.1.weight", "blocks.0.1.bias"])]
    with pytest.raises(UsageError, match="--shard 'nope' matches no module"):
        shard_modules(model, ["nope"])


def test_launch_helpers():
    assert strip_nproc(["inspect", "m:x", "--nproc", "2", "-f", "json"]) == ["inspect", "m:x", "-f", "json"]
    assert strip_nproc(["inspect", "--nproc=4", "m:x"]) == ["inspect", "m:x"]
    assert exit_code({0: 1, 1: -15}) == 1
    assert exit_code({0: -15, 1: 2}) == 2
    assert exit_code({0: -9}) == 2


def test_launch_env():
    assert launch_env({}) is None
    env = launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500",
                      "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": "abc"})
    assert env is not None and (env.rank, env.world_size, env.agent_store, env.run_id) == (1, 2, True, "abc.0")
    with pytest.raises(UsageError, match="MASTER_ADDR, MASTER_PORT are not"):
        launch_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="does not fit"):
        launch_env({"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})


@pytest.fixture
def world_of_one():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_describe_fsdp2_and_collect_in_one_process(world_of_one):
    from torch.distributed.fsdp import fully_shard

    from gradprobe.api import probe
    from gradprobe.load.target import LoadedModel
    from gradprobe.run.distributed.collect import RankCollector
    from gradprobe.run.distributed.wrappers import describe

    torch.manual_seed(0)
    model = Tower()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    w = describe(model)
    assert w.kind == "fsdp" and [u.name for u in w.units] == ["", "blocks.0", "blocks.1"]
    assert w.names.types["blocks.0"] == "Sequential"  # FSDPSequential → the user's class
    x = torch.randn(3, 4)
    with RankCollector(w, 0, "h", compare_values=False) as collector:
        report = probe(model, (x,), loaded=LoadedModel(model))
    mine = collector.facts(report.facts)
    grads = {p.name: p for p in mine.params}
    # against plain PyTorch: the same model unsharded
    torch.manual_seed(0)
    plain = Tower()
    plain(x).sum().backward()
    for name, p in plain.named_parameters():
        if p.grad is None:
            assert grads[name].grad == "none"
        else:
            assert grads[name].grad_norm == pytest.approx(float(p.grad.norm()), rel=1e-5)
            assert grads[name].local_grad is True
    assert mine.units[1].mixed and mine.units[1].frozen == ("blocks.0.0.weight", "blocks.0.0.bias")
    assert [p.grad for p in model.parameters()] == [None] * 10  # the model is left as found


class _FunctionCalls(torch.overrides.TorchFunctionMode):
    """Every torch function call it sees, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        op = isinstance(func, torch._ops.OpOverload)  # an aten op called from inside a dispatch mode
        self.seen.append(f"op:{func}" if op else getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_ddp_pre_forward_runs_outside_the_function_modes_and_is_put_back(world_of_one):
    import contextlib

    from gradprobe.run.distributed.collect import RankCollector
    from gradprobe.run.distributed.wrappers import describe
    from gradprobe.run.trackers.base import OpStream

    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    x = torch.randn(3, 4)
    calls = {}
    for label in ("plain", "collected"):
        collector = RankCollector(describe(ddp), 0, "h", compare_values=False) if label == "collected" else None
        with collector or contextlib.nullcontext(), _FunctionCalls() as mode, OpStream([]).install("forward"):
            ddp(x)
        calls[label] = mode.seen
    # DDP's buffer broadcast runs ops from C++: through a dispatch mode they reach the function mode as aten ops
    assert {"op:aten.cat.default", "op:c10d.broadcast_.default"} <= set(calls["plain"])
    assert not [n for n in calls["collected"] if n.startswith(("op:aten.", "op:c10d."))]
    # the model's own calls are still seen, all of them
    assert [n for n in calls["collected"] if n in ("linear", "batch_norm")] == ["linear", "batch_norm"]
    assert "_pre_forward" not in ddp.__dict__  # the collector's wrapper is gone again


def test_fsdp2_markers_are_free_only_while_gradprobe_alone_would_see_them():
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group
    from torch.profiler import record_function
    from torch.utils._python_dispatch import TorchDispatchMode

    from gradprobe.run.distributed.collect import _NO_MARKER, _markers_off
    from gradprobe.run.trackers.base import OpStream

    class Other(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    undo = _markers_off()
    try:
        assert group.record_function("FSDP::x") is _NO_MARKER
        with OpStream([]).install("forward"):
            assert group.record_function("FSDP::x") is _NO_MARKER
        with Other():
            assert isinstance(group.record_function("FSDP::x"), record_function)
        with torch.profiler.profile():
            assert isinstance(group.record_function("FSDP::x"), record_function)
    finally:
        undo()
    assert group.record_function is record_function


def test_fsdp2_markers_stay_as_they_are_where_the_private_module_is_missing(monkeypatch):
    import sys

    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group
    from torch.profiler import record_function

    from gradprobe.run.distributed.collect import _markers_off

    monkeypatch.setitem(sys.modules, group.__name__, None)  # importing it now raises ModuleNotFoundError
    undo = _markers_off()
    try:
        assert group.__dict__["record_function"] is record_function  # not patched
    finally:
        undo()
    assert group.__dict__["record_function"] is record_function


@pytest.mark.parametrize("what", ["missing", "not torch's"])
def test_fsdp2_markers_stay_as_they_are_where_record_function_is_not_torchs(monkeypatch, what):
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group

    from gradprobe.run.distributed.collect import _markers_off

    def someone_elses(name, args=None):
        return None

    if what == "missing":
        monkeypatch.delattr(group, "record_function")
    else:
        monkeypatch.setattr(group, "record_function", someone_elses)
    before = dict(group.__dict__)
    undo = _markers_off()
    try:
        assert group.__dict__ == before  # nothing patched, nothing added
    finally:
        undo()
    assert group.__dict__ == before


def test_fsdp2_markers_are_put_back_when_the_collected_run_raises(world_of_one):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group
    from torch.profiler import record_function

    from gradprobe.run.distributed.collect import RankCollector
    from gradprobe.run.distributed.wrappers import describe

    model = Tower()
    fully_shard(model)
    with pytest.raises(ZeroDivisionError):
        with RankCollector(describe(model), 0, "h", compare_values=False):
            assert group.record_function is not record_function  # patched inside the block
            raise ZeroDivisionError
    assert group.record_function is record_function
