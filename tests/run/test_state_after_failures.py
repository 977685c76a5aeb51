"""After every failing run through the Python API, the model and the process are as they were.

Each case builds a model with state worth protecting -- a module in eval mode inside a training model,
frozen parameters, gradients the user already has, BatchNorm statistics that are not the defaults -- and
then fails in one specific way, often after changing some of that state itself.  The test compares a
deep, independent snapshot taken before the run with one taken after.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from gradprobe import GradprobeError, probe
from gradprobe.api import load

MODELS = "tests/fixtures/models.py"
BAD = "tests/fixtures/bad_imports"


class Stateful(nn.Module):
    """Linear → BatchNorm → Dropout → Linear, with mixed flags, existing grads and non-default statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(6, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.num_batches_tracked.fill_(7)
        self.fc1.requires_grad_(False)  # a frozen "backbone"
        self.fc2.weight.grad = torch.full_like(self.fc2.weight, 0.25)  # the user's own accumulated gradient
        self.drop.eval()  # a mixed-mode model
        self.failure = "none"

    def forward(self, x: torch.Tensor) -> Any:
        h = self.drop(self.bn(self.fc1(x)))  # BatchNorm statistics change in train mode
        fail = self.failure
        if fail == "raise":
            raise ValueError("boom in forward")
        if fail == "interrupt":
            self.fc2.requires_grad_(False)
            self.bn.eval()
            raise KeyboardInterrupt
        if fail == "exit":
            raise SystemExit(5)
        if fail == "none-output":
            return None
        if fail == "grad-off-then-raise":
            torch.set_grad_enabled(False)
            raise RuntimeError("left grad disabled")
        if fail == "replace-buffer":
            self.bn.running_mean = torch.zeros(6)
            raise RuntimeError("replaced a buffer")
        if fail == "replace-parameter":
            self.fc2.weight = nn.Parameter(torch.zeros(2, 6))
            raise RuntimeError("replaced a parameter")
        if fail == "clear-user-grad":
            self.fc2.weight.grad = None
            raise RuntimeError("cleared a gradient")
        if fail == "inplace":
            s = torch.sigmoid(self.fc2(h))
            s.add_(1)  # sigmoid saved its output: backward must raise
            return s
        if fail == "rng":
            torch.rand(1000)
            raise RuntimeError("consumed random numbers")
        return self.fc2(h)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a run could change, copied by value (and identity for Parameters and grads)."""
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "param_ids": {n: id(p) for n, p in model.named_parameters()},
        "param_values": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grad_ids": {n: id(p.grad) if p.grad is not None else None for n, p in model.named_parameters()},
        "grad_values": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "buffer_ids": {n: id(b) for n, b in model.named_buffers()},
        "buffer_values": {n: b.clone() for n, b in model.named_buffers()},
        "grad_enabled": torch.is_grad_enabled(),
        "rng": torch.random.get_rng_state(),
        "hooks": (len(nn.modules.module._global_forward_hooks), len(nn.modules.module._global_forward_pre_hooks)),
    }


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("training", "requires_grad", "param_ids", "grad_ids", "buffer_ids", "grad_enabled", "hooks"):
        assert before[key] == after[key], key
    for key in ("param_values", "grad_values", "buffer_values"):
        assert before[key].keys() == after[key].keys(), key
        for name, value in before[key].items():
            assert torch.equal(value, after[key][name]), f"{key}: {name}"
    assert torch.equal(before["rng"], after["rng"])


def sum_loss_raising(outputs: Any, inputs: Any) -> torch.Tensor:
    raise KeyError("labels")


def vector_loss(outputs: Any, inputs: Any) -> torch.Tensor:
    return outputs.sum(dim=1)


FAILURES: list[tuple[str, dict[str, Any], type[BaseException]]] = [
    ("raise", {}, GradprobeError),
    ("interrupt", {}, KeyboardInterrupt),
    ("exit", {}, GradprobeError),
    ("none-output", {}, GradprobeError),
    ("grad-off-then-raise", {}, GradprobeError),
    ("replace-buffer", {}, GradprobeError),
    ("replace-parameter", {}, GradprobeError),
    ("clear-user-grad", {}, GradprobeError),
    ("inplace", {}, GradprobeError),
    ("rng", {}, GradprobeError),
    ("none", {"loss": sum_loss_raising}, GradprobeError),
    ("none", {"loss": vector_loss}, GradprobeError),
    ("none", {"mode": "sideways"}, GradprobeError),
    ("none", {"depth": -1}, GradprobeError),
]


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad-on", "grad-off"])
@pytest.mark.parametrize(("failure", "options", "error"), FAILURES,
                         ids=[f"{f}-{'-'.join(o) or 'forward'}" for f, o, _ in FAILURES])
def test_failing_run_leaves_everything_as_found(failure: str, options: dict[str, Any], error: type[BaseException],
                                                grad_enabled: bool) -> None:
    torch.manual_seed(1)
    model = Stateful()
    model.failure = failure
    x = torch.randn(5, 4)
    torch.set_grad_enabled(grad_enabled)
    before = snapshot(model)
    with pytest.raises(error):
        probe(model, x, **options)
    after = snapshot(model)
    torch.set_grad_enabled(True)
    assert_unchanged(before, after)


def test_the_failing_model_does_change_state_when_run_directly() -> None:
    """The cases above are not vacuous: each failing forward really changes what the test checks."""
    for failure, key in [("interrupt", "requires_grad"), ("replace-buffer", "buffer_ids"),
                         ("replace-parameter", "param_ids"), ("clear-user-grad", "grad_ids"),
                         ("raise", "buffer_values"), ("grad-off-then-raise", "grad_enabled"), ("rng", "rng")]:
        model = Stateful()
        model.failure = failure
        model.train()
        x = torch.randn(5, 4)
        before = snapshot(model)
        with pytest.raises((Exception, KeyboardInterrupt)):
            model(x)
        after = snapshot(model)
        torch.set_grad_enabled(True)
        with pytest.raises(AssertionError):
            assert_unchanged(before, after)
        if key == "rng":
            assert not torch.equal(before["rng"], after["rng"])
        elif key == "buffer_values":
            assert not torch.equal(before[key]["bn.running_mean"], after[key]["bn.running_mean"])
        else:
            assert before[key] != after[key], failure


def test_successful_run_leaves_everything_as_found() -> None:
    model = Stateful()
    x = torch.randn(5, 4)
    before = snapshot(model)
    report = probe(model, x)
    assert report.facts.backward
    assert_unchanged(before, snapshot(model))
    changed = {b.name for b in report.facts.buffers if b.changed}
    assert changed == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}


@pytest.mark.parametrize("failure", ["raise", "inplace", "replace-buffer"])
def test_repeated_failures_do_not_accumulate(failure: str) -> None:
    model = Stateful()
    model.failure = failure
    x = torch.randn(5, 4)
    before = snapshot(model)
    for _ in range(3):
        with pytest.raises(GradprobeError):
            probe(model, x)
    assert_unchanged(before, snapshot(model))
    model.failure = "none"  # and the model still works afterwards
    assert probe(model, x).facts.backward
    assert_unchanged(before, snapshot(model))


# ------------------------------------------------------------------------------------- loading fails


@pytest.mark.parametrize(("target", "import_fails"), [
    (f"{MODELS}:RaisingInit", False), (f"{MODELS}:NoExample", False), (f"{MODELS}:make_not_a_module", False),
    (f"{BAD}/import_raises.py:X", True), (f"{BAD}/import_exits.py:X", True),
    (f"{BAD}/import_missing_dep.py:X", True), ("tests.fixtures.bad_imports.import_raises:X", True),
    ("tests.fixtures.bad_imports.import_interrupt:X", True),
])
def test_failing_load_leaves_the_process_as_found(target: str, import_fails: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    bytecode_before = sys.dont_write_bytecode
    stdout_before = sys.stdout
    with pytest.raises((GradprobeError, KeyboardInterrupt)):
        load(target)
    assert sys.path == path_before
    if import_fails:  # no half-imported module is left behind to be found by the next import
        new = set(sys.modules) - modules_before
        assert not {m for m in new if "gradprobe_user" in m or m.startswith("tests.fixtures.bad_imports.")}
    assert sys.dont_write_bytecode == bytecode_before
    assert sys.stdout is stdout_before
    assert torch.is_grad_enabled()


def test_keyboard_interrupt_through_api_restores_and_propagates() -> None:
    """Ctrl-C is not swallowed by the API (a notebook user wants it), but the model is restored first."""
    model = Stateful()
    model.failure = "interrupt"
    x = torch.randn(5, 4)
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        probe(model, x)
    assert_unchanged(before, snapshot(model))



def _compare(model: nn.Module, x: torch.Tensor) -> Any:
    from gradprobe import compare_modes

    return compare_modes(model, x, repeat=1, backward=True)


def _freeze(model: nn.Module, x: torch.Tensor) -> Any:
    from gradprobe import freeze_check

    return freeze_check(model, x, frozen=["fc1"], trainable=["fc2", "bn"], unlisted="ignore",
                        optimizer=lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1,
                                                            momentum=0.9, weight_decay=0.01))


@pytest.mark.parametrize("run", [_compare, _freeze], ids=["compare_modes", "freeze_check"])
@pytest.mark.parametrize("failure", ["raise", "interrupt", "exit", "none-output", "grad-off-then-raise",
                                     "replace-buffer", "replace-parameter", "clear-user-grad", "inplace", "rng",
                                     "none"])
def test_compare_and_freeze_check_leave_everything_as_found(failure: str, run: Callable[..., Any]) -> None:
    """Whether they raise (freeze-check: the freeze could not be verified) or report failed rows (compare)."""
    torch.manual_seed(1)
    model = Stateful()
    model.failure = failure
    x = torch.randn(5, 4)
    before = snapshot(model)
    try:
        run(model, x)
    except (GradprobeError, KeyboardInterrupt):
        pass
    after = snapshot(model)
    torch.set_grad_enabled(True)
    assert_unchanged(before, after)


class EMAInForward(nn.Module):
    """Updates its own weights in place inside forward (an EMA/weight-norm style update)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.fc.weight.mul_(0.5)
        return self.fc(x)


def test_forward_writing_parameter_values_is_reported() -> None:
    """The change is undone after the run (see below) and named, since every plain call makes it."""
    report = probe(EMAInForward(), torch.randn(3, 4))
    assert report.facts.modified_parameters == ("fc.weight",)
    (finding,) = [f for f in report.findings if f.code == "param-modified-in-forward"]
    assert finding.subject == "fc.weight" and finding.severity == "warning"
    clean = probe(nn.Linear(4, 2), torch.randn(3, 4))
    assert clean.facts.modified_parameters == ()
    assert not [f for f in clean.findings if f.code == "param-modified-in-forward"]


def test_forward_writing_parameter_values_in_place_is_undone() -> None:
    """The write guard copies fc.weight before the forward's first write into it and puts it back."""
    model = EMAInForward()
    x = torch.randn(3, 4)
    before = snapshot(model)
    probe(model, x)
    assert_unchanged(before, snapshot(model))
