"""``inspect --grads`` on a forward that takes the square root of negative values: the finding names the op, the
input figures plain PyTorch gives, and a fix that names the op (it used to say "before the root", which reads as
the root module)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from tests.conftest import CliResult

MODEL = '''
import torch, torch.nn as nn

class SqrtNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 8)
        self.c = nn.Linear(8, 1)

    def forward(self, x):
        return self.c(torch.sqrt(self.a(x) - 100.0)).sum()

def batch():
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
'''


def test_sqrt_of_negatives_hint_names_the_op(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    result = run_cli("inspect", "model.py:SqrtNet", "--inputs", "model.py:batch", "--grads", "--format", "json",
                     cwd=tmp_path)
    assert result.code == 0, result.err
    found = {f["code"]: f for f in json.loads(result.out)["findings"]}["nonfinite-forward"]

    torch.manual_seed(0)  # the same model in plain PyTorch: what sqrt received
    a = torch.nn.Linear(8, 8)
    with torch.no_grad():
        arg = a(x) - 100.0
    negatives = int((arg < 0).sum())
    assert negatives > 0
    assert f"{negatives} negative" in found["message"], found["message"]
    assert f"into {int(torch.sqrt(arg).isnan().sum())} NaN" in found["message"], found["message"]
    assert "before sqrt (x.clamp_min(eps).sqrt())" in found["hint"], found["hint"]
    assert "root" not in found["hint"]
