"""``inspect --wrap fsdp --memory-detail``: FSDP2's resharded all-gather outputs are not "kept after forward".

FSDP2 frees each unit's all-gather outputs after its forward with ``UntypedStorage.resize_(0)``: the tensors stay
alive (FSDP holds them to gather into again in backward) but hold no bytes.  The event log sees no free for a
resize, so the kept-after-forward judge used to name them as tensors "something else holds".  A tensor the model
really keeps must still be named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

pytestmark = pytest.mark.slow

MODEL = '''
import torch, torch.nn as nn

class Block(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))

class Stack(nn.Module):
    def __init__(self, d=32, n=3):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x).sum()

class Keeper(Stack):
    """Keeps a 64x512 float32 copy (128 KiB) of a block's input on itself: nothing but this attribute holds it."""
    def forward(self, x):
        self.kept = x.detach().repeat(16, 16) * 2
        return super().forward(x)
'''

# plain PyTorch, no gradprobe: after the forward, FSDP2's all-gather outputs of the sharded units are alive and
# hold 0 bytes
PLAIN = '''
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
sys.path.insert(0, sys.argv[1])
from model import Stack
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
m = Stack()
for b in m.blocks:
    fully_shard(b)
fully_shard(m)
m(torch.randn(4, 32))
outs = [t for b in m.blocks for p in b._get_fsdp_state()._fsdp_param_group.fsdp_params
        for t in p.all_gather_outputs]
print(len(outs), sum(t.untyped_storage().nbytes() for t in outs))
dist.destroy_process_group()
'''


def _findings(result: CliResult) -> dict[str, dict]:
    assert result.code == 0, result.err
    return {f["code"]: f for f in json.loads(result.out)["findings"]}


def test_resharded_all_gather_outputs_are_not_kept(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    port = str(29500 + (hash(str(tmp_path)) % 400))
    plain = subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path), port], capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 0, plain.stderr
    count, nbytes = map(int, plain.stdout.split())
    assert count == 12 and nbytes == 0  # 3 units x 4 parameters, each resized to 0 bytes by the forward's end

    args = ("--shape", "4,32", "--wrap", "fsdp", "--shard", "blocks.*", "--memory-detail", "--format", "json")
    found = _findings(run_cli("inspect", "model.py:Stack", *args, cwd=tmp_path))
    assert "kept-after-forward" not in found, found.get("kept-after-forward")

    kept = _findings(run_cli("inspect", "model.py:Keeper", *args, cwd=tmp_path))["kept-after-forward"]
    assert "64×512 float32 (128.0 KiB)" in kept["message"], kept["message"]
    assert kept["message"].startswith("1 tensor(s)"), kept["message"]


# plain PyTorch: each parameter's dtype and global bytes after one step under fully_shard with a bf16/fp32 policy
PLAIN_MP = '''
import os, sys, json, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
sys.path.insert(0, sys.argv[1])
from model import Stack
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
m = Stack()
mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
for b in m.blocks:
    fully_shard(b, mp_policy=mp)
fully_shard(m, mp_policy=mp)
m(torch.randn(4, 32)).backward()
print(json.dumps({n: [str(p.dtype).removeprefix("torch."), p.numel() * p.element_size()]
                  for n, p in m.named_parameters()}))
dist.destroy_process_group()
'''


def test_mixed_precision_parameters_in_the_dtype_they_are_held(run_cli: Callable[..., CliResult],
                                                                tmp_path: Path) -> None:
    """The root unit's parameters were reported in the policy's param_dtype (bfloat16): the engine read them while
    FSDP2 had its unsharded copies registered; the model holds them in float32."""
    (tmp_path / "model.py").write_text(MODEL)
    port = str(29100 + (hash(str(tmp_path)) % 400))
    plain = subprocess.run([sys.executable, "-c", PLAIN_MP, str(tmp_path), port], capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 0, plain.stderr
    want = json.loads(plain.stdout)
    result = run_cli("inspect", "model.py:Stack", "--shape", "4,32", "--wrap", "fsdp", "--shard", "blocks.*",
                     "--mixed-precision", "bf16,fp32", "--format", "json", cwd=tmp_path)
    assert result.code == 0, result.err
    got = {p["name"]: [p["dtype"], p["bytes"]] for p in json.loads(result.out)["parameters"]}
    assert got == want
    assert want["head.weight"][0] == "float32"
