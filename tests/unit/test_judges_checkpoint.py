"""``judges.checkpoint.checkpoint_advice`` on hand-made facts: which calls to checkpoint, and the plan's sums.

The measured side (wrapping the advised module in ``torch.utils.checkpoint`` and measuring the drop) is in
``tests/run/test_checkpoint_advice.py``.
"""

from __future__ import annotations

from gradprobe.facts.run import RunFacts
from gradprobe.judges.checkpoint import CheckpointCandidate, CheckpointPlan, checkpoint_advice
from tests.fixtures.facts import call_memory, memory, module, run_facts


def facts_with(rows: list[tuple[str, str, int, int]], saved: int) -> RunFacts:
    """rows: (module, type, inside_saved, checkpoint_saving)."""
    mods = [module(name, kind) for name, kind, _, _ in rows]
    calls = [call_memory(name, saving, inside=inside) for name, _, inside, saving in rows]
    return run_facts(modules=mods, memory=memory(saved, calls, forward_peak=saved, backward_peak=saved))


def test_advice_picks_repeated_blocks_largest_first_without_nesting() -> None:
    rows = [
        ("", "Net", 1000, 990),  # the model itself: never advised
        ("trunk", "Trunk", 900, 880),  # one call only: repeated blocks are preferred
        ("trunk.blocks.0", "Block", 300, 290),
        ("trunk.blocks.0.attn", "Attn", 200, 195),  # nested in a chosen block
        ("trunk.blocks.1", "Block", 300, 290),
        ("trunk.blocks.10", "Block", 310, 300),
        ("trunk.blocks.1.attn", "Attn", 200, 195),
        ("trunk.blocks.10.attn", "Attn", 200, 195),
        ("head", "Linear", 5, 1),
        ("tail", "Linear", 5, 1),
    ]
    candidates, plan = checkpoint_advice(facts_with(rows, 1000), top=5)
    assert [c.module for c in candidates] == ["trunk.blocks.10", "trunk.blocks.0", "trunk.blocks.1"]
    assert plan is not None and (plan.module_type, plan.calls, plan.expected_saving_bytes) == ("Block", 3, 880)


def test_no_advice_without_saved_bytes() -> None:
    assert checkpoint_advice(facts_with([("a", "A", 0, 0)], 0)) == ([], None)


def advice_for(calls: list[tuple[str, str, int | None]], saved: int, top: int = 5
               ) -> tuple[list[CheckpointCandidate], CheckpointPlan | None]:
    """calls: (module, type, checkpoint saving) -- one call each unless the module is listed twice."""
    mods = [module(name, kind) for name, kind in dict((name, kind) for name, kind, _ in calls).items()]
    counter: dict[str, int] = {}
    rows = []
    for name, _, saving in calls:
        rows.append(call_memory(name, saving, call=counter.get(name, 0)))
        counter[name] = counter.get(name, 0) + 1
    return checkpoint_advice(run_facts(modules=mods, memory=memory(saved, rows)), top=top)


def test_calls_under_one_percent_of_the_saved_bytes_are_not_worth_a_recompute() -> None:
    calls = [("blocks.0", "Block", 999), ("blocks.1", "Block", 999), ("head", "Linear", 1000)]
    candidates, plan = advice_for(calls, saved=100_000)
    assert [c.module for c in candidates] == ["head"]  # exactly 1% is enough; the blocks are just under it
    assert plan == CheckpointPlan("Linear", 1, 1000, 100_000)
    assert advice_for(calls[:2], saved=100_000) == ([], None)


def test_without_repeated_types_the_largest_non_nested_calls_win() -> None:
    calls = [("", "Net", 95_000), ("enc", "Encoder", 50_000), ("enc.layer", "Layer", 45_000),
             ("dec", "Decoder", 30_000), ("dec.out", "Linear", None)]
    candidates, plan = advice_for(calls, saved=100_000)
    assert [(c.module, c.module_type, c.expected_saving_bytes) for c in candidates] == [
        ("enc", "Encoder", 50_000), ("dec", "Decoder", 30_000)]
    assert plan == CheckpointPlan("Encoder", 1, 50_000, 100_000)
    assert [c.module for c in advice_for(calls, saved=100_000, top=1)[0]] == ["enc"]


def test_a_module_called_twice_is_two_candidates_and_the_plan_sums_them() -> None:
    calls = [("block", "Block", 12_000), ("block", "Block", 11_000), ("head", "Linear", 40_000)]
    candidates, plan = advice_for(calls, saved=100_000)
    assert [(c.module, c.call) for c in candidates] == [("block", 0), ("block", 1)]
    assert plan == CheckpointPlan("Block", 2, 23_000, 100_000)


def test_equal_savings_are_ordered_naturally() -> None:
    calls = [(f"layers.{i}", "Block", 5000) for i in (10, 2, 1)]
    candidates, plan = advice_for(calls, saved=20_000)
    assert [c.module for c in candidates] == ["layers.1", "layers.2", "layers.10"]
    assert plan is not None and (plan.calls, plan.expected_saving_bytes) == (3, 15_000)


def test_no_memory_facts_means_no_advice() -> None:
    assert checkpoint_advice(run_facts(memory=None)) == ([], None)
