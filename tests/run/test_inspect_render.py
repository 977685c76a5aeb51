"""The rich view: key lines at a fixed width and 80-column readability (whole views: tests/golden/)."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from gradprobe.api import load, probe
from gradprobe.facts.run import InspectReport
from gradprobe.render.inspect.table import render_inspect
from tests.fixtures import models as mi


def render(report: InspectReport, width: int = 100, **kwargs) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    render_inspect(report, console, **kwargs)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def _report(factory) -> InspectReport:
    torch.manual_seed(0)
    return probe(factory())


def test_summary_key_lines() -> None:
    report = _report(mi.FrozenBackbone)
    text = render(report, sections={"summary"})
    lines = text.splitlines()
    assert any("target" in line and "FrozenBackbone" in line for line in lines)
    assert any(f"{torch.__version__} / cpu" in line for line in lines)
    assert any("mode" in line and "train + grad" in line for line in lines)
    assert any("require grad" in line and "2 (" in line for line in lines)  # head.weight, head.bias
    assert any("frozen" in line and "8 (" in line for line in lines)
    assert any("backward" in line and "ran" in line for line in lines)
    assert any("requires_grad=True" in line and "grad_fn=AddmmBackward0" in line for line in lines)


def test_memory_key_lines() -> None:
    text = render(_report(mi.MLP), sections={"memory"})
    saved = mi.B * (mi.IN + mi.HIDDEN) * 4
    assert any(line.split()[:3] == ["saved", "for", "backward"] and f"{saved} B" in line for line in text.splitlines())
    assert "TorchDispatchMode" in text


def test_no_backward_line_says_why() -> None:
    text = render(probe(mi.MLP(), grad_mode="no_grad"), sections={"summary"})
    assert "not run: the forward ran under no_grad" in " ".join(text.split())


def test_findings_render_as_a_list_with_fix_lines() -> None:
    text = render(_report(mi.NeverCalled), sections={"findings"})
    lines = text.splitlines()
    assert lines[0] == "Findings (1)"
    assert lines[1].split() == ["error", "grad-none", "aux"]
    assert lines[2].startswith(" " * 5) and "require grad but received no gradient" in lines[2]
    assert any(line.strip().startswith("fix: ") for line in lines)


def test_uniform_columns_are_folded_into_the_title() -> None:
    text = render(_report(mi.MLP), sections={"parameters", "tensors"})
    assert "Parameters (4; all float32" in text
    assert "dtype" not in text.split("Tensors", 1)[0]
    mixed = render(probe(mi.IntOutput()), sections={"tensors"})
    assert "is_inference=False" in mixed and "all float32" not in mixed


def test_repeated_calls_are_numbered_and_paths_shown() -> None:
    text = render(_report(mi.CalledTwice), sections={"tensors"})
    assert "block #0" in text and "block #1" in text and "head #" not in text
    text = render(probe(mi.StructuredOut("dict")), sections={"tensors"})
    assert "output['logits']" in text and "output['hidden']" in text


@pytest.mark.parametrize("factory", [mi.FrozenBackbone, mi.Tied, mi.NeverCalled])
def test_readable_at_80_columns(factory) -> None:
    text = render(_report(factory), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    report = _report(factory)
    for p in report.facts.parameters:  # names are never folded across lines at 80 columns
        assert p.name in text
    for b in report.facts.buffers:
        assert b.name in text


def test_example_model_at_80_columns() -> None:
    torch.manual_seed(0)
    loaded, example = load("gradprobe.examples:FineTuneNet")
    report = probe(loaded.model, example)
    text = render(report, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "backbone.block1.1.num_batches_tracked" in text
    assert "backbone.block2.0.weight" in text
    lines = text.splitlines()
    drift = [i for i, line in enumerate(lines) if "frozen-bn-drift" in line]
    assert len(drift) == 1 and lines[drift[0]].split()[-1] == "backbone"  # grouped per frozen module


def test_top_limits_rows_and_says_so() -> None:
    torch.manual_seed(0)
    report = probe(load("gradprobe.examples:FineTuneNet")[0].model)
    text = render(report, top=2, sections={"parameters"})
    assert "8 more rows" in text
    rows = [line for line in text.splitlines() if line.startswith(("aux_head", "backbone", "head"))]
    assert [r.split()[0] for r in rows] == ["aux_head.weight", "aux_head.bias"]  # missing gradients first


def test_filter_limits_rows() -> None:
    text = render(_report(mi.NeverCalled), pattern="aux", sections={"parameters", "tensors"})
    assert "aux.weight" in text and "main.weight" not in text


class PackedGRU(torch.nn.Module):
    """A packed bidirectional GRU: its output holds float and int64 tensors with long names and grad_fns."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.gru = torch.nn.GRU(8, 6, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(self.emb(ids), lengths, batch_first=True,
                                                         enforce_sorted=False)
        out, _ = self.gru(packed)
        return self.head(torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0].mean(1))


def test_tensor_table_fits_80_columns_with_every_column_whole() -> None:
    """Long output names and grad_fn names must not push the leaf column (and grad_fn) off an 80-column view:
    every cell as plain PyTorch reports it, uncut."""
    torch.manual_seed(0)
    model = PackedGRU()
    ids, lengths = torch.randint(0, 20, (3, 7)), torch.tensor([7, 3, 5])
    seen: list[tuple[str, bool]] = []  # plain PyTorch: grad_fn and is_leaf of every tensor a module returns

    def hook(_m: torch.nn.Module, _args: object, out: object) -> None:
        for t in torch.utils._pytree.tree_leaves(out if not isinstance(out, tuple) else list(out)):
            if isinstance(t, torch.Tensor):
                seen.append((type(t.grad_fn).__name__ if t.grad_fn is not None else "None", t.is_leaf))

    handles = [m.register_forward_hook(hook) for m in model.modules()]  # the model itself: "output"
    model(ids, lengths)
    for h in handles:
        h.remove()
    assert ("IndexSelectBackward0", False) in seen and ("None", True) in seen  # both leaf values occur
    text = render(probe(model, (ids, lengths)), width=80, sections={"tensors"})
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "grad_fn" in line)
    assert header.split()[-1] == "leaf", header
    rows = [line.split() for line in lines if line.split()[-1:] in (["yes"], ["no"])]
    assert sorted(r[-1] == "yes" for r in rows) == sorted(leaf for _, leaf in seen)
    assert any(r[-2] == "IndexSelectBackward0" for r in rows)


def test_parameter_table_fits_80_columns_with_the_gradient_norm_whole() -> None:
    """Long parameter names (a LoRA-wrapped model's) and mixed requires_grad must not crop the grad column's norm:
    each norm as plain PyTorch computes it appears whole at 80 columns."""
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model = torch.nn.Module()
    model.base_model_with_a_rather_long_name = torch.nn.ModuleDict({"adapter_of_the_projection_layer": inner})
    model.forward = lambda x: inner(x)  # type: ignore[method-assign]
    inner[0].requires_grad_(False)
    x = torch.randn(3, 4)
    twin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    twin.load_state_dict(inner.state_dict())
    twin[0].requires_grad_(False)
    twin(x).sum().backward()  # plain PyTorch
    norms = {f"{twin[1].weight.grad.norm():.3g}", f"{twin[1].bias.grad.norm():.3g}"}
    text = render(probe(model, x), width=80, sections={"parameters"})
    assert max(len(line) for line in text.splitlines()) <= 80
    for norm in norms:
        assert f"nonzero ‖{norm}‖" in text, text
