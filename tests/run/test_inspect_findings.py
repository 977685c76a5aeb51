"""Each finding (issue 2 §5): a model that must raise it and one that must not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gradprobe.api import load, probe
from gradprobe.facts.run import Finding, InspectReport
from tests.fixtures import models as mi


def _codes(report: InspectReport) -> list[str]:
    return [f.code for f in report.findings]


def _only(report: InspectReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.findings
    return found[0]


def _plain_grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    out = model(model.example_input_array)
    out.sum().backward()
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


# ------------------------------------------------------------------ grad-none, with each cause


def test_grad_none_never_called() -> None:
    model = mi.NeverCalled()
    assert _plain_grads(model)["aux.weight"] is None  # plain PyTorch agrees
    finding = _only(probe(model), "grad-none")
    assert finding.severity == "error" and finding.subject == "aux"
    assert "never called" in finding.message
    assert finding.hint


def test_grad_none_no_grad_inside_forward() -> None:
    model = mi.NoGradInside()
    assert _plain_grads(model)["backbone.0.weight"] is None
    finding = _only(probe(model), "grad-none")
    assert finding.subject == "backbone"
    assert "no grad_fn" in finding.message and "no_grad" in finding.message
    assert "never called" not in finding.message


def test_grad_none_detach_inside_forward() -> None:
    model = mi.DetachInside()
    assert _plain_grads(model)["backbone.weight"] is None
    finding = _only(probe(model), "grad-none")
    assert finding.subject == "backbone"
    assert "detach" in finding.message
    assert "never called" not in finding.message and "no grad_fn" not in finding.message


def test_grad_none_groups_under_the_outermost_cut_off_module() -> None:
    """``NoGradInside.backbone`` holds ``backbone.0``: one finding for the block, not one per layer."""
    report = probe(mi.NoGradInside())
    assert _codes(report).count("grad-none") == 1
    assert "2 parameter(s)" in _only(report, "grad-none").message


def test_no_grad_none_when_every_trainable_parameter_gets_a_gradient() -> None:
    for model in (mi.MLP(), mi.FrozenBackbone(fixed=True), mi.Tied(), mi.CalledTwice()):
        grads = _plain_grads(model)
        assert all(grads[n] is not None for n, p in model.named_parameters() if p.requires_grad)
        assert "grad-none" not in _codes(probe(model))


def test_no_grad_none_without_backward() -> None:
    assert "grad-none" not in _codes(probe(mi.NeverCalled(), grad_mode="no_grad"))
    assert "grad-none" not in _codes(probe(mi.NeverCalled(), backward=False))


# ------------------------------------------------------------------ grad-zero


def test_grad_zero() -> None:
    model = mi.ZeroGrad()
    grads = _plain_grads(model)
    assert not grads["gate.weight"].any() and not grads["gate.bias"].any()
    report = probe(model)
    zero = [f for f in report.findings if f.code == "grad-zero"]
    assert {f.subject for f in zero} == {"gate.weight", "gate.bias"}
    assert all(f.severity == "warning" for f in zero)


def test_no_grad_zero_for_real_gradients() -> None:
    model = mi.MLP()
    assert all(g.any() for g in _plain_grads(model).values())
    assert "grad-zero" not in _codes(probe(model))


# ------------------------------------------------------------------ frozen-bn-drift


def test_frozen_bn_drift_one_finding_per_outermost_frozen_module() -> None:
    report = probe(mi.FrozenBackbone())
    finding = _only(report, "frozen-bn-drift")
    assert finding.subject == "backbone" and finding.severity == "warning"
    assert "6 buffer(s) of 2 module(s)" in finding.message
    assert "backbone.1" in finding.message and "backbone.4" in finding.message
    assert "model.backbone.eval()" in finding.hint


def test_frozen_bn_drift_on_the_bundled_example() -> None:
    finding = _only(probe(load("gradprobe.examples:FineTuneNet")[0].model), "frozen-bn-drift")
    assert finding.subject == "backbone"


def test_frozen_bn_drift_nested_frozen_modules_and_affine_free_norms() -> None:
    """A frozen encoder holding frozen blocks (one with an affine-free BatchNorm) is one finding; a trainable
    BatchNorm elsewhere is not a finding."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
                nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)),
            )
            self.encoder.requires_grad_(False)
            self.neck = nn.BatchNorm1d(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.neck(self.encoder(x)))

    report = probe(Net(), torch.randn(5, 4))
    finding = _only(report, "frozen-bn-drift")
    assert finding.subject == "encoder"
    assert "encoder.0.1" in finding.message and "encoder.1.1" in finding.message
    assert "neck" not in finding.message


def test_frozen_bn_drift_on_a_fully_frozen_model() -> None:
    finding = _only(probe(mi.FrozenBackbone().requires_grad_(False)), "frozen-bn-drift")
    assert finding.subject == "(model)" and "the frozen model" in finding.message
    assert "call model.eval()" in finding.hint


def test_no_frozen_bn_drift_when_fixed_or_in_eval_or_trainable() -> None:
    assert "frozen-bn-drift" not in _codes(probe(mi.FrozenBackbone(fixed=True)))
    assert "frozen-bn-drift" not in _codes(probe(mi.FrozenBackbone(), mode="eval"))
    assert "frozen-bn-drift" not in _codes(probe(mi.TrainableBN()))


