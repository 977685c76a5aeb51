"""compare-modes on TorchScript modules, nested and sparse outputs, and a failing timed backward.

Expected values come from plain PyTorch, never from gradprobe's own output.
"""

from __future__ import annotations

import torch
from torch import nn

from gradprobe.api import compare_modes


class _BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


def test_compare_modes_on_a_torchscript_module_restores_buffers() -> None:
    """TorchScript's parameter/buffer tables have no ``.get``: compare-modes crashed with AttributeError."""
    torch.manual_seed(0)
    scripted = torch.jit.script(_BnNet())
    x = torch.randn(4, 3)
    mean_before = scripted.bn.running_mean.clone()
    report = compare_modes(scripted, x, modes="train:grad,eval:no_grad", repeat=2)
    rows = {(r.mode, r.grad_mode): r for r in report.comparison.rows}
    assert all(r.ok for r in rows.values()), [r.error for r in rows.values()]
    assert torch.equal(scripted.bn.running_mean, mean_before)
    # train (batch statistics) and eval (running statistics) really differ on these inputs
    with torch.no_grad():  # eval first: a train forward would update the running statistics eval reads
        scripted.eval()
        eval_out = scripted(x)
        scripted.train()
        train_out = scripted(x)
    assert rows[("train", "grad")].max_abs_diff is not None
    assert abs(rows[("train", "grad")].max_abs_diff - float((train_out - eval_out).abs().max())) < 1e-5


class _NestedOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return torch.nested.as_nested_tensor([y[:1], y[1:]])


class _SparseOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).to_sparse()


def test_compare_modes_handles_nested_and_sparse_outputs() -> None:
    """Nested outputs crashed (no ``.shape``), sparse ones too (no ``&``), and --backward on nested failed."""
    x = torch.randn(4, 3)
    for cls in (_NestedOut, _SparseOut):
        model = cls()
        report = compare_modes(model, x, modes="train:grad,eval:no_grad", repeat=2, backward=True)
        for row in report.comparison.rows:
            assert row.ok, (cls.__name__, row.error)
            assert row.max_abs_diff == 0.0  # no training-dependent module: identical outputs
        train = next(r for r in report.comparison.rows if r.mode == "train")
        assert train.backward_time_s is not None and train.backward_error is None
        assert all(p.grad is None for p in model.parameters())


def test_compare_modes_failed_timed_backward_names_the_right_run() -> None:
    """The error named run 2 when run 1's backward raised (its forward had already been timed)."""

    class _BadBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:
            return t.clone()

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            if len(calls) > 1:  # the tracked run's backward passes; the first timed one raises
                raise ValueError("boom")
            return grad

    calls: list[int] = []

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _BadBackward.apply(self.lin(x))

    report = compare_modes(Net(), torch.randn(4, 3), modes="train:grad", repeat=3, backward=True)
    [row] = report.comparison.rows
    assert not row.ok
    assert row.error is not None and row.error.startswith("timed run 1 raised"), row.error


class _EmaAndBn(nn.Module):
    """A custom module whose forward updates its own buffers in train mode, beside a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("ema", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.lin(x))
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(0.1 * y.mean(0))
        return y - self.ema


def test_compare_modes_names_the_owners_of_changed_buffers() -> None:
    """The verdict called every buffer a train no_grad forward changes 'BatchNorm running statistics', an EMA
    buffer of the user's own module too. The owners now come from the model; checked against plain PyTorch."""
    torch.manual_seed(0)
    model, x = _EmaAndBn(), torch.randn(8, 4)
    before = {n: b.clone() for n, b in model.named_buffers()}
    probe = _EmaAndBn()
    probe.load_state_dict(model.state_dict())
    with torch.no_grad():
        probe.train()(x)
    changed = [n for n, b in probe.named_buffers() if not torch.equal(b, before[n])]
    owners = {type(probe.get_submodule(n.rpartition(".")[0])).__name__ for n in changed}
    assert owners == {"BatchNorm1d", "_EmaAndBn"}  # what plain PyTorch says changed, and who owns it
    report = compare_modes(model, x, modes="train:no_grad,eval:no_grad", repeat=1)
    [line] = [v for v in report.verdict if "corrupts these" in v]
    assert line.endswith("corrupts these (BatchNorm running statistics; buffers of _EmaAndBn).")
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
