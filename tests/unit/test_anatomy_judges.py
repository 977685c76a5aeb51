"""Peak anatomy, its findings and its views on hand-made event logs (no torch)."""

from __future__ import annotations

import json
from array import array
from dataclasses import replace

from gradprobe.facts.memory import EventLog, PhaseSpan
from gradprobe.facts.run import MemoryFact, ModuleFact, ModuleMemory, RunFacts
from gradprobe.judges.anatomy import anatomies, anatomy_findings, kept_after_forward
from gradprobe.render.memory.series import timeline
from gradprobe.render.memory.timeline import chart_width, timeline_svg, timeline_text
from gradprobe.render.memory.view import memory_detail_json, memory_detail_markdown

KIB = 1024


def make_log(ops: list[tuple[str, int]], events: list[tuple[int, int, int]], shapes: dict[int, tuple[int, ...]],
             forward_ops: int, forward_events: int, *, calls: tuple[tuple[str, int], ...] = (("", 0), ("a", 0),
                                                                                             ("b", 0)),
             parents: tuple[int, ...] = (-1, 0, 0), saved: tuple[tuple[int, int], ...] = (),
             outputs: tuple[int, ...] = (), gradients: tuple[tuple[int, str], ...] = ()) -> EventLog:
    """ops: (name, call index); events: (op, delta, storage) in order; storages numbered as first created."""
    names = sorted({name for name, _ in ops})
    storage_event: dict[int, int] = {}
    for e, (_, delta, s) in enumerate(events):
        if delta > 0:
            storage_event.setdefault(s, e)
    n = len(storage_event)
    shape_list = sorted(set(shapes.values()))
    total_events = len(events)
    return EventLog(
        op_names=tuple(names), calls=calls, shapes=tuple(shape_list), dtypes=("float32",),
        op_kind=array("H", [names.index(name) for name, _ in ops]).tobytes(),
        op_call=array("i", [c for _, c in ops]).tobytes(), call_parent=array("i", parents).tobytes(),
        event_op=array("I", [op for op, _, _ in events]).tobytes(),
        event_delta=array("q", [d for _, d, _ in events]).tobytes(),
        event_storage=array("I", [s for _, _, s in events]).tobytes(),
        storage_event=array("I", [storage_event[s] for s in range(n)]).tobytes(),
        storage_shape=array("I", [shape_list.index(shapes[s]) for s in range(n)]).tobytes(),
        storage_dtype=bytes(n),
        phases=(PhaseSpan("forward", 0, forward_events, 0, forward_ops, 0),
                PhaseSpan("backward", forward_events, total_events, forward_ops, len(ops),
                          sum(d for _, d, _ in events[:forward_events]))),
        saved=saved, outputs=outputs, gradients=gradients,
        held=(("parameters", 64 * KIB), ("buffers", 0), ("inputs", 4 * KIB)),
    )


def sample_log() -> EventLog:
    """Forward: a (storage 0, 40 KiB, saved by 'a'), t (1, 30 KiB temporary, freed), out (2, 10 KiB);
    backward: g (3, 64 KiB gradient of w), tmp (4, 20 KiB, freed), a freed."""
    ops = [("aten.mm", 1), ("aten.relu", 1), ("aten.mm", 2), ("aten.ones_like", -1), ("aten.mm", 2),
           ("aten.mm", 1)]
    events = [(0, 40 * KIB, 0), (1, 30 * KIB, 1), (2, 10 * KIB, 2), (2, -30 * KIB, 1),  # forward peak at event 2
              (4, 64 * KIB, 3), (5, 20 * KIB, 4), (5, -40 * KIB, 0), (5, -20 * KIB, 4)]  # backward peak at 5
    shapes = {0: (10, 1024), 1: (30, 256), 2: (10, 256), 3: (16, 1024), 4: (5, 1024)}
    return make_log(ops, events, shapes, forward_ops=3, forward_events=4, saved=((0, 1),), outputs=(2,),
                    gradients=((3, "w"),))


def facts_with(log: EventLog, saved: int = 40 * KIB) -> RunFacts:
    memory = MemoryFact("test", 80 * KIB, 134 * KIB, saved, 64 * KIB, 64 * KIB,
                        by_module=(ModuleMemory("a", 0, saved, 40 * KIB, saved, saved),), events=log)
    return RunFacts(
        target="t", torch_version="x", device="cpu", mode="train", grad_mode="grad", backward=True,
        backward_skipped_reason=None, loss=0.0, parameters=(), buffers=(),
        modules=(ModuleFact("", "Net", True, 1, (), None, False), ModuleFact("a", "Linear", True, 1, (), None, False),
                 ModuleFact("b", "Linear", True, 1, (), None, False)),
        tensors=(), outputs=(), graph=None, memory=memory, global_grad_enabled=True)


