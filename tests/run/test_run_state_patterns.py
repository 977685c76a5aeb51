"""Models that change themselves while they run: gradprobe's facts against plain PyTorch, and the model
left exactly as found (parameters, registrations, buffers, .grad, requires_grad, training flags, grad mode, RNG).

Each test builds the same model twice from one seed: one copy runs in plain PyTorch (the reference, and the
control that the pattern really changes the model), the other goes through ``gradprobe.probe``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fixtures.model_state import assert_same_state, snapshot
from torch import nn

from gradprobe import probe
from gradprobe.facts.run import ParamChange


def twin(make: Callable[[], nn.Module], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = make()
    torch.manual_seed(seed)
    return a, make()


def plain_step(model: nn.Module, x: torch.Tensor, mode: str = "train") -> dict[str, torch.Tensor | None]:
    """gradprobe's default run in plain PyTorch: seed 0, forward, sum of the output, backward; .grad per name."""
    model.train(mode == "train")
    torch.manual_seed(0)
    out = model(x)
    out.sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


def plain_step_moved(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor | None], tuple[str, ...]]:
    """:func:`plain_step`'s gradients, and the names of the parameters whose values it changed."""
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = plain_step(model, x)
    return grads, tuple(n for n, p in model.named_parameters() if not torch.equal(p, values[n]))


def probe_leaving_it_as_found(model: nn.Module, x: torch.Tensor, **options: Any) -> Any:
    """gradprobe's run of ``model``, which must leave the model exactly as it found it; its report."""
    before = snapshot(model)
    report = probe(model, x, **options)
    assert_same_state(before, snapshot(model))
    return report


def grad_state(grad: torch.Tensor | None) -> str:
    if grad is None:
        return "none"
    return "nonzero" if bool((grad != 0).any()) else "zero"


def assert_grads_match(report: Any, grads: dict[str, torch.Tensor | None]) -> None:
    facts = {p.name: p for p in report.facts.parameters}
    assert facts.keys() == grads.keys()
    for name, grad in grads.items():
        assert facts[name].grad == grad_state(grad), name
        if grad is not None:
            assert facts[name].grad_norm == pytest.approx(float(grad.double().norm()), rel=1e-6), name


# --- TorchScript: training flags through the scripted module's own setter ------------------------


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc(x))))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_scripted_batchnorm_runs_in_the_mode_asked_and_keeps_its_own(mode: str) -> None:
    plain, probed = twin(lambda: torch.jit.script(ConvBN()))
    x = torch.randn(5, 4)
    probed.eval()  # the user's model as found: in eval, which compiled code reads from the C++ attribute
    stats_before = probed.bn.running_mean.clone()
    report = probe_leaving_it_as_found(probed, x, mode=mode)
    grads = plain_step(plain, x, mode)
    assert_grads_match(report, grads)
    # in train mode BatchNorm updates its statistics (plain PyTorch says so); in eval it does not
    changed = {b.name: b.changed for b in report.facts.buffers}
    assert changed["bn.running_mean"] is (not torch.equal(plain.bn.running_mean, stats_before))
    assert changed["bn.running_mean"] is (mode == "train")
    # the scripted code still runs in eval afterwards: its output equals a plain eval forward
    plain.eval()
    with torch.no_grad():
        plain.bn.running_mean.copy_(stats_before)
        plain.bn.running_var.fill_(1.0)
        plain.bn.num_batches_tracked.zero_()
        torch.testing.assert_close(probed(x), plain(x), rtol=0, atol=0)


# --- an optimizer step inside backward (PyTorch's "optimizer step in backward" recipe) -------------


class StepInBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.optimizers = {p: torch.optim.SGD([p], lr=0.1, momentum=0.9) for p in self.body.parameters()}
        for p in self.body.parameters():
            p.register_post_accumulate_grad_hook(self._step)

    def _step(self, param: torch.Tensor) -> None:
        self.optimizers[param].step()
        self.optimizers[param].zero_grad()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_optimizer_step_in_backward_is_undone_and_attributed_to_backward() -> None:
    plain, probed = twin(StepInBackward)
    x = torch.randn(3, 4)
    report = probe_leaving_it_as_found(probed, x)
    grads, moved = plain_step_moved(plain, x)
    assert moved == tuple(n for n, _ in plain.named_parameters())  # control: plain PyTorch really steps every one
    assert_grads_match(report, grads)  # .grad as the hook left it: None, as in plain PyTorch
    facts = report.facts
    assert facts.modified_in_backward == moved
    assert facts.modified_parameters == ()
    assert set(facts.param_changes) == {ParamChange(n, "backward", "written") for n in moved}
    # they trained (plain PyTorch moved every one): no grad-none error for a .grad the hook cleared
    assert [f.code for f in report.findings] == ["param-modified-in-backward"]


# --- a forward that writes into its own parameters ------------------------------------------------


