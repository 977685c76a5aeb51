"""``probe(grads=True)``: every figure against plain PyTorch hooks computed here, every verdict's module and op.

The reference runs the same model with ``register_forward_hook`` on each module and ``Tensor.register_hook`` on
each output (no gradprobe code), after the same seeding, with the same loss (the sum of the float output).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fixtures import grad_models, zoo
from torch import nn

from gradprobe.api import probe
from gradprobe.facts.grad_health import FLOAT16_TINY, GradHealthFacts, GradThresholds
from gradprobe.facts.run import InspectReport
from gradprobe.judges.grad_health.dead_units import zero_grad_cause
from gradprobe.judges.grad_health.scale import scale_profile
from gradprobe.render.inspect.json_out import inspect_json


class Reference:
    """Plain PyTorch: per module call the output's NaN/Inf count and the gradient reaching it; parameters' grads."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self.nonfinite: dict[tuple[str, int], int] = {}
        self.grads: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.outputs: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.order: list[tuple[str, int]] = []
        calls: dict[str, int] = {}
        handles = []
        for name, mod in model.named_modules():
            def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                n = calls.get(name, 0)
                calls[name] = n + 1
                key = (name, n)
                self.order.append(key)
                outs = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
                outs = [o for o in outs if o.is_floating_point()]
                self.nonfinite[key] = sum(int((~torch.isfinite(o)).sum()) for o in outs)
                self.outputs[key] = [o.detach().clone() for o in outs]
                for o in outs:
                    if o.requires_grad:
                        o.register_hook(lambda g, key=key: self.grads.setdefault(key, []).append(g.detach().clone()))
            handles.append(mod.register_forward_hook(hook))
        torch.manual_seed(seed)
        try:
            out = model(model.example_input_array)
            out.float().sum().backward()
        finally:
            for h in handles:
                h.remove()
        self.params = {n: p.grad.detach().clone() if p.grad is not None else None
                       for n, p in model.named_parameters()}
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)

    def norm(self, key: tuple[str, int]) -> float | None:
        grads = self.grads.get(key)
        if not grads:
            return None
        return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def run(factory: Callable[[], nn.Module], **kw: Any) -> tuple[nn.Module, InspectReport, GradHealthFacts]:
    torch.manual_seed(0)
    model = factory()
    report = probe(model, grads=kw.pop("grads", True), **kw)
    assert report.facts.grad_health is not None
    return model, report, report.facts.grad_health


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == pytest.approx(b, rel=rel, abs=1e-30)


