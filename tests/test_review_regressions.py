"""Regressions for bugs found in the pre-release review of gradprobe's core.

Expected values come from plain PyTorch, never from gradprobe's own output.
"""

from __future__ import annotations

import torch
from torch import nn

from gradprobe.api import compare_modes, probe
from gradprobe.run.trackers.grads import grad_states


def test_complex_gradient_norm_counts_the_imaginary_part() -> None:
    """A purely imaginary gradient is nonzero with norm sqrt(sum |z|^2), not 0.0 (``.float()`` dropped Im)."""
    param = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    param.grad = torch.tensor([1j, 2j, 0j], dtype=torch.complex64)
    expected = float(torch.sqrt((param.grad.abs() ** 2).sum()))
    [(state, norm)] = grad_states([param])
    assert state == "nonzero"
    assert norm is not None and abs(norm - expected) < 1e-6


class _ComplexScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1 + 0j, 2 + 0j], dtype=torch.complex64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).imag  # d(sum imag(w*x))/dw is imaginary-valued for a real x


def test_complex_parameter_reports_true_gradient_norm() -> None:
    model = _ComplexScale()
    x = torch.tensor([3.0, 4.0])
    twin = _ComplexScale()
    twin.load_state_dict(model.state_dict())
    twin(x).sum().backward()
    assert twin.w.grad is not None
    expected = float(torch.linalg.vector_norm(twin.w.grad))
    assert expected > 0
    [param] = probe(model, x).facts.parameters
    assert param.grad == "nonzero"
    assert param.grad_norm is not None and abs(param.grad_norm - expected) < 1e-5
    assert model.w.grad is None


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



# ---------------------------------------------------------------- found by a new user trying the CLI


class _NoGradBackbone(nn.Module):
    """The backbone runs under no_grad inside forward; ``head_frozen`` also freezes the head."""

    def __init__(self, head_frozen: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.head.requires_grad_(not head_frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


def test_cut_off_parameters_are_an_error_even_when_no_backward_is_possible() -> None:
    model = _NoGradBackbone(head_frozen=True)
    out = model(torch.randn(4, 8))
    assert not out.requires_grad  # plain PyTorch: nothing to call backward on
    report = probe(model, torch.randn(4, 8))
    assert not report.facts.backward
    (finding,) = [f for f in report.findings if f.code == "grad-none"]
    assert finding.severity == "error" and finding.subject == "backbone" and "no grad_fn" in finding.message


def test_a_fully_frozen_model_says_nothing_will_train() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).requires_grad_(False)
    codes = {f.code: f for f in probe(model, torch.randn(4, 8)).findings}
    assert codes["no-trainable-params"].severity == "warning"
    assert "no-backward" not in codes and "grad-none" not in codes
    trainable = nn.Sequential(nn.Linear(8, 2))
    assert "no-trainable-params" not in {f.code for f in probe(trainable, torch.randn(4, 8)).findings}


def test_the_cause_does_not_depend_on_recording_tensors() -> None:
    model = _NoGradBackbone()
    with_tensors = [f for f in probe(model, torch.randn(4, 8)).findings if f.code == "grad-none"]
    without = [f for f in probe(model, torch.randn(4, 8), tensors=False).findings if f.code == "grad-none"]
    assert with_tensors == without and "no grad_fn" in without[0].message


def test_an_instance_on_meta_without_device_meta_is_one_clear_error(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\nwith torch.device('meta'):\n    inst = nn.Linear(8, 2)\n")
    proc = subprocess.run([sys.executable, "-m", "gradprobe", "inspect", "m.py:inst", "--shape", "4,8"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "meta" in lines[0] and "--device meta" in lines[0], proc.stderr


def test_a_file_without_name_lists_what_it_defines_without_running_it(tmp_path) -> None:
    from gradprobe.errors import UsageError
    from gradprobe.load.user_code import split_spec

    model_file = tmp_path / "m.py"
    model_file.write_text("raise SystemExit('must not run')\nclass Net: pass\n"
                          "def build(): pass\ndef _private(): pass\n")
    try:
        split_spec(str(model_file))
    except UsageError as exc:
        assert "defines: Net, build" in str(exc) and "_private" not in str(exc)
    else:
        raise AssertionError("a spec without :Name must be refused")


def test_shape_ignored_next_to_inputs_is_said(tmp_path) -> None:
    from gradprobe.api import load

    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\nNet = lambda: nn.Linear(3, 2)\ndef x():\n    return torch.ones(1, 3)\n")
    loaded, example = load(f"{tmp_path / 'm.py'}:Net", inputs=f"{tmp_path / 'm.py'}:x", shapes=["5,3"])
    assert tuple(example.args[0].shape) == (1, 3)  # --inputs wins, as issue 2 orders the sources
    assert "--shape ignored: --inputs takes precedence" in loaded.notes
