"""Where the memory goes: per-module attribution and activation-checkpointing advice (issue 5 §2).

The advice is checked the only way that counts: the suggested module is wrapped in
``torch.utils.checkpoint`` for real, the model is measured again, and the drop in saved-for-backward
bytes must match the estimate within 10%.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradprobe.api import probe
from gradprobe.facts.run import RunFacts
from gradprobe.judges.checkpoint import checkpoint_advice
from tests.fixtures import zoo

FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "tiny_gpt": zoo.tiny_gpt,
    "tiny_llama": zoo.tiny_llama,
    "resnet_small": zoo.resnet_small,
    "mlp": lambda: zoo.mlp(in_features=32, hidden=64, out_features=4, depth=4, batch=16),
}
SLOW = {"tiny_gpt", "resnet_small"}  # seconds each on 2 cores: left to the full run


def _facts(model: nn.Module) -> RunFacts:
    return probe(model).facts


def _saved(model: nn.Module) -> int:
    memory = _facts(model).memory
    assert memory is not None and memory.saved_for_backward_bytes is not None
    return memory.saved_for_backward_bytes


def _wrap(model: nn.Module, name: str) -> None:
    """What a user does with the advice: run that submodule through torch.utils.checkpoint."""
    module = model.get_submodule(name)
    forward = module.forward
    module.forward = lambda *args: checkpoint(forward, *args, use_reentrant=False)  # type: ignore[method-assign]


def _fresh(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FACTORIES[name]()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FACTORIES])
def test_checkpointing_the_suggested_module_saves_what_was_estimated(name: str) -> None:
    facts = _facts(_fresh(name))
    candidates, plan = checkpoint_advice(facts)
    assert candidates and plan is not None
    before = facts.memory.saved_for_backward_bytes
    for candidate in candidates[:2]:
        model = _fresh(name)
        _wrap(model, candidate.module)
        measured = before - _saved(model)
        assert measured > 0
        assert abs(measured - candidate.expected_saving_bytes) <= 0.10 * measured, (candidate, measured)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in ["tiny_gpt", "tiny_llama", "resnet_small"]])
def test_checkpointing_every_block_of_the_plan(name: str) -> None:
    """The plan's figure (sum of single-call savings) against wrapping every one of those calls."""
    facts = _facts(_fresh(name))
    _, plan = checkpoint_advice(facts)
    assert plan is not None and plan.calls >= 2
    types = {m.name: m.type for m in facts.modules}
    calls = [m for m in facts.memory.by_module if types[m.module] == plan.module_type and m.module]
    outer = [m.module for m in calls if not any(m.module.startswith(o.module + ".") for o in calls)]
    model = _fresh(name)
    for module in outer:
        _wrap(model, module)
    measured = facts.memory.saved_for_backward_bytes - _saved(model)
    assert abs(measured - plan.expected_saving_bytes) <= 0.10 * measured, (plan, measured)


def test_advice_prefers_repeated_blocks_and_never_the_model() -> None:
    facts = _facts(_fresh("tiny_gpt"))
    candidates, plan = checkpoint_advice(facts)
    assert [c.module for c in candidates[:2]] == ["transformer.h.0", "transformer.h.1"]
    assert plan.module_type == "GPTBlock" and plan.calls == 2
    assert all(c.module for c in candidates)
    # no two suggestions nested in each other
    names = [c.module for c in candidates]
    assert not any(a != b and b.startswith(a + ".") for a in names for b in names)


def test_by_module_attribution_on_an_mlp_by_hand() -> None:
    """Linear(IN,H) → ReLU → Linear(H,OUT) on x [B, IN]: layers.0 saves x, the ReLU saves its output."""
    b, i, h, o = 8, 16, 32, 4
    torch.manual_seed(0)
    model = zoo.mlp(in_features=i, hidden=h, out_features=o, depth=2, batch=b)
    memory = _facts(model).memory
    rows = {m.module: m for m in memory.by_module}
    assert rows["layers.0"].saved_for_backward_bytes == b * i * 4
    assert rows["layers.1"].saved_for_backward_bytes == b * h * 4  # ReLU saves its result
    assert rows["layers.2"].saved_for_backward_bytes == 0  # its input is the ReLU's result: counted once
    assert rows["layers.0"].output_bytes == b * h * 4 and rows["layers.2"].output_bytes == b * o * 4
    assert rows["layers"].inside_saved_bytes == b * (i + h) * 4 == memory.saved_for_backward_bytes
    # checkpointing the Sequential keeps its input x instead: it saves exactly the ReLU's output
    assert rows["layers"].checkpoint_saving_bytes == b * h * 4


@pytest.mark.slow
def test_json_carries_every_module_call_and_the_advice(run_cli) -> None:
    result = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--format", "json")
    assert result.code == 0, result.err
    memory = json.loads(result.out)["memory"]
    calls = {(m["module"], m["call"]) for m in memory["by_module"]}
    model = zoo.tiny_gpt()
    containers = {"transformer", "transformer.h"}  # a ModuleDict and a ModuleList: never called
    assert {name for name, _ in calls} == {name for name, _ in model.named_modules()} - containers
    for row in memory["by_module"]:
        assert set(row) >= {"module", "call", "saved_for_backward_bytes", "output_bytes", "inside_saved_bytes",
                            "checkpoint_saving_bytes"}
    assert sum(m["saved_for_backward_bytes"] for m in memory["by_module"]) == memory["saved_for_backward_bytes"]
    assert memory["checkpoint_advice"][0]["module"] == "transformer.h.0"
    assert memory["checkpoint_plan"]["type"] == "GPTBlock"


@pytest.mark.slow
def test_table_shows_top_modules_and_the_advice(run_cli) -> None:
    result = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--top", "3")
    assert result.code == 0, result.err
    assert "Saved for backward, by module call" in result.out
    assert "Activation checkpointing" in result.out and "wrapping every GPTBlock call (2)" in result.out
    section = result.out.split("Saved for backward, by module call")[1].split("Activation checkpointing")[0]
    assert "more module calls" in section
    filtered = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--filter", "transformer.h.1*")
    part = filtered.out.split("Saved for backward, by module call")[1].split("Activation checkpointing")[0]
    assert "transformer.h.1" in part and "transformer.h.0" not in part
