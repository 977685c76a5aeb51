"""Models in the shapes real code hands over: compiled, wrapped, scripted, hooked, checkpointed, half precision,
with odd buffers and odd outputs.  Each answer is checked against plain PyTorch computed here.
"""

from __future__ import annotations

import copy
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.utils.checkpoint as checkpoint
from torch import nn

from gradprobe import probe

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:.*(CSR|nested tensors).*:UserWarning"),
]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def reference_grads(model: nn.Module, *args: Any, loss: Callable[[Any], torch.Tensor] | None = None
                    ) -> dict[str, tuple[str, float | None]]:
    """(state, norm) per parameter name after forward + sum loss + backward on a deep copy."""
    twin = copy.deepcopy(model).train()
    for p in twin.parameters():
        p.grad = None
    out = twin(*args)
    (loss(out) if loss else out.float().sum()).backward()
    result: dict[str, tuple[str, float | None]] = {}
    for name, p in twin.named_parameters():
        g = p.grad
        if g is None:
            result[name] = ("none", None)
            continue
        if g.is_sparse:
            g = g.coalesce().values()
        result[name] = ("zero", 0.0) if bool((g == 0).all()) else ("nonzero", float(g.float().norm()))
    return result


def assert_grads_match(report: Any, expected: dict[str, tuple[str, float | None]]) -> None:
    got = {p.name: (p.grad, p.grad_norm) for p in report.facts.parameters}
    assert got.keys() == expected.keys()
    for name, (state, norm) in expected.items():
        assert got[name][0] == state, name
        if norm:
            assert got[name][1] == pytest.approx(norm, rel=1e-3), name


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["training"] == b["training"] and a["requires_grad"] == b["requires_grad"]
    assert all(x is y for x, y in zip(a["grads"], b["grads"], strict=True))
    for k, v in a["state"].items():
        assert torch.equal(v, b["state"][k]), k


X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------- compile and wrappers


@pytest.mark.slow
def test_torch_compile_inspects_the_original_module_and_says_so() -> None:
    inner = MLP()
    compiled = torch.compile(inner)
    report = probe(compiled, X)
    assert any("torch.compile" in n and "original module MLP" in n for n in report.facts.notes)
    assert_grads_match(report, reference_grads(inner, X))
    # the original module ran: its submodules were seen by the hooks (a compiled graph runs none)
    assert {t.module for t in report.facts.tensors} >= {"fc1", "fc2"}