MODELS = {
    "tiny_gpt": zoo.tiny_gpt, "resnet_small": zoo.resnet_small, "deep_sigmoid": grad_models.deep_sigmoid,
    "dead_relu": grad_models.dead_relu, "backward_sqrt_nan": grad_models.backward_sqrt_nan,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_call_figures_match_plain_hooks(name: str) -> None:
    """Per module call: NaN/Inf in the output and ‖gradient reaching it‖, in forward order (call start)."""
    model, _, gh = run(MODELS[name])
    ref = Reference(model)
    calls = {(c.module, c.call): c for c in gh.calls}
    assert set(calls) == set(ref.order)
    for key in ref.order:
        c = calls[key]
        assert c.nonfinite == ref.nonfinite[key], key
        assert close(c.grad_out_norm, ref.norm(key)), (key, c.grad_out_norm, ref.norm(key))
    starts = [(c.module, c.call) for c in gh.calls]  # parents before children
    for i, c in enumerate(gh.calls):
        if c.parent is not None:
            assert c.parent < i and c.module.startswith(gh.calls[c.parent].module)
    assert starts[0] == ("", 0)


@pytest.mark.parametrize("name", ["dead_relu", "backward_sqrt_nan", "lora_adapter", "tiny_gpt"])
def test_parameter_figures_match_plain(name: str) -> None:
    factory = {**MODELS, "lora_adapter": grad_models.lora_adapter}[name]
    model, report, gh = run(factory)
    ref = Reference(model)
    facts = {p.name: p for p in report.facts.parameters}
    for g in gh.parameters:
        plain = ref.params[g.name]
        w = ref.weights[g.name]
        if plain is None:  # no gradient: no figure, no ratio
            assert g.max_abs is None and g.zeros is None and g.weight_norm is None
            continue
        assert close(g.weight_norm, float(w.double().norm())), g.name
        assert close(g.max_abs, float(plain.abs().max())), g.name
        assert g.zeros == int((plain == 0).sum()), g.name
        assert g.nan == int(plain.isnan().sum()) and g.inf == int(plain.isinf().sum()), g.name
        grad_norm = facts[g.name].grad_norm
        assert grad_norm is not None and close(grad_norm, float(plain.double().norm())), g.name


def test_negative_zero_counts_as_zero() -> None:
    """-0.0 has nonzero bits: the integer-view count must still call it a zero."""

    class NegZero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(8))
            self.register_buffer("mask", torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 1]))
            self.example_input_array = torch.ones(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -(self.w * self.mask).sum() * x  # d/dw = -mask * sum(x): -0.0 where the mask is 0

    model, _, gh = run(NegZero)
    ref = Reference(model)
    plain = ref.params["w"]
    assert int((plain == 0).sum()) == 3 and bool(torch.signbit(plain[1]))
    assert gh.parameters[0].zeros == 3


def test_half_weights_norm_in_float32() -> None:
    """‖w‖ of float16 weights whose squares overflow float16: accumulated in float32, as plain float64 says."""

    class Half(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.full((1000,), 3000.0, dtype=torch.float16))
            self.example_input_array = torch.ones(1000, dtype=torch.float16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w * x * 1e-3

    model, _, gh = run(Half)
    expected = float(model.w.detach().double().norm())
    assert expected > 65504 and close(gh.parameters[0].weight_norm, expected)
    assert gh.parameters[0].dtype == "float16"


def test_forward_nan_origin_module_op_and_input_figures() -> None:
    model, report, gh = run(grad_models.forward_log_nan)
    origin = gh.forward_origin
    assert origin is not None and origin.call is not None
    assert gh.calls[origin.call].module == "log_out" and origin.op == "aten.log.default"
    with torch.no_grad():  # the log's input, in plain PyTorch
        x = model.head(model.encoder(model.example_input_array)) - model.log_out.shift
    (stats,) = origin.inputs
    assert stats.negatives == int((x < 0).sum()) == x.numel() and stats.zeros == int((x == 0).sum())
    assert close(stats.min, float(x.min())) and close(stats.max, float(x.max()))
    assert origin.made_nan == int(torch.log(x).isnan().sum())
    finding = next(f for f in report.findings if f.code == "nonfinite-forward")
    assert finding.subject == "log_out" and "aten.log.default" in finding.message and "log of values <= 0" in \
        finding.message
    # the calls before it were finite, the call and its parents were not
    ref = Reference(model)
    assert [k for k in ref.order if ref.nonfinite[k]] == [("log_out", 0), ("", 0)]


@pytest.mark.parametrize("log", [True, False])
def test_forward_nan_from_a_fully_masked_softmax_row(log: bool) -> None:
    """(log_)softmax over a row that is all -inf: NaN made from Inf inputs, not from finite ones."""
    model, report, gh = run(lambda: grad_models.masked_attention(log))
    origin = gh.forward_origin
    assert origin is not None and origin.op in ("aten._log_softmax.default", "aten._softmax.default")
    with torch.no_grad():  # plain PyTorch: the scores the softmax saw
        x = model.example_input_array
        scores = model.q(x) @ model.k(x).transpose(-1, -2)
        scores[:, 0, :] = float("-inf")
    masked = (scores == float("-inf")).all(dim=-1)
    assert origin.neg_inf_slices == int(masked.sum()) == 2 and origin.slices == masked.numel()
    assert origin.inputs[0].inf == int(torch.isinf(scores).sum())
    assert origin.made_nan == int(torch.softmax(scores, -1).isnan().sum())
    finding = next(f for f in report.findings if f.code == "nonfinite-forward")
    assert "inputs without NaN (they held 10 Inf)" in finding.message and "were finite" not in finding.message
    assert "2 of its 10 rows" in finding.message and "fully masked" in finding.message


def test_forward_nan_written_by_a_nan_fill_value() -> None:
    """A NaN number argument made the replay skip the op ('gave finite values (its inputs changed ...)')."""
    model, report, gh = run(grad_models.nan_fill)
    origin = gh.forward_origin
    assert origin is not None and origin.op == "aten.masked_fill.Scalar" and origin.note == ""
    with torch.no_grad():  # plain PyTorch: the entries the fill replaces
        h = model.fc(model.example_input_array)
    assert origin.made_nan == int((h > 0.5).sum()) > 0 and origin.inputs[0].nan == 0
    finding = next(f for f in report.findings if f.code == "nonfinite-forward")
    assert "its number argument is NaN" in finding.message and "aten.masked_fill.Scalar" in finding.message


def test_forward_nan_of_a_std_over_one_value() -> None:
    """std with the default correction over one row: 0/0. The verdict said only 'its inputs were finite'."""

    class Standardise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.example_input_array = torch.randn(1, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return (h - h.mean(0)) / h.std(0)

    model, report, gh = run(Standardise)
    origin = gh.forward_origin
    assert origin is not None and origin.op == "aten.std.correction"
    with torch.no_grad():  # plain PyTorch: the std the division used
        h = model.fc(model.example_input_array)
        std = h.std(0)
    assert origin.reduced == h.numel() // std.numel() == 1 and origin.correction == 1.0
    assert origin.made_nan == int(std.isnan().sum()) == 8
    finding = next(f for f in report.findings if f.code == "nonfinite-forward")
    assert "std over 1 value(s) per result with correction 1" in finding.message and "correction=0" in finding.hint


def test_fp16_overflow_origin() -> None:
    model, report, gh = run(grad_models.fp16_overflow)
    origin = gh.forward_origin
    assert origin is not None and gh.calls[origin.call].module == "proj"  # type: ignore[index]
    assert origin.op in ("aten.addmm.default", "aten.mm.default", "aten.linear.default")
    assert origin.dtype == "float16" and origin.wide_finite is True
    x = model.example_input_array.double()
    wide = (x @ model.proj.weight.double().t() + model.proj.bias.double()).detach()
    assert close(origin.wide_max_abs, float(wide.abs().max()), rel=1e-3)
    finding = next(f for f in report.findings if f.code == "nonfinite-forward")
    assert "overflow in float16" in finding.message and finding.subject == "proj"


def test_backward_nan_node_and_module() -> None:
    model, report, gh = run(grad_models.backward_sqrt_nan)
    assert gh.forward_origin is None
    node = gh.backward_nodes[0]
    assert node.kind == "SqrtBackward0" and gh.calls[node.call].module == "magnitude"  # type: ignore[index]
    seen: list[int] = []  # plain PyTorch: a post-hook on the same node

    def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        out.grad_fn.register_hook(lambda gi, go: seen.append(sum(int((~torch.isfinite(g)).sum()) for g in gi
                                                                     if g is not None)))

    handle = model.magnitude.register_forward_hook(hook)
    try:
        model(model.example_input_array).sum().backward()
    finally:
        handle.remove()
    assert node.nonfinite_out == seen[0] > 0
    finding = next(f for f in report.findings if f.code == "nonfinite-backward")
    assert finding.subject == "magnitude" and "SqrtBackward0" in finding.message
    calls = {c.module: c for c in gh.calls}
    assert math.isfinite(calls["magnitude"].grad_out_norm) and math.isnan(calls["magnitude"].grad_in_norm)  # type: ignore[arg-type]


@pytest.mark.parametrize("op", ["sqrt", "pow"])
def test_backward_nan_of_a_branch_torch_where_hides(op: str) -> None:
    """The torch.where trap: the forward's NaN (sqrt/pow of negatives) is selected away, the backward's is not.
    The node's saved forward values are counted against plain PyTorch, and the verdict names the trap, not a
    derivative at 0 (there is no zero)."""
    model, report, gh = run(lambda: grad_models.where_sqrt_nan(op))
    assert gh.forward_origin is None
    node = gh.backward_nodes[0]
    assert node.kind == ("SqrtBackward0" if op == "sqrt" else "PowBackward0")
    assert gh.calls[node.call].module == "root"  # type: ignore[index]
    with torch.no_grad():  # plain PyTorch: the root's input and the branch the where discards
        h = model.fc1(model.example_input_array)
    root = h.sqrt() if op == "sqrt" else h.pow(0.5)
    assert node.saved_zeros == int((h == 0).sum()) == 0
    if op == "sqrt":  # SqrtBackward0 saves the result: NaN at every negative input
        assert node.saved_nonfinite == int((~torch.isfinite(root)).sum()) == int((h < 0).sum()) > 0
    else:  # PowBackward0 saves its input
        assert node.saved_nonfinite == 0 and node.saved_negatives == int((h < 0).sum()) > 0
    ref = Reference(model)
    assert math.isnan(ref.params["fc1.weight"].sum()) and node.nonfinite_out == int((h < 0).sum())
    finding = next(f for f in report.findings if f.code == "nonfinite-backward")
    assert finding.subject == "root" and "torch.where" in finding.message
    assert "NaN-gradient trap" in finding.hint and "at 0" not in finding.hint


def test_backward_nan_at_zero_keeps_the_zero_hint() -> None:
    _, report, gh = run(grad_models.backward_sqrt_nan)
    node = gh.backward_nodes[0]
    assert node.saved_nonfinite == 0 and node.saved_zeros == node.nonfinite_out  # one NaN per masked zero
    finding = next(f for f in report.findings if f.code == "nonfinite-backward")
    assert "infinite derivative at 0" in finding.hint and "torch.where" not in finding.message


def test_fp16_underflow_counts_and_verdict() -> None:
    model, report, gh = run(grad_models.fp16_underflow)
    ref = Reference(model)
    for c in gh.calls:
        grads = ref.grads.get((c.module, c.call))
        if not grads or grads[0].dtype != torch.float16:
            continue
        g = grads[0]
        assert c.grad_out_dtype == "float16"
        assert c.grad_out_zeros == int((g == 0).sum())
        assert c.grad_out_subnormal == int(((g != 0) & (g.abs() < FLOAT16_TINY)).sum())
    finding = next(f for f in report.findings if f.code == "fp16-underflow")
    assert finding.subject == "layers.0" and "GradScaler" in finding.hint
    first = next(c for c in gh.calls if c.module == "layers.0")
    assert first.grad_out_subnormal and first.grad_out_subnormal / first.grad_out_numel >= 0.01


class Fp16ReluUnderflow(nn.Module):
    """Fp16Underflow with ReLU between the layers: ReLU zeros half the gradient by design, underflow adds more."""

    def __init__(self, autocast: bool = True) -> None:
        super().__init__()
        self.autocast = autocast
        self.layers = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        self.example_input_array = torch.randn(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=self.autocast):
            return self.layers(x) * 1e-6


def test_fp16_underflow_does_not_count_relu_zeros_as_flushed() -> None:
    """The exact zeros that rise toward the input were all put down to float16 flushing, but ReLU masks make most
    of them: plain PyTorch in float32 (nothing can flush) has them too."""
    model, report, _ = run(Fp16ReluUnderflow)
    torch.manual_seed(0)
    plain = Fp16ReluUnderflow(autocast=False)
    plain.load_state_dict(model.state_dict())
    ref32 = Reference(plain)
    first = ref32.grads[("layers.0", 0)][0]
    assert first.dtype == torch.float32 and float((first == 0).float().mean()) > 0.3  # ReLU's zeros, by design
    finding = next(f for f in report.findings if f.code == "fp16-underflow")
    assert "exact zeros rise" in finding.message
    assert "also those a ReLU or a mask makes by design" in finding.message, finding.message


def test_vanishing_sigmoid_mlp_against_hooks() -> None:
    model, report, gh = run(grad_models.deep_sigmoid)
    ref = Reference(model)
    rms = {k: ref.norm(k) / math.sqrt(sum(g.numel() for g in ref.grads[k])) for k in ref.grads}  # type: ignore[operator]
    profile = scale_profile(gh)
    assert profile is not None and [gh.calls[i].module for i in profile.blocks] == [str(i) for i in range(40)]
    expected = rms[("0", 0)] / rms[("39", 0)]
    assert close(profile.ratio, expected, rel=1e-4)
    gains = {str(i): rms[(str(i - 1), 0)] / rms[(str(i), 0)] for i in range(1, 40)}
    worst = min(gains, key=gains.__getitem__)
    assert gh.calls[profile.worst].module == worst
    finding = next(f for f in report.findings if f.code == "grad-vanishing")
    assert finding.subject == worst and "sigmoid" in finding.hint
    # a factor above the measured fall: no verdict
    _, quiet_report, _ = run(grad_models.deep_sigmoid, grads=GradThresholds(factor=1 / expected * 10))
    assert not any(f.code == "grad-vanishing" for f in quiet_report.findings)


def test_pooling_is_not_vanishing() -> None:
    """Global average pooling over 32x32 divides the gradient per element by 1024 (it spreads over 1024 positions,
    and conv weight gradients sum it back): that step is left out of the ratio, the rest is measured as before."""
    model, report, gh = run(grad_models.pooled_conv_net)
    ref = Reference(model)
    rms = {k: ref.norm(k) / math.sqrt(sum(g.numel() for g in ref.grads[k])) for k in ref.grads}  # type: ignore[operator]
    raw = rms[("conv1", 0)] / rms[("fc", 0)]
    pool_gain = rms[("conv2", 0)] / rms[("pool", 0)]
    assert raw < 1e-3 and pool_gain == pytest.approx(1 / 1024, rel=1e-4)  # the old ratio: a vanishing verdict
    profile = scale_profile(gh)
    assert profile is not None and [gh.calls[i].module for i, _ in profile.spreading] == ["pool"]
    assert close(profile.ratio, raw / pool_gain, rel=1e-4) and profile.ratio > 1e-3
    assert not any(f.code in ("grad-vanishing", "grad-exploding") for f in report.findings)
    # a real fall around the pooling is still told, and the pooling's share is named as left out
    _, strict, _ = run(grad_models.pooled_conv_net, grads=GradThresholds(factor=0.5 / profile.ratio))
    finding = next(f for f in strict.findings if f.code == "grad-vanishing")
    assert "not counting the 1.02e+03x of 'pool' (AdaptiveAvgPool2d)" in finding.message and finding.subject != "pool"


def test_exploding_linear_stack() -> None:
    _, report, gh = run(grad_models.deep_linear_exploding)
    profile = scale_profile(gh)
    assert profile is not None and profile.ratio > 1e3
    assert any(f.code == "grad-exploding" for f in report.findings)


def test_dead_units_against_plain() -> None:
    model, report, gh = run(grad_models.dead_relu)
    ref = Reference(model)
    relu = next(c for c in gh.calls if c.module == "1")
    out = ref.outputs[("1", 0)][0]
    alive = out.amax(dim=0) > 0
    assert relu.dead is not None and relu.dead.dead == int((~alive).sum()) == 8 and relu.dead.units == 32
    assert relu.dead.samples == 64
    grads = {g.name: g for g in gh.parameters}
    assert grads["0.weight"].zero_rows == int((ref.params["0.weight"] == 0).all(dim=1).sum()) == 8
    assert grads["0.bias"].zero_rows == int((ref.params["0.bias"] == 0).sum()) == 8
    assert grads["2.weight"].zero_cols == int((ref.params["2.weight"] == 0).all(dim=0).sum()) == 8
    finding = next(f for f in report.findings if f.code == "dead-units")
    assert finding.subject == "1" and finding.severity == "warning"
    assert zero_grad_cause(report.facts, "0.weight") == "dead units"


def test_zero_initialised_adapter_is_not_dead_units() -> None:
    model, report, gh = run(grad_models.lora_adapter)
    ref = Reference(model)
    plain = ref.params["0.lora_A"]
    assert plain is not None and int((plain == 0).sum()) == plain.numel()
    grads = {g.name: g for g in gh.parameters}
    assert grads["0.lora_A"].zeros == plain.numel() and grads["0.lora_B"].weight_norm == 0.0
    assert zero_grad_cause(report.facts, "0.lora_A") == "zero partner"
    assert not any(f.code == "dead-units" for f in report.findings)


def test_without_grads_nothing_changes() -> None:
    """No --grads: no facts, no JSON key; with it, memory and graph facts stay the model's own."""
    torch.manual_seed(0)
    model = zoo.tiny_gpt()
    plain = probe(model)
    grads = probe(model, grads=True)
    assert plain.facts.grad_health is None and "grad_health" not in inspect_json(plain)
    assert "grad_health" in inspect_json(grads)
    a, b = plain.facts, grads.facts
    assert a.memory is not None and b.memory is not None
    assert (a.memory.forward_peak_bytes, a.memory.backward_peak_bytes, a.memory.saved_for_backward_bytes) == \
        (b.memory.forward_peak_bytes, b.memory.backward_peak_bytes, b.memory.saved_for_backward_bytes)
    assert a.graph is not None and b.graph is not None and a.graph.nodes == b.graph.nodes
    assert [(p.name, p.grad, p.grad_norm) for p in a.parameters] == [(p.name, p.grad, p.grad_norm)
                                                                       for p in b.parameters]
    # the tracker's own reads of module outputs (a detach, a sum under no_grad) are no cut in the user's forward
    assert a.graph_cuts == b.graph_cuts == ()
    assert a.parameters == b.parameters


def test_model_left_as_found_after_a_replay() -> None:
    """The NaN origin is found by running one call again: BatchNorm statistics, RNG and gradients stay put."""

    class BNLog(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(8)
            self.log_out = grad_models.ShiftedLog(10.0)
            self.example_input_array = torch.randn(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.log_out(self.bn(x))

    torch.manual_seed(0)
    model = BNLog()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    report = probe(model, grads=True)
    gh = report.facts.grad_health
    assert gh is not None and gh.forward_origin is not None and gh.forward_origin.op == "aten.log.default"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_meta_device_is_not_measured() -> None:
    with torch.device("meta"):
        model = grad_models.dead_relu()
    report = probe(model, grads=True)
    gh = report.facts.grad_health
    assert gh is not None and not gh.measured and gh.parameters == ()
    assert not any(f.code in ("dead-units", "grad-vanishing") for f in report.findings)


def test_quiet_sets_torch_function_modes_aside() -> None:
    """The tracker's own ops reach no torch-function mode (the graph-cut tracker's), the modes come back in
    order, grad mode is restored, and a tensor subclass's own ``__torch_function__`` still runs."""
    from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

    from gradprobe.run.trackers.grad_stats import quiet

    seen: list[str] = []

    class Seen(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    class Sub(torch.Tensor):
        pass

    x = torch.randn(4, requires_grad=True)
    with Seen() as outer, Seen() as inner:
        with quiet():
            copy = x.detach().as_subclass(Sub).clone()
            assert not torch.is_grad_enabled() and float(x.sum()) == float(x.detach().sum())
        assert seen == [] and type(copy) is Sub and torch.is_grad_enabled()
        assert _get_current_function_mode_stack() == [outer, inner]
        x.sum()
    assert seen == ["sum", "sum"]


class _CheckpointedSqrt(nn.Module):
    """A watched node (sqrt) inside a non-reentrant checkpoint: its saved values are the checkpoint's to unpack."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        return (self.inner(x) ** 2 + 1).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.utils.checkpoint.checkpoint(self._block, x, use_reentrant=False))


def test_grads_leave_a_checkpointed_regions_memory_as_it_is() -> None:
    """Reading a watched node's saved values at the graph walk unpacked the checkpoint's tensors early (a recompute
    before backward): the backward peak rose from 748 B to 1.2 KiB under --grads. The saved-tensor hook count
    below is plain PyTorch's: the same bytes are saved either way."""
    torch.manual_seed(0)
    model, x = _CheckpointedSqrt(), torch.randn(4, 8)
    plain = probe(model, x).facts.memory
    grads = probe(model, x, grads=True).facts.memory
    assert plain is not None and grads is not None
    assert (grads.forward_peak_bytes, grads.backward_peak_bytes, grads.saved_for_backward_bytes) == (
        plain.forward_peak_bytes, plain.backward_peak_bytes, plain.saved_for_backward_bytes)
    for p, q in zip(model.parameters(), [p.detach().clone() for p in model.parameters()], strict=True):
        assert p.grad is None and torch.equal(p, q)  # left as found