class WritesItsWeights(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.out = nn.Linear(3, 1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "no_grad":
            with torch.no_grad():
                self.fc.weight.mul_(0.5)  # an in-place EMA-style update
        elif self.how == "data":
            self.fc.weight.data.add_(1.0)  # through .data: no version bump
        else:
            torch.mul(self.fc.bias.detach(), 2.0, out=self.fc.bias.data)  # out= into the parameter's storage
        return self.out(self.fc(x))


@pytest.mark.parametrize("how", ["no_grad", "data", "out"])
def test_forward_writing_its_parameters_is_undone_and_attributed_to_forward(how: str) -> None:
    plain, probed = twin(lambda: WritesItsWeights(how))
    x = torch.randn(2, 4)
    report = probe_leaving_it_as_found(probed, x)
    grads, moved = plain_step_moved(plain, x)
    assert moved == (("fc.bias",) if how == "out" else ("fc.weight",))  # control: the forward really writes
    assert_grads_match(report, grads)  # computed with the written values, as plain PyTorch does
    assert report.facts.modified_parameters == moved and report.facts.modified_in_backward == ()
    assert report.facts.param_changes == tuple(ParamChange(n, "forward", "written") for n in moved)


def test_a_model_that_writes_nothing_reports_no_write() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    report = probe(model, torch.randn(2, 4))
    assert report.facts.param_changes == () and report.facts.modified_parameters == ()


# --- a forward that registers or replaces parameters ------------------------------------------------


class ReplacesParameters(nn.Module):
    """The lazy-module workaround: forward swaps in a new Parameter, and registers one it did not have."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc.weight = nn.Parameter(torch.ones(3, 4))
        self.scale = nn.Parameter(torch.full((3,), 2.0))
        return self.head(self.fc(x) * self.scale)


def test_parameters_replaced_or_registered_in_forward_are_reported_and_put_back() -> None:
    plain, probed = twin(ReplacesParameters)
    x = torch.randn(2, 4)
    original = probed.fc.weight
    report = probe_leaving_it_as_found(probed, x)  # used to crash with "unexpected error: KeyError"
    assert probed.fc.weight is original and not hasattr(probed, "scale")
    old_plain = plain.fc.weight
    grads = plain_step(plain, x)
    assert plain.fc.weight is not old_plain and old_plain.grad is None  # control: the swap is real in plain PyTorch
    assert_grads_match(report, grads)  # the parameters as the forward left them, as backward saw them
    assert set(report.facts.param_changes) == {ParamChange("fc.weight", "forward", "replaced"),
                                               ParamChange("scale", "forward", "registered")}
    assert {m.name: m.direct_params for m in report.facts.modules}[""] == ("scale",)


# --- tensor attributes that require grad but are no Parameter ---------------------------------------


class LooseLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = torch.ones(3, requires_grad=True)  # not a Parameter: model.parameters() does not list it
        self.offset = torch.zeros(3)  # no grad: not a leaf to report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale + self.offset


def test_loose_leaf_is_reported_and_its_grad_restored() -> None:
    plain, probed = twin(LooseLeaf)
    users_grad = torch.full((3,), 7.0)
    probed.scale.grad = users_grad
    x = torch.randn(2, 4)
    before = snapshot(probed, extra=[("scale", probed.scale)])
    report = probe(probed, x)
    assert_same_state(before, snapshot(probed, extra=[("scale", probed.scale)]))
    assert probed.scale.grad is users_grad
    plain_step(plain, x)
    (leaf,) = report.facts.leaves
    assert (leaf.name, leaf.module, leaf.shape, leaf.dtype) == ("scale", "", (3,), "float32")
    assert leaf.grad == grad_state(plain.scale.grad) == "nonzero"
    assert leaf.grad_norm == pytest.approx(float(plain.scale.grad.double().norm()), rel=1e-6)
    assert "scale" not in {p.name for p in report.facts.parameters}
    no_backward = probe(probed, x, backward=False).facts.leaves
    assert no_backward[0].grad is None


def test_nested_module_leaf_is_named_by_its_path() -> None:
    model = nn.Sequential(LooseLeaf())
    report = probe(model, torch.randn(2, 4))
    assert [(leaf.name, leaf.module) for leaf in report.facts.leaves] == [("0.scale", "0")]


# --- state after a failing run of each pattern --------------------------------------------------------


def test_failing_backward_after_a_forward_write_still_restores() -> None:
    class Fails(WritesItsWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = super().forward(x)
            y.register_hook(lambda g: 1 / 0)
            return y

    model = Fails("no_grad")
    x = torch.randn(2, 4)
    before = snapshot(model)
    with pytest.raises(Exception, match="backward raised"):
        probe(model, x)
    assert_same_state(before, snapshot(model))


def test_grad_mode_and_copies_survive_twice_in_a_row() -> None:
    model = WritesItsWeights("no_grad")
    x = torch.randn(2, 4)
    torch.set_grad_enabled(False)
    try:
        before = snapshot(model)
        first = probe(model, x)
        second = probe(model, x)
        assert_same_state(before, snapshot(model))
        assert first.facts.modified_parameters == second.facts.modified_parameters == ("fc.weight",)
    finally:
        torch.set_grad_enabled(True)


def test_deepcopied_model_is_not_confused_with_the_original() -> None:
    model = WritesItsWeights("data")
    other = copy.deepcopy(model)
    x = torch.randn(2, 4)
    before = snapshot(other)
    probe(model, x)
    assert_same_state(before, snapshot(other))