@pytest.mark.slow
def test_torch_compile_note_in_cli_json_and_table(tmp_path: Path, cli: Callable[..., Any]) -> None:
    (tmp_path / "compiled_model.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(4, 8)
                self.fc2 = nn.Linear(8, 2)
                self.example_input_array = torch.randn(3, 4)

            def forward(self, x):
                return self.fc2(torch.tanh(self.fc1(x)))

        model = torch.compile(MLP())
        """))
    result = cli("inspect", f"{tmp_path}/compiled_model.py:model", "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert any("torch.compile" in n for n in doc["notes"])
    assert [p["name"] for p in doc["parameters"]] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    table = cli("inspect", f"{tmp_path}/compiled_model.py:model")
    assert table.code == 0 and "torch.compile" in " ".join(table.out.split())


class DDPStyle(nn.Module):
    """What DistributedDataParallel looks like to gradprobe: one child called ``module``, nothing of its own."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        return self.module(*args)


@pytest.mark.parametrize("wrap", [nn.DataParallel, DDPStyle], ids=["DataParallel", "DDP-style"])
def test_wrappers_exposing_module_are_seen_through(wrap: Callable[[nn.Module], nn.Module]) -> None:
    inner = MLP()
    wrapped = wrap(inner)
    report = probe(wrapped, X)
    assert any("wrapper" in n and type(wrapped).__name__ in n for n in report.facts.notes)
    assert [p.name for p in report.facts.parameters] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert_grads_match(report, reference_grads(inner, X))


def test_a_model_with_a_child_named_module_and_a_head_is_not_unwrapped() -> None:
    """Only a pure wrapper is seen through: a real model that happens to call a child ``module`` keeps it."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = MLP()
            self.head = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.module(x))

    model = Model()
    report = probe(model, X)
    assert not report.facts.notes
    assert {p.name for p in report.facts.parameters} == {n for n, _ in model.named_parameters()}
    assert_grads_match(report, reference_grads(model, X))


# ---------------------------------------------------------------------------------------- TorchScript


class WithBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_parameters_and_outputs_are_visible_submodule_calls_are_not(kind: str) -> None:
    torch.manual_seed(0)
    eager = WithBN()
    scripted = torch.jit.script(eager) if kind == "script" else torch.jit.trace(copy.deepcopy(eager), X)
    before = snapshot(scripted)
    report = probe(scripted, X)
    assert_same(before, snapshot(scripted))
    facts = report.facts
    note = " ".join(facts.notes)
    assert "TorchScript" in note and "submodule calls are not" in note
    # visible: every parameter with its gradient, the outputs with their grad_fn, the buffers, the graph
    assert_grads_match(report, reference_grads(eager, X))
    assert facts.outputs[0].requires_grad and facts.outputs[0].grad_fn is not None
    assert facts.graph is not None and facts.graph.nodes > 0
    assert {b.name for b in facts.buffers if b.changed} == {"bn.running_mean", "bn.running_var",
                                                           "bn.num_batches_tracked"}
    # not visible: calls of submodules (scripted code runs no Python hooks); only the model's own call
    assert {t.module for t in facts.tensors} == {""}
    assert all(m.calls == 0 for m in facts.modules if m.name)


# --------------------------------------------------------------------------------- the user's own hooks


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)
        self.fired: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def add_hooks(model: Hooked) -> list[Any]:
    fired = model.fired

    def count(name: str) -> None:
        fired[name] = fired.get(name, 0) + 1

    def pre(mod: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        count("forward_pre")
        return (args[0] * 2,)  # changes the input: the probe must see the changed input

    def post(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        count("forward")
        return out + 1

    def backward_hook(mod: nn.Module, grad_in: Any, grad_out: Any) -> None:
        count("full_backward")

    def zero_bias_grad(grad: torch.Tensor) -> torch.Tensor:
        count("tensor")
        return torch.zeros_like(grad)  # a gradient hook that kills fc1.bias's gradient

    def post_accumulate(p: torch.Tensor) -> None:
        count("post_accumulate")

    return [
        model.fc1.register_forward_pre_hook(pre),
        model.fc2.register_forward_hook(post),
        model.fc2.register_full_backward_hook(backward_hook),
        model.fc1.bias.register_hook(zero_bias_grad),
        model.fc2.weight.register_post_accumulate_grad_hook(post_accumulate),
    ]


def hooked() -> Hooked:
    torch.manual_seed(0)
    model = Hooked()
    add_hooks(model)
    return model


def test_user_hooks_fire_undisturbed_and_stay_registered() -> None:
    twin = hooked()  # deepcopy would drop the tensor hooks: the reference gets a twin built the same way
    twin_loss = float(twin(X).sum().detach())
    twin.zero_grad(set_to_none=True)
    twin(X).sum().backward()
    expected = {n: ("zero", 0.0) if bool((p.grad == 0).all()) else ("nonzero", float(p.grad.norm()))
                for n, p in twin.named_parameters()}
    assert expected["fc1.bias"] == ("zero", 0.0)  # the hook really zeroes it in plain PyTorch
    model = hooked()

    model.fired.clear()
    report = probe(model, X)
    assert model.fired == {"forward_pre": 1, "forward": 1, "full_backward": 1, "tensor": 1, "post_accumulate": 1}
    assert_grads_match(report, expected)
    assert report.facts.loss == pytest.approx(twin_loss, rel=1e-6)
    assert "grad-zero" in {f.code for f in report.findings}
    # still registered afterwards, and gradprobe's own global hooks are gone
    model.fired.clear()
    model(X).sum().backward()
    assert model.fired == {"forward_pre": 1, "forward": 1, "full_backward": 1, "tensor": 1, "post_accumulate": 1}
    assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks


# -------------------------------------------------------------------------------- gradient checkpointing


class Checkpointed(nn.Module):
    def __init__(self, use: bool, reentrant: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 32)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())
                                     for _ in range(3)])
        self.out = nn.Linear(32, 2)
        self.use, self.reentrant = use, reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = checkpoint.checkpoint(block, h, use_reentrant=self.reentrant) if self.use else block(h)
        return self.out(h)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing(reentrant: bool) -> None:
    torch.manual_seed(0)
    plain = Checkpointed(use=False)
    ckpt = copy.deepcopy(plain)
    ckpt.use, ckpt.reentrant = True, reentrant
    x = torch.randn(16, 4)
    expected = reference_grads(plain, x)
    report = probe(ckpt, x)
    assert_grads_match(report, expected)
    plain_report = probe(plain, x)
    assert report.facts.loss == pytest.approx(plain_report.facts.loss, rel=1e-6)
    # checkpointing keeps fewer activations for backward than the same model without it
    assert report.facts.memory.saved_for_backward_bytes < plain_report.facts.memory.saved_for_backward_bytes


# ----------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_models(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MLP().to(dtype)
    x = X.to(dtype)
    before = snapshot(model)
    report = probe(model, x)
    assert_same(before, snapshot(model))
    name = str(dtype).removeprefix("torch.")
    assert {p.dtype for p in report.facts.parameters} == {name}
    assert report.facts.outputs[0].dtype == name
    assert report.facts.memory.parameter_bytes == 2 * sum(p.numel() for p in model.parameters())
    assert_grads_match(report, reference_grads(model, x))


# -------------------------------------------------------------------------------------- odd buffers


class OddBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("phase", torch.tensor([1 + 1j, 2 - 1j], dtype=torch.complex64))
        self.register_buffer("steps", torch.tensor(41, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False]))
        self.register_buffer("fixed", torch.arange(3, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        self.phase.mul_(1j)
        self.mask.logical_not_()
        return self.fc(x) * self.phase.real


def test_complex_integer_and_bool_buffers_are_tracked_and_restored() -> None:
    model = OddBuffers()
    before = {k: v.clone() for k, v in model.named_buffers()}
    report = probe(model, X)
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k
    buffers = {b.name: b for b in report.facts.buffers}
    assert {k: b.changed for k, b in buffers.items()} == {"phase": True, "steps": True, "mask": True, "fixed": False}
    assert {k: b.dtype for k, b in buffers.items()} == {"phase": "complex64", "steps": "int64", "mask": "bool",
                                                        "fixed": "int32"}
    assert_grads_match(report, reference_grads(model, X))


# ------------------------------------------------------------------------------------------ odd outputs


class Pair(NamedTuple):
    main: torch.Tensor
    aux: Any


class OddOutputs(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> Any:
        y = self.fc(x)
        if self.kind == "coo":
            return y.to_sparse()
        if self.kind == "csr":
            return y.to_sparse_csr()
        if self.kind == "nested":
            return torch.nested.as_nested_tensor([y[:1], y[1:]])
        if self.kind == "jagged":
            return torch.nested.as_nested_tensor([y[:1], y[1:]], layout=torch.jagged)
        if self.kind == "complex":
            return torch.complex(y, 2 * y)
        if self.kind == "structure":
            return {"a": [y, Pair(2 * y, {"b": y.detach(), "n": None})], "s": "text", "i": y.argmax(-1)}
        raise AssertionError(self.kind)


def plain_loss(kind: str) -> Callable[[Any], torch.Tensor]:
    """The sum of every floating-point element, as gradprobe's default loss defines it, in plain PyTorch."""
    if kind in ("coo", "csr"):
        return lambda out: out.to_dense().sum()
    if kind in ("nested", "jagged"):
        return lambda out: sum(t.sum() for t in out.unbind())
    if kind == "complex":
        return lambda out: out.real.sum()
    return lambda out: out["a"][0].sum() + out["a"][1].main.sum() + out["a"][1].aux["b"].sum()


@pytest.mark.parametrize("kind", ["coo", "csr", "nested", "jagged", "complex", "structure"])
def test_sparse_nested_complex_and_structured_outputs(kind: str) -> None:
    torch.manual_seed(0)
    model = OddOutputs(kind)
    report = probe(model, X)
    facts = report.facts
    assert facts.backward
    twin = copy.deepcopy(model)
    expected_loss = float(plain_loss(kind)(twin(X)).detach())
    assert facts.loss == pytest.approx(expected_loss, rel=1e-5)
    assert_grads_match(report, reference_grads(model, X, loss=plain_loss(kind)))
    if kind == "structure":
        paths = {o.path: o for o in facts.outputs}
        assert list(paths) == ["output['a'][0]", "output['a'][1].main", "output['a'][1].aux['b']", "output['i']"]
        assert paths["output['a'][1].aux['b']"].grad_fn is None and paths["output['i']"].dtype == "int64"
    elif kind in ("nested", "jagged"):
        assert facts.outputs[0].shape == (2, -1, 2)  # the ragged dimension has no single size
    else:
        assert facts.outputs[0].shape == (3, 2)
    assert not facts.nonfinite_outputs
    json.dumps([o.shape for o in facts.outputs])  # shapes stay plain integers


def test_nonfinite_values_inside_a_sparse_output_are_found() -> None:
    class SparseNaN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.fc(x) * torch.tensor([float("nan"), 1.0])).to_sparse()

    report = probe(SparseNaN(), X)
    assert report.facts.nonfinite_outputs == ("output",)
    assert "nonfinite-output" in {f.code for f in report.findings}


