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