# ------------------------------------------------------------------ train-mode-no-grad


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_train_mode_no_grad(grad_mode: str) -> None:
    finding = _only(probe(mi.WithDropout(), mode="train", grad_mode=grad_mode), "train-mode-no-grad")
    assert finding.subject == "drop" and finding.severity == "warning"
    assert "model.eval()" in finding.hint


def test_train_mode_no_grad_for_batchnorm() -> None:
    assert _only(probe(mi.TrainableBN(), grad_mode="no_grad"), "train-mode-no-grad").subject == "bn"


@pytest.mark.parametrize(("factory", "mode", "grad_mode"), [
    (mi.WithDropout, "eval", "no_grad"),
    (mi.WithDropout, "train", "grad"),
    (mi.MLP, "train", "no_grad"),  # no module that behaves differently in train mode
])
def test_no_train_mode_no_grad(factory, mode: str, grad_mode: str) -> None:
    assert "train-mode-no-grad" not in _codes(probe(factory(), mode=mode, grad_mode=grad_mode))


# ------------------------------------------------------------------ inference-output


def test_inference_output_from_inference_mode_inside_forward() -> None:
    report = probe(mi.InferenceInside())
    finding = _only(report, "inference-output")
    assert finding.severity == "error" and finding.subject == "output"
    assert report.facts.outputs[0].is_inference
    assert not report.facts.backward and "inference" in report.facts.backward_skipped_reason


def test_inference_output_beside_a_trainable_output_still_backpropagates() -> None:
    report = probe(mi.PartlyInference())
    assert report.facts.backward
    assert [o.is_inference for o in report.facts.outputs] == [False, True]
    assert _only(report, "inference-output").subject == "output[1]"
    assert all(p.grad == "nonzero" for p in report.facts.parameters)


def test_inference_output_under_inference_mode_is_info() -> None:
    finding = _only(probe(mi.MLP(), grad_mode="inference_mode"), "inference-output")
    assert finding.severity == "info"


def test_no_inference_output_normally() -> None:
    assert "inference-output" not in _codes(probe(mi.MLP()))
    assert "inference-output" not in _codes(probe(mi.MLP(), grad_mode="no_grad"))


# ------------------------------------------------------------------ global-grad-disabled


def test_global_grad_disabled() -> None:
    with torch.no_grad():
        report = probe(mi.MLP())
    finding = _only(report, "global-grad-disabled")
    assert finding.severity == "warning"
    assert "set_grad_enabled(False)" in finding.message


def test_no_global_grad_disabled_when_enabled() -> None:
    assert torch.is_grad_enabled()
    assert "global-grad-disabled" not in _codes(probe(mi.MLP()))


# ------------------------------------------------------------------ requires-grad-attr


def test_requires_grad_attribute() -> None:
    model = mi.RequiresGradAttr()
    assert all(p.requires_grad for p in model.backbone.parameters())  # the attribute froze nothing
    finding = _only(probe(model), "requires-grad-attr")
    assert finding.subject == "backbone" and finding.severity == "error"
    assert "2 of its 2 parameter(s) still require grad" in finding.message
    assert "model.backbone.requires_grad_(False)" in finding.hint


def test_no_requires_grad_attribute_when_frozen_properly() -> None:
    assert "requires-grad-attr" not in _codes(probe(mi.RequiresGradAttr(correct=True)))


# ------------------------------------------------------------------ nonfinite-output


def test_nonfinite_output() -> None:
    finding = _only(probe(mi.NonFinite()), "nonfinite-output")
    assert finding.subject == "output[1]" and finding.severity == "error"


def test_no_nonfinite_output() -> None:
    assert "nonfinite-output" not in _codes(probe(mi.MLP()))


# ------------------------------------------------------------------ weights keys


def test_weights_keys_findings(tmp_path: Path) -> None:
    file = Path(mi.__file__)
    good = mi.MLP().state_dict()
    torch.save(good, tmp_path / "good.pt")
    loaded, example = load(f"{file}:MLP", weights=str(tmp_path / "good.pt"))
    assert not [c for c in _codes(probe(loaded.model, example, loaded=loaded)) if c.startswith("weights-")]

    partial = dict(good)
    del partial["net.2.weight"]
    partial["module.extra"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pt")
    loaded, example = load(f"{file}:MLP", weights=str(tmp_path / "partial.pt"))
    report = probe(loaded.model, example, loaded=loaded)
    assert _only(report, "weights-missing-keys").subject == "net.2.weight"
    assert _only(report, "weights-unexpected-keys").subject == "module.extra"


# ------------------------------------------------------------------ a clean model has no findings at all


def test_clean_models_have_no_findings() -> None:
    for model in (mi.MLP(), mi.FrozenBackbone(fixed=True), mi.Tied(), mi.WithDropout()):
        assert probe(model).findings == ()
    assert probe(load("gradprobe.examples:fixed")[0].model).findings == ()


def test_findings_sorted_by_severity() -> None:
    report = probe(load("gradprobe.examples:FineTuneNet")[0].model, grad_mode="inference_mode")
    assert {f.severity for f in report.findings} == {"warning", "info"}
    report = probe(load("gradprobe.examples:FineTuneNet")[0].model)
    assert _codes(report) == ["grad-none", "frozen-bn-drift"]
    order = {"error": 0, "warning": 1, "info": 2}
    severities = [order[f.severity] for f in report.findings]
    assert severities == sorted(severities)
    assert report.has_errors
