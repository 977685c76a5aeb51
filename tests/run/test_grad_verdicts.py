"""Gradient verdicts on one model per training pattern, each checked against plain PyTorch in the same test.

Issue 9 §1: every trainable parameter whose ``.grad`` is None after a plain backward is named in a
``grad-none`` error.  §2: the cause and the fix name the right place and mechanism, or say it cannot be told.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from fixtures import verdict_models as vm
from torch import nn

from gradprobe.api import probe
from gradprobe.facts.run import Finding, GradState, InspectReport


def plain_backward(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradients after ``model(x).sum().backward()`` in plain PyTorch, on a copy of nothing: the model is
    reset afterwards (grads to None, flags and modes as before)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = model.example_input_array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(x)
        loss = out.float().sum() if out.is_floating_point() else None
        if loss is not None and loss.requires_grad:
            loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    for n, m in model.named_modules():
        m.train(modes[n])
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return grads


def missing(model: nn.Module, grads: dict[str, torch.Tensor | None]) -> set[str]:
    """Trainable parameters (as handed over) without a gradient after the plain backward."""
    return {n for n, p in model.named_parameters() if p.requires_grad and grads[n] is None}


def run(model: nn.Module) -> InspectReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return probe(model)


def grad_none(report: InspectReport) -> list[Finding]:
    return [f for f in report.findings if f.code == "grad-none"]


def named(report: InspectReport) -> set[str]:
    """Trainable parameters some grad-none finding names: as its subject, inside the module it is about, or
    quoted in its message (the parameter or a module holding it)."""
    out = set()
    for p in report.facts.parameters:
        parts = p.name.split(".")
        holders = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        for f in grad_none(report):
            if f.subject == "(model)" or f.subject in holders or any(f"'{h}'" in f.message for h in holders):
                out.add(p.name)
    return out


def the_one(report: InspectReport) -> Finding:
    found = grad_none(report)
    assert len(found) == 1, found
    return found[0]


def check_every_missing_named(model: nn.Module) -> InspectReport:
    """The core promise: gradprobe's gradient states equal plain PyTorch's, and every missing one is named."""
    grads = plain_backward(model)
    report = run(model)
    states = {p.name: p.grad for p in report.facts.parameters}
    for name, g in grads.items():
        expected = GradState.ABSENT if g is None else (GradState.ZERO if not bool(g.any()) else GradState.NONZERO)
        assert states[name] is expected, name
    lacking = missing(model, grads)
    assert named(report) >= lacking
    assert bool(lacking) == bool(grad_none(report))
    return report


# ------------------------------------------------------------------------------------------------ §1


def test_root_parameter_never_read() -> None:
    model = vm.RootUnused()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "unused" and f.severity == "error"
    assert "never reads" in f.message and "model.unused.requires_grad_(False)" in f.hint


def test_root_parameter_used_only_through_data() -> None:
    model = vm.DataOnly()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "scale" and ".data" in f.message and "never reads" not in f.message


def test_one_unused_parameter_of_a_module_whose_others_train() -> None:
    model = vm.PartlyUnused()
    grads = plain_backward(model)
    assert grads["block.weight"] is not None and grads["block.gate"] is None
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "block.gate" and "'block' ran" in f.message


def test_custom_function_returning_none() -> None:
    model = vm.CustomFunctionNone()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "w" and "autograd.Function" in f.message and "reaches it" in f.message


# ------------------------------------------------------------------------------------------------ §2


def test_containers_attribute_to_the_modules_inside() -> None:
    model = vm.PrefixLayers()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert "'layers.2'" in f.message and "'layers.3'" in f.message
    assert "'layers' was never called" not in f.message and "not called in this forward" in f.message
    assert "2 of the 4 Linear modules in 'layers' ran" in f.message


def test_a_list_nothing_calls_is_named_as_a_container() -> None:
    model = vm.UnusedList()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "extra" and "ModuleList is a container" in f.message and "'extra.0'" in f.message


def test_cut_downstream_names_the_module_and_the_mechanism() -> None:
    model = vm.DownstreamNoGrad()
    grads = plain_backward(model)
    assert grads["encoder.0.weight"] is None and grads["mid.weight"] is None and grads["head.weight"] is not None
    report = check_every_missing_named(model)
    by_subject = {f.subject: f for f in grad_none(report)}
    assert set(by_subject) == {"encoder", "mid"}
    upstream = by_subject["encoder"]
    assert "downstream, in 'mid'" in upstream.message and "torch.no_grad()" in upstream.message
    assert ".detach()" not in upstream.message and "remove the torch.no_grad() in 'mid'" in upstream.hint
    assert "torch.no_grad()" in by_subject["mid"].message


def test_detach_in_the_models_forward() -> None:
    model = vm.DetachDownstream()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "encoder" and ".detach() in the model's own forward" in f.message


def test_inference_mode_inside_forward() -> None:
    model = vm.InferenceInside()
    report = check_every_missing_named(model)
    assert "torch.inference_mode()" in the_one(report).message


def test_non_differentiable_op() -> None:
    model = vm.ArgmaxRoute()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "scorer" and "'argmax'" in f.message and "dead" not in f.message


def test_reentrant_checkpoint_fix_is_use_reentrant_false() -> None:
    model = vm.ReentrantCheckpoint()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "block" and "use_reentrant=True" in f.message
    assert "use_reentrant=False" in f.hint and "remove the no_grad" not in f.hint


def test_non_reentrant_checkpoint_trains_everything() -> None:
    model = vm.NonReentrantCheckpoint()
    report = check_every_missing_named(model)
    assert not grad_none(report)


def test_data_dependent_routing_is_not_a_module_to_delete() -> None:
    model = vm.MoE()
    grads = plain_backward(model)
    unrouted = {f"experts.{e}.{k}" for e in (2, 3) for k in ("weight", "bias")}
    assert {n for n, g in grads.items() if g is None} == unrouted
    report = check_every_missing_named(model)
    f = the_one(report)
    assert f.subject == "experts" and "'experts.2'" in f.message and "'experts.3'" in f.message
    assert "these inputs did not reach it" in f.message and "delete it" not in f.message.split(":")[0]
    assert "--inputs" in f.hint


def test_torchscript_cause_cannot_be_told() -> None:
    model = vm.scripted()
    report = check_every_missing_named(model)
    f = the_one(report)
    assert "TorchScript" in f.message and "cannot be told" in f.message and "never called" not in f.message


def test_expected_zero_gradient_of_a_lora_factor() -> None:
    model = vm.LoRANet()
    grads = plain_backward(model)
    assert not grads["proj.lora_a.weight"].any() and grads["proj.lora_b.weight"].any()  # type: ignore[union-attr]
    report = check_every_missing_named(model)
    (zero,) = [f for f in report.findings if f.code == "grad-zero"]
    assert zero.subject == "proj.lora_a.weight" and zero.severity == "info"
    assert "proj.lora_b.weight" in zero.message and "dead ReLU" not in zero.message + zero.hint


def test_a_real_zero_gradient_stays_a_warning() -> None:
    model = vm.DeadReLU()
    report = check_every_missing_named(model)
    zero = [f for f in report.findings if f.code == "grad-zero"]
    assert zero and all(f.severity == "warning" for f in zero)


def test_flags_changed_inside_forward() -> None:
    model = vm.FreezesInForward()
    grads = plain_backward(model)
    assert grads["encoder.weight"] is None and model.encoder.weight.requires_grad  # handed over trainable
    report = check_every_missing_named(model)
    params = {p.name: p for p in report.facts.parameters}
    assert params["encoder.weight"].requires_grad  # the state as handed over
    modules = {m.name: m for m in report.facts.modules}
    assert modules["drop"].training
    assert report.facts.requires_grad_changed == ("encoder.bias", "encoder.weight")
    assert report.facts.training_changed == ("drop",)
    changed = [f for f in report.findings if f.code == "flags-changed-in-forward"]
    assert len(changed) == 2 and "requires_grad" in changed[0].message and "'drop'" not in changed[1].message
    assert "requires_grad_(False)" in the_one(report).message
    assert model.encoder.weight.requires_grad and model.drop.training  # gradprobe left the model as handed over


def test_non_batchnorm_buffers_are_not_running_statistics() -> None:
    model = vm.FrozenSpectral()
    before = {n: b.clone() for n, b in model.named_buffers()}
    model(model.example_input_array)
    moved = {n for n, b in model.named_buffers() if not torch.equal(b, before[n])}
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(before[n])
    assert moved  # plain PyTorch: the power-iteration vectors change in train mode
    report = run(model)
    codes = [f.code for f in report.findings]
    assert "frozen-bn-drift" not in codes
    (drift,) = [f for f in report.findings if f.code == "frozen-buffer-drift"]
    assert drift.subject == "backbone" and "running statistics" not in drift.message
    assert "FrozenBatchNorm" not in drift.hint and "frozen BatchNorm" not in drift.hint


def test_bf16_gradient_norm_is_never_zero() -> None:
    model = vm.TinyGradBF16()
    grads = plain_backward(model)
    report = check_every_missing_named(model)
    for p in report.facts.parameters:
        g = grads[p.name]
        assert g is not None and g.any()
        expected = float(torch.linalg.vector_norm(g.double()))
        assert p.grad is GradState.NONZERO and p.grad_norm == pytest.approx(expected, rel=1e-6)
        assert expected < 1e-25  # in float32 its square underflows


def test_sparse_gradient_bytes_are_the_stored_bytes() -> None:
    model = vm.SparseEmbedding()
    grads = plain_backward(model)
    g = grads["embed.weight"]
    assert g is not None and g.is_sparse
    stored = g._indices().numel() * g._indices().element_size() + g._values().numel() * g._values().element_size()
    report = run(model)
    assert report.facts.memory is not None and report.facts.memory.gradient_bytes == stored
    assert stored < 1000 * 16 * 4  # not the dense size


@pytest.mark.parametrize(("factory", "saved"), [
    (vm.DroppedGraph, lambda x: 0),
    (vm.KeptGraph, lambda x: 2 * x.numel() * x.element_size()),  # the input and the tanh output (32x64 each)
])
def test_saved_bytes_count_only_what_the_graph_still_holds(factory: Callable[[], nn.Module],
                                                           saved: Callable[[torch.Tensor], int]) -> None:
    model = factory()
    report = run(model)
    assert report.facts.memory is not None
    assert report.facts.memory.saved_for_backward_bytes == saved(model.example_input_array)
