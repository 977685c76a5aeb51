"""``inspect --grads`` on a deep sigmoid MLP: the gradient-flow mark names the largest single step, which it is
(the finding says the fall is spread over the blocks); it used to read "most scale lost"."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from tests.conftest import CliResult

MODEL = '''
import torch, torch.nn as nn

class DeepSigmoid(nn.Module):
    def __init__(self, d=16, n=12):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        self.out = nn.Linear(d, 1)

    def forward(self, x):
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return self.out(x).sum()

def batch():
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
'''


def test_deep_sigmoid_mark_and_factor(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    args = ("inspect", "model.py:DeepSigmoid", "--inputs", "model.py:batch", "--grads")
    text = run_cli(*args, cwd=tmp_path, env={"COLUMNS": "140"})
    assert text.code == 0, text.err
    found = {f["code"]: f for f in json.loads(run_cli(*args, "--format", "json", cwd=tmp_path).out)["findings"]}
    vanishing = found["grad-vanishing"]
    assert f"{vanishing['subject']}: largest step down" in text.out, text.out
    assert "most scale" not in text.out

    # plain PyTorch: the gradient's RMS at the output of 'out' and of 'layers.0'
    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 16) for _ in range(12)]
    out = torch.nn.Linear(16, 1)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    first = layers[0](x)
    first.retain_grad()
    h = torch.sigmoid(first)
    for layer in layers[1:]:
        h = torch.sigmoid(layer(h))
    y = out(h)
    y.retain_grad()
    y.sum().backward()
    rms = lambda g: float(g.pow(2).mean().sqrt())  # noqa: E731
    assert f"falls by a factor of {rms(y.grad) / rms(first.grad):.3g} across 13 blocks" in vanishing["message"]
