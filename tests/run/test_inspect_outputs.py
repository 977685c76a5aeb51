"""Output structures, module call records, tied parameters and the grad_fn graph (issue 2 §4-5)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.errors import RunError
from gradprobe.render.graph.tree import display_tree
from tests.fixtures import models as mi

# structure → expected (path, plain-PyTorch tensor picker) in output order
STRUCTURES = {
    "tuple": ["output[0]", "output[1]"],
    "list": ["output[0]", "output[1]"],
    "dict": ["output['logits']", "output['hidden']"],
    "nested": ["output['logits']", "output['extra'][0]", "output['extra'][1][0]"],
    "dataclass": ["output.logits", "output.hidden"],
    "namedtuple": ["output.logits", "output.hidden"],
    "hf": ["output.logits", "output.hidden"],
}


def _plain_tensors(model: mi.StructuredOut, x: torch.Tensor) -> list[torch.Tensor]:
    """The same tensors, picked out of the structure by hand."""
    out = model(x)
    kind = model.kind
    if kind in ("tuple", "list", "namedtuple"):
        return [out[0], out[1]]
    if kind == "dict":
        return [out["logits"], out["hidden"]]
    if kind == "nested":
        return [out["logits"], out["extra"][0], out["extra"][1][0]]
    return [out.logits, out.hidden]


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_output_structure(kind: str) -> None:
    if kind == "hf":
        pytest.importorskip("transformers")
    model = mi.StructuredOut(kind)
    x = model.example_input_array
    plain = _plain_tensors(model, x)
    report = probe(model, x)
    f = report.facts
    assert [o.path for o in f.outputs] == STRUCTURES[kind]
    for fact, tensor in zip(f.outputs, plain, strict=True):
        assert fact.shape == tuple(tensor.shape)
        assert fact.dtype == "float32"
        assert fact.requires_grad is tensor.requires_grad is True
        assert fact.grad_fn == type(tensor.grad_fn).__name__
        assert fact.is_leaf is False and fact.is_inference is False
        assert fact.module == "" and fact.call == 0
    # default loss: the sum over every floating-point output tensor
    assert f.loss == pytest.approx(float(sum(t.detach().sum() for t in plain)), rel=1e-5)
    assert f.backward
    assert all(p.grad == "nonzero" for p in f.parameters)


def test_hf_model_output_is_a_real_transformers_output() -> None:
    pytest.importorskip("transformers")
    from transformers.utils import ModelOutput

    model = mi.StructuredOut("hf")
    assert isinstance(model(model.example_input_array), ModelOutput)


def test_integer_outputs_are_reported_but_not_in_the_loss() -> None:
    model = mi.IntOutput()
    x = model.example_input_array
    f = probe(model, x).facts
    assert [(o.path, o.dtype, o.requires_grad, o.grad_fn) for o in f.outputs] == [
        ("output[0]", "float32", True, "AddmmBackward0"), ("output[1]", "int64", False, None)]
    with torch.no_grad():
        assert f.loss == pytest.approx(float(model.lin(x).sum()), rel=1e-6)


def test_forward_returning_no_tensor_is_an_error() -> None:
    with pytest.raises(RunError, match="returned None, not tensors"):
        probe(mi.ReturnsNone())


def test_module_called_twice_gets_calls_0_and_1() -> None:
    model = mi.CalledTwice()
    f = probe(model).facts
    records = [(t.module, t.call, t.path, t.grad_fn) for t in f.tensors]
    assert records == [
        ("block", 0, "output", "AddmmBackward0"),
        ("block", 1, "output", "AddmmBackward0"),
        ("head", 0, "output", "AddmmBackward0"),
        ("", 0, "output", "AddmmBackward0"),
    ]
    assert {m.name: m.calls for m in f.modules} == {"": 1, "block": 2, "head": 1}


def test_tensor_records_of_nested_modules() -> None:
    f = probe(mi.MLP()).facts
    assert [(t.module, t.shape, t.grad_fn, t.is_leaf) for t in f.tensors] == [
        ("net.0", (mi.B, mi.HIDDEN), "AddmmBackward0", False),
        ("net.1", (mi.B, mi.HIDDEN), "ReluBackward0", False),
        ("net.2", (mi.B, mi.OUT), "AddmmBackward0", False),
        ("net", (mi.B, mi.OUT), "AddmmBackward0", False),
        ("", (mi.B, mi.OUT), "AddmmBackward0", False),
    ]


def test_no_tensors_option_skips_module_records() -> None:
    f = probe(mi.MLP(), tensors=False).facts
    assert f.tensors == ()
    assert len(f.outputs) == 1
    assert any("--no-tensors" in s for s in f.skipped)


def test_tied_parameters_listed_once_with_aliases() -> None:
    model = mi.Tied()
    ids = model.example_input_array
    report = probe(model, ids)
    (param,) = report.facts.parameters
    assert param.name == "emb.weight" and param.aliases == ("lm_head.weight",)
    assert param.shape == (7, 4)
    # the gradient is the sum over both uses, as plain PyTorch computes it
    twin = mi.Tied()
    twin.load_state_dict(model.state_dict())
    twin(ids).sum().backward()
    assert param.grad == "nonzero"
    assert param.grad_norm == pytest.approx(float(twin.emb.weight.grad.norm()), rel=1e-5)
    assert report.facts.memory.parameter_bytes == 7 * 4 * 4  # counted once


def test_buffers_changed_by_forward() -> None:
    f = probe(mi.TrainableBN()).facts
    changed = {b.name: b.changed for b in f.buffers}
    assert changed == {"bn.running_mean": True, "bn.running_var": True, "bn.num_batches_tracked": True}
    assert {b.name: b.shape for b in f.buffers}["bn.running_mean"] == (mi.HIDDEN,)
    f = probe(mi.TrainableBN(), mode="eval").facts
    assert all(b.changed is False for b in f.buffers)


def _count_graph(root: torch.autograd.graph.Node) -> tuple[int, int]:
    """Distinct nodes and the longest path (in nodes), computed independently by memoised DFS."""
    seen: dict[int, torch.autograd.graph.Node] = {}
    order: list[torch.autograd.graph.Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        order.append(node)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    longest: dict[int, int] = {}

    def depth(node: torch.autograd.graph.Node) -> int:
        if id(node) not in longest:
            children = [c for c, _ in node.next_functions if c is not None]
            longest[id(node)] = 1 + max((depth(c) for c in children), default=0)
        return longest[id(node)]

    return len(order), depth(root)


@pytest.mark.parametrize("factory", [mi.MLP, mi.CalledTwice, mi.Tied, lambda: mi.StructuredOut("nested")])
def test_graph_nodes_and_depth_match_an_independent_walk(factory) -> None:
    model = factory()
    x = model.example_input_array
    report = probe(model, x)
    out = model(x)
    from gradprobe.run.flatten import flatten_tensors

    terms = [t.sum() for _, t in flatten_tensors(out) if t.is_floating_point()]
    loss = functools.reduce(lambda a, b: a + b, terms)  # the documented default loss: sum of every float output
    nodes, depth = _count_graph(loss.grad_fn)
    assert (report.facts.graph.nodes, report.facts.graph.depth) == (nodes, depth)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(report.facts.graph.reached_params) == trainable


def test_graph_tree_labels_parameters_and_respects_depth() -> None:
    model = mi.MLP()
    tree = display_tree(probe(model, depth=8).facts.graph)
    labels = []
    stack = [tree]
    while stack:
        node = stack.pop()
        labels.append(node.label)
        stack.extend(node.children)
    assert {label for label in labels if label.startswith("AccumulateGrad")} == {
        f"AccumulateGrad ({n})" for n, _ in model.named_parameters()}
    assert tree.label == "SumBackward0"
    shallow = display_tree(probe(model, depth=1).facts.graph)
    assert shallow.children == () and shallow.truncated == 1
    assert display_tree(probe(model, depth=0).facts.graph) is None


def test_empty_model_has_nothing_to_backward() -> None:
    report = probe(mi.Empty())
    assert report.facts.parameters == ()
    assert not report.facts.backward
    assert report.facts.outputs[0].requires_grad is False


def test_frozen_and_trainable_parameter_facts() -> None:
    torch.manual_seed(0)  # 5 hidden units: some global RNG states leave every ReLU dead (a true 'zero' gradient)
    model = mi.FrozenBackbone(fixed=True)
    f = probe(model).facts
    by_name = {p.name: p for p in f.parameters}
    for name, param in model.named_parameters():
        fact = by_name[name]
        assert fact.requires_grad is param.requires_grad
        assert fact.shape == tuple(param.shape) and fact.dtype == "float32"
        assert fact.grad == ("nonzero" if param.requires_grad else "none")
    # fixed=True keeps the backbone in eval mode inside train()
    assert by_name["backbone.1.weight"].module_training is False
    assert by_name["head.weight"].module_training is True


def test_module_training_flags_follow_the_users_train_override() -> None:
    f = probe(mi.FrozenBackbone(fixed=True)).facts
    training = {m.name: m.training for m in f.modules}
    assert training[""] is True and training["head"] is True
    assert training["backbone"] is False and training["backbone.1"] is False


def test_parameter_dtypes_reported() -> None:
    model = mi.MLP().double()
    f = probe(model, torch.randn(2, mi.IN, dtype=torch.float64)).facts
    assert {p.dtype for p in f.parameters} == {"float64"}
    assert f.outputs[0].dtype == "float64"
    assert f.memory.parameter_bytes == sum(p.numel() for p in model.parameters()) * 8


def test_gradient_states_none_zero_nonzero() -> None:
    model = nn.ModuleDict({"used": nn.Linear(2, 2), "zero": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m["used"](x) + 0.0 * self.m["zero"](x)

    f = probe(Wrap(), torch.randn(3, 2)).facts
    states = {p.name: (p.grad, p.grad_norm) for p in f.parameters}
    assert states["m.unused.weight"] == ("none", None)
    assert states["m.zero.weight"] == ("zero", 0.0)
    assert states["m.used.weight"][0] == "nonzero" and states["m.used.weight"][1] > 0
