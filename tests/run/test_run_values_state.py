"""The shared value rules (dense views, "did it change"), the state snapshot's helpers, and the tracker protocol."""

from __future__ import annotations

import pytest
import torch
from fixtures.model_state import assert_same_state, snapshot
from torch import nn

from gradprobe.run.builders import buffer_facts
from gradprobe.run.state import ModelState, apply_training, set_training, training_flags
from gradprobe.run.trackers.base import Tracker, first_names
from gradprobe.run.trackers.setup import make_trackers
from gradprobe.run.trackers.writes import ParamWriteGuard
from gradprobe.run.values import dense_view, stored_values, tensor_changed

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("before", "after", "changed"), [
    ([1.0, NAN], [1.0, NAN], False),  # NaN equals NaN
    ([1.0, NAN], [1.0, 2.0], True),
    ([INF, 1.0], [torch.finfo(torch.float32).max, 1.0], True),  # inf is not the largest finite value
    ([INF, -INF], [INF, -INF], False),
    ([0.0], [-0.0], False),  # torch.equal: -0.0 == 0.0
    ([1, 2], [1, 3], True),
])
def test_tensor_changed_against_elementwise_python(before: list, after: list, changed: bool) -> None:
    a, b = torch.tensor(before), torch.tensor(after)
    assert tensor_changed(a, b) is changed
    expected = any(not (x == y or (x != x and y != y)) for x, y in zip(before, after, strict=True))
    assert changed is expected


def test_tensor_changed_shapes_dtypes_layouts_and_meta() -> None:
    a = torch.zeros(2, 3)
    assert tensor_changed(a, torch.zeros(3, 2)) is True
    assert tensor_changed(a, a.double()) is True
    assert tensor_changed(a.to_sparse(), torch.zeros(2, 3).to_sparse()) is False
    b = torch.zeros(2, 3)
    b[1, 2] = 1
    assert tensor_changed(a.to_sparse(), b.to_sparse()) is True
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    assert tensor_changed(nested, torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])) is False
    assert tensor_changed(nested, torch.nested.nested_tensor([torch.ones(2), torch.zeros(3)])) is True
    assert tensor_changed(torch.zeros(2, device="meta"), torch.zeros(2, device="meta")) is None
    complex_nan = torch.tensor([complex(NAN, 1.0)])
    assert tensor_changed(complex_nan, torch.tensor([complex(NAN, 1.0)])) is False
    assert tensor_changed(complex_nan, torch.tensor([complex(NAN, 2.0)])) is True


def test_dense_view_and_stored_values() -> None:
    dense = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    sparse = dense.to_sparse()
    assert torch.equal(dense_view(sparse), dense)
    assert torch.equal(stored_values(sparse).sort().values, torch.tensor([2.0, 3.0]))
    doubled = torch.sparse_coo_tensor([[0, 0]], [1.0, 2.0], (2,))  # uncoalesced: one element stored twice
    assert torch.equal(stored_values(doubled), torch.tensor([3.0]))
    nested = torch.nested.nested_tensor([torch.ones(2), torch.zeros(3)])
    assert torch.equal(dense_view(nested), torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    assert dense_view(dense) is dense and stored_values(dense) is dense


class Frozen(nn.Module):
    """train() keeps the backbone in eval, as fine-tuning code often does."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        self.head = nn.Dropout(0.1)

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.backbone.eval()
        return self


def test_training_flags_ask_the_model_and_apply_to_scripted_modules() -> None:
    model = Frozen()
    state = ModelState.capture(model)
    flags = training_flags(model, "train")
    assert [f for _, f in flags] == [True, False, False, False, True]
    model.eval()
    apply_training(flags)
    assert [m.training for m in model.modules()] == [True, False, False, False, True]
    state.restore()
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    bn = scripted._modules["1"]
    set_training(bn, False)
    assert bn.training is False and bn._c.getattr("training") is False and "training" not in bn.__dict__


def test_restore_removes_a_shadow_over_a_scripted_flag() -> None:
    """object.__setattr__ on a scripted module hides the flag its compiled code reads: restore undoes that."""
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    before = snapshot(scripted)
    state = ModelState.capture(scripted)
    bn = scripted._modules["1"]
    object.__setattr__(bn, "training", False)  # what a fast flag setter does to a plain module
    bn._c.setattr("training", False)
    state.restore()
    assert_same_state(before, snapshot(scripted))
    assert bn.training is True and bn._c.getattr("training") is True


def test_reset_values_copies_back_only_what_moved() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    state = ModelState.capture(model, param_values=True)
    before = snapshot(model)
    with torch.no_grad():
        model[0].weight.add_(1)
    model.train()
    model(torch.randn(4, 2))  # BatchNorm statistics move
    model[1].running_mean = torch.ones(2)  # and a reassignment
    state.reset_values()
    after = snapshot(model)
    assert after["param_values"].keys() == before["param_values"].keys()
    for name, value in before["param_values"].items():
        assert torch.equal(after["param_values"][name], value)
    for name, value in before["buffer_values"].items():
        assert torch.equal(after["buffer_values"][name], value), name
    assert after["buffer_ids"] == before["buffer_ids"]


def test_restore_copies_plain_and_inference_buffers_back() -> None:
    """The buffers and parameter values go back in one batched copy: every value as captured."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].register_buffer("count", torch.tensor(5, dtype=torch.int64))
    before = {k: v.clone() for k, v in model.named_buffers()}
    state = ModelState.capture(model, param_values=True)
    with torch.no_grad():
        model[0].weight.mul_(3)
    model.train()
    model(torch.randn(4, 2))  # running statistics and num_batches_tracked move
    model[0].count.add_(2)
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])
    state.restore()
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
    assert torch.equal(model[0].weight, state.param_values[0][1])