def test_sparse_gradients() -> None:
    model = nn.Embedding(10, 3, sparse=True)
    ids = torch.tensor([1, 2, 2, 7])
    report = probe(model, ids)
    assert_grads_match(report, reference_grads(model, ids))


def test_lazy_modules_are_refused_until_materialized_and_left_untouched() -> None:
    from torch.nn.parameter import is_lazy

    from gradprobe import GradprobeError

    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2))
    with pytest.raises(GradprobeError, match=r"'0.weight' \(LazyLinear\) is an uninitialized lazy parameter"):
        probe(model, X)
    assert all(is_lazy(p) for p in model.parameters())  # not materialized behind the user's back
    model(X)  # the user's own first forward
    assert_grads_match(probe(model, X), reference_grads(model, X))


def test_users_global_module_hooks_keep_working() -> None:
    """gradprobe's own global hooks come and go; a user's global hooks fire for every call and stay."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    seen: list[str] = []
    pre = register_module_forward_pre_hook(lambda m, a: seen.append(f"pre {type(m).__name__}"))
    post = register_module_forward_hook(lambda m, a, o: seen.append(f"post {type(m).__name__}"))
    try:
        model = MLP()
        model(X)
        plain_calls, seen[:] = list(seen), []
        report = probe(model, X)
        assert seen == plain_calls == ["pre MLP", "pre Linear", "post Linear", "pre Linear", "post Linear", "post MLP"]
        assert {t.module for t in report.facts.tensors} == {"", "fc1", "fc2"}
        seen.clear()
        model(X)
        assert seen == plain_calls
    finally:
        pre.remove()
        post.remove()
