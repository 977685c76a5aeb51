"""compare-modes and freeze-check on meta with a padded batch (issue 17 §1): the inputs' CPU copy goes along.

``probe`` answers the value reads of a padded ``attention_mask`` on meta from the CPU copy kept beside each meta
input (trackers.host_values).  compare-modes runs every mode, and freeze-check its one training step, through
the same engine, so they must carry the same copy: each mode's saved bytes and peaks on meta equal that
command's CPU run, and freeze-check judges the same flags.  The CPU figure is checked against plain PyTorch, and
the same batch handed over already on meta (no CPU copy) shows the copy is what makes it work.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradprobe.api import compare_modes, freeze_check
from tests.fixtures import hf_tiny
from tests.fixtures.saved_bytes import plain_saved_bytes

MODES = "train:grad,eval:grad,eval:no_grad"


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return hf_tiny.build(name)


def _rows(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple]:
    report = compare_modes(model, batch, modes=MODES, repeat=2, backward=True)
    return {row.label: (row.ok, row.error, row.backward_error, row.graph_nodes, row.saved_for_backward_bytes,
                        row.forward_peak_bytes, row.backward_peak_bytes) for row in report.comparison.rows}


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "mixtral"])
def test_compare_modes_on_meta_equals_the_cpu_run_per_mode(name: str) -> None:
    batch = hf_tiny.padded_batch()
    cpu, meta = _rows(hf_tiny.build(name), batch), _rows(_meta(name), batch)
    assert meta == cpu
    assert all(ok and error is None for ok, error, *_ in meta.values())
    train = hf_tiny.build(name).train()
    torch.manual_seed(0)  # dropout masks are saved: the seed compare-modes runs every mode from
    assert cpu["train:grad"][4] == plain_saved_bytes(train, lambda: train(**batch))
    assert cpu["eval:no_grad"][4] == 0 and cpu["train:grad"][6] is not None


def test_compare_modes_without_the_cpu_copy_names_the_mask() -> None:
    """The contrast: the batch already on meta has no values to read, and every row says which input."""
    batch = {k: v.to("meta") for k, v in hf_tiny.padded_batch().items()}
    report = compare_modes(_meta("llama"), batch, modes="train:grad,eval:no_grad", repeat=1)
    assert all(not row.ok and "attention_mask" in (row.error or "") for row in report.comparison.rows)


def _freeze(model: nn.Module, batch: dict[str, torch.Tensor], frozen: list[str]) -> tuple:
    report = freeze_check(model, batch, frozen=frozen, unlisted="ignore")
    grads = [(p.name, p.requires_grad, p.expected, p.grad is not None and p.grad.value != "none")
             for p in report.parameters]  # meta knows a gradient is present, not whether it is nonzero
    return report.passed, sorted((v.check, v.subject) for v in report.violations), grads, report.facts.run.backward


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_freeze_check_on_meta_judges_as_on_the_cpu(name: str) -> None:
    """The user froze the embeddings; the spec also names one trainable parameter frozen: one violation."""
    batch = hf_tiny.padded_batch()
    cpu_model, meta_model = hf_tiny.build(name), _meta(name)
    names = [n for n, _ in cpu_model.named_parameters()]
    embeddings = [n for n in names if "embed" in n or ".wte." in n]
    for model in (cpu_model, meta_model):
        for n, p in model.named_parameters():
            p.requires_grad_(n not in embeddings)
    spec = [*embeddings, names[-1]]
    cpu, meta = _freeze(cpu_model, batch, spec), _freeze(meta_model, batch, spec)
    assert meta == cpu and cpu[3] is True and cpu[0] is False
    assert ("flag", names[-1]) in cpu[1]
    # plain PyTorch: the parameters that get a gradient from this batch on the CPU
    cpu_model.zero_grad(set_to_none=True)
    cpu_model.train()(**batch).loss.backward()
    with_grad = sorted(n for n, p in cpu_model.named_parameters() if p.grad is not None)
    assert sorted(n for n, _, _, got in cpu[2] if got) == sorted(set(with_grad) & {r[0] for r in cpu[2]})
    assert all(p.grad is None for p in meta_model.parameters())  # the model is left as found


class _ConsumesMask(nn.Module):
    """Reads its mask (a branch on its values), then zeroes it in place, as a forward that consumes an input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if mask.sum() > 0:
            y = torch.tanh(self.lin(y)) * 2
        mask.zero_()
        return y


def _consumes_mask(device: str) -> nn.Module:
    with torch.device(device):
        torch.manual_seed(0)
        return _ConsumesMask()


def test_every_mode_on_meta_starts_from_the_inputs_as_supplied() -> None:
    """On meta the mask's values live in its CPU copy; a forward writing into the mask must not change that copy
    (the user's own tensor), or the next mode and repeat take the other branch -- as they never do on the CPU,
    where compare-modes puts the inputs back before each run."""
    x, mask = torch.randn(4, 8), torch.ones(4, dtype=torch.long)
    rows = {}
    for device in ("cpu", "meta"):
        report = compare_modes(_consumes_mask(device), (x, mask), modes=MODES, repeat=2)
        rows[device] = [(r.label, r.ok, r.saved_for_backward_bytes, r.forward_peak_bytes)
                        for r in report.comparison.rows]
        assert mask.tolist() == [1, 1, 1, 1], device  # the user's tensor is left as found
    assert rows["meta"] == rows["cpu"]
    plain = _consumes_mask("cpu").train()
    expected = plain_saved_bytes(plain, lambda: plain(x, mask.clone()))  # the mask branch taken, in plain PyTorch
    assert [r[2] for r in rows["cpu"] if r[0].endswith(":grad")] == [expected] * 2
    report = freeze_check(_consumes_mask("meta"), (x, mask), trainable="*")
    assert report.passed and mask.tolist() == [1, 1, 1, 1]