def test_every_tracker_implements_the_protocol() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    guard = ParamWriteGuard(model.parameters())
    for device in ("cpu", "meta"):
        trackers = make_trackers(model, torch.device(device), memory=True, tensors=True, grad=True, guard=guard,
                                 names={id(p): n for n, p in model.named_parameters()},
                                 state_tensors=list(model.parameters()), input_tensors=[],
                                 named=list(model.named_modules(remove_duplicate=False)))
        assert len(trackers.ordered) == (7 if device == "meta" else 6)
        for tracker in trackers.ordered:
            assert isinstance(tracker, Tracker), type(tracker).__name__
            assert set(tracker.phases) <= {"forward", "backward"}


def test_first_names_is_named_modules_from_one_walk_with_repeats() -> None:
    """A module registered twice (and its subtree) appears once, under its first name, as named_modules() gives."""
    shared = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    inner = nn.Sequential(shared, nn.Linear(2, 2))
    model = nn.Sequential(inner, shared, nn.Sequential(shared, inner), nn.Tanh())
    walk = list(model.named_modules(remove_duplicate=False))
    assert len(walk) > len(list(model.named_modules()))  # the walk holds repeats
    assert first_names(walk) == list(model.named_modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_buffer_facts_batched_change_check_matches_elementwise_python(dtype: torch.dtype) -> None:
    """The batched comparison of buffer values gives, buffer by buffer, what an element-wise Python rule gives
    (NaN equals NaN, -0.0 equals 0.0, a difference too small to square still counts)."""
    pairs = [([1.0, NAN], [1.0, NAN]), ([1.0, NAN], [1.0, 2.0]), ([INF, 1.0], [INF, 1.0]), ([INF, -INF], [-INF, INF]),
             ([0.0, 1.0], [-0.0, 1.0]), ([1e-300, 0.0], [0.0, 0.0]), ([2.0, 3.0], [2.0, 3.5]), ([5.0], [5.0])]
    mod = nn.Module()
    for i, (before, _) in enumerate(pairs):
        mod.register_buffer(f"b{i}", torch.tensor(before, dtype=dtype))
    mod.register_buffer("count", torch.tensor(3))  # not batched: compared on its own
    state = ModelState.capture(mod)
    with torch.no_grad():
        for i, (_, after) in enumerate(pairs):
            getattr(mod, f"b{i}").copy_(torch.tensor(after, dtype=dtype))
        mod.count.add_(1)
    facts = {b.name: b.changed for b in buffer_facts(state, {})}
    for i, (before, after) in enumerate(pairs):
        stored = [float(v) for v in torch.tensor(before, dtype=dtype)]  # 1e-300 is 0 in float32
        now = [float(v) for v in torch.tensor(after, dtype=dtype)]
        expected = any(not (x == y or (x != x and y != y)) for x, y in zip(stored, now, strict=True))
        assert facts[f"b{i}"] is expected, (i, before, after)
    assert facts["count"] is True