def test_categories_at_each_peak() -> None:
    forward, backward = anatomies(sample_log())
    assert (forward.phase, forward.peak_bytes, forward.event, forward.op, forward.module) == \
        ("forward", 80 * KIB, 2, "aten.mm", "b")
    assert dict(forward.categories) == {"gradients": 0, "saved": 40 * KIB, "outputs": 10 * KIB,
                                        "temporaries": 30 * KIB, "parameters": 64 * KIB, "buffers": 0,
                                        "inputs": 4 * KIB}
    assert [(m.module, m.nbytes) for m in forward.saved_by_module] == [("a", 40 * KIB)]
    assert [t.nbytes for t in forward.top] == [40 * KIB, 30 * KIB, 10 * KIB]
    assert forward.top[0].saved_by == "a" and forward.top[0].shape == (10, 1024)
    assert (backward.peak_bytes, backward.event, backward.op_index, backward.module) == (134 * KIB, 5, 5, "a")
    assert dict(backward.categories)["gradients"] == 64 * KIB
    assert dict(backward.categories)["temporaries"] == 20 * KIB
    assert backward.top[0].phase == "backward" and backward.top[0].category == "gradients"
    for a in (forward, backward):
        assert sum(dict(a.categories)[c] for c in ("gradients", "saved", "outputs", "temporaries")) == a.peak_bytes


def test_peak_at_the_start_of_a_phase() -> None:
    """A backward that only frees peaks when it begins: event -1, the forward's leftovers."""
    ops = [("aten.mm", 1), ("aten.mm", 1)]
    events = [(0, 8 * KIB, 0), (1, -8 * KIB, 0)]
    log = make_log(ops, events, {0: (2, 1024)}, forward_ops=1, forward_events=1, saved=((0, 1),))
    _, backward = anatomies(log)
    assert (backward.peak_bytes, backward.event, backward.op) == (8 * KIB, -1, "(start)")
    assert dict(backward.categories)["saved"] == 8 * KIB


def test_timeline_keeps_each_peak_at_any_width() -> None:
    log = sample_log()
    for width in (1, 2, 3, 100):
        forward, backward = timeline(log, width)
        assert max(c.high for c in forward.columns) == 80 * KIB
        assert max(c.high for c in backward.columns) == 134 * KIB
        assert backward.columns[backward.peak_column].op == 5
    lines = timeline_text(timeline(log, chart_width(80)), 80)
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].startswith("forward  ") and lines[1].endswith("80.0 KiB")
    assert any(line.lstrip().startswith("^ peak 134.0 KiB at op 5 mm, a") for line in lines)
    svg = timeline_svg(timeline(log, 400))
    assert svg.startswith("<svg") and svg.count("<title>") >= 7 and "peak 134.0 KiB" in svg


def test_findings_name_the_lever() -> None:
    facts = facts_with(sample_log())
    codes = {f.code: f for f in anatomy_findings(facts)}
    assert set(codes) == {"peak-gradients"}  # saved is 50% of the forward peak, not more; nothing kept
    assert "64.0 KiB (48%)" in codes["peak-gradients"].message
    dominated = make_log([("aten.mm", 1), ("aten.mm", 2)], [(0, 90 * KIB, 0), (1, 10 * KIB, 1)],
                         {0: (90, 1024), 1: (10, 1024)}, forward_ops=2, forward_events=2, saved=((0, 1),),
                         outputs=(1,))
    found = {f.code: f for f in anatomy_findings(facts_with(dominated, 90 * KIB))}
    assert "peak-saved-activations" in found
    assert found["peak-saved-activations"].subject == "a" and "90%" in found["peak-saved-activations"].message


def test_kept_after_forward() -> None:
    ops = [("aten.mm", 1), ("aten.mul.Tensor", 2), ("aten.mm", 2)]
    events = [(0, 50 * KIB, 0), (1, 20 * KIB, 1), (2, 10 * KIB, 2)]
    log = make_log(ops, events, {0: (50, 1024), 1: (20, 1024), 2: (10, 1024)}, forward_ops=3, forward_events=3,
                   saved=((0, 1),), outputs=(2,))
    kept = kept_after_forward(log)
    assert [(k.nbytes, k.op, k.module) for k in kept] == [(20 * KIB, "aten.mul.Tensor", "b")]
    finding = next(f for f in anatomy_findings(facts_with(log, 50 * KIB)) if f.code == "kept-after-forward")
    assert finding.subject == "b" and "20×1024" in finding.message


def test_json_and_markdown() -> None:
    facts = facts_with(sample_log())
    doc = memory_detail_json(facts.memory)
    json.dumps(doc)
    assert [a["phase"] for a in doc["anatomy"]] == ["forward", "backward"]
    assert doc["anatomy"][0]["categories"] == {"gradients": 0, "saved": 40 * KIB, "outputs": 10 * KIB,
                                               "temporaries": 30 * KIB}
    assert doc["anatomy"][1]["top_tensors"][0]["category"] == "gradients"
    assert doc["event_log"]["max_live_bytes"] == 134 * KIB
    assert memory_detail_json(replace(facts.memory, events=None)) == {"anatomy": None, "event_log": None}
    md = memory_detail_markdown(facts.memory)
    assert "### Peak anatomy" in md and "| saved for backward | 40.0 KiB (50%) |" in md and "```text" in md
