"""Models for the distributed tests: plain ones, and factories that wrap themselves (DDP, FSDP2, FSDP1).

Each factory initialises the process group only if none exists (as training scripts written for torchrun
do), so gradprobe's own group is used when it made one.  Rank-dependent behaviour reads RANK from the
environment, so the same file serves plain PyTorch reference scripts.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def ensure_group() -> None:
    if not dist.is_initialized():
        dist.init_process_group("gloo")


class Net(nn.Module):
    """A frozen stem, a trainable head, BatchNorm, and an aux head that the forward never calls."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.stem = nn.Linear(8, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 4)
        self.example_input_array = torch.randn(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.stem(x))))


class WithAux(Net):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__(hidden)
        self.aux = nn.Linear(hidden, 2)  # never called: DDP's classic trap


class RankBranch(Net):
    """The aux branch runs on rank 0 only (a data-dependent branch that happens to differ per rank)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__(hidden)
        self.aux = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        out = self.head(h)
        if rank() == 0:
            out = out + self.aux(h)
        return out


class DataBranch(Net):
    """The aux branch runs for inputs whose first feature is large: rank 1's data only (its example input carries
    the rank in that feature, as a shard of a dataset might carry a rare class)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__(hidden)
        self.aux = nn.Linear(hidden, 4)
        self.example_input_array[:, 0] = 5.0 * rank()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        out = self.head(h)
        if bool((x[:, 0] > 2.5).any()):
            out = out + self.aux(h)
        return out


class Tower(nn.Module):
    """Blocks with a frozen body and a trainable adapter each: FSDP units that mix frozen and trainable."""

    def __init__(self, width: int = 16, depth: int = 2, block: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList((block or Block)(width) for _ in range(depth))
        self.out = nn.Linear(width, 3)
        self.example_input_array = torch.randn(4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.out(x)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Linear(width, width)
        self.adapter = nn.Linear(width, width)
        self.body.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x)) + self.adapter(x)


def net() -> Net:
    return Net()


def net_rank_seeded() -> Net:
    torch.manual_seed(rank())  # each rank initialises differently: values differ before the first step
    return Net()


def rank_frozen() -> Net:
    model = Net()
    if rank() == 1:
        model.stem.requires_grad_(False)
    return model


def bitfit() -> Net:
    """BitFit: every weight frozen, the biases trained."""
    model = Net()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return model


def ddp_net() -> nn.Module:
    ensure_group()
    return nn.parallel.DistributedDataParallel(Net())


def ddp_aux() -> nn.Module:
    ensure_group()
    return nn.parallel.DistributedDataParallel(WithAux())


def ddp_aux_unused_ok() -> nn.Module:
    ensure_group()
    return nn.parallel.DistributedDataParallel(WithAux(), find_unused_parameters=True)


def ddp_find_unused_all_used() -> nn.Module:
    ensure_group()
    return nn.parallel.DistributedDataParallel(Net(), find_unused_parameters=True)


def ddp_rank_branch() -> nn.Module:
    ensure_group()
    return nn.parallel.DistributedDataParallel(RankBranch())


def ddp_rank_branch_unused_ok() -> nn.Module:
    ensure_group()
    return nn.parallel.DistributedDataParallel(RankBranch(), find_unused_parameters=True)


def _blocks_sharded(model: nn.Module) -> nn.Module:
    """FSDP2 as a training script applies it: each block a unit, then the root."""
    from torch.distributed.fsdp import fully_shard

    ensure_group()
    for block in model.blocks:  # type: ignore[union-attr]
        fully_shard(block)
    fully_shard(model)
    return model


def fsdp2_tower() -> nn.Module:
    return _blocks_sharded(Tower())


def fsdp2_tower_split() -> nn.Module:
    """Adapters as their own units: no unit mixes frozen and trainable parameters."""
    from torch.distributed.fsdp import fully_shard

    ensure_group()
    model = Tower()
    for block in model.blocks:
        fully_shard(block.adapter)
        fully_shard(block.body)
    fully_shard(model)
    return model


class LoraBlock(nn.Module):
    """A frozen linear layer with a LoRA adapter: ``B`` zero-initialised, so ``A``'s first gradient is exactly zero."""

    def __init__(self, width: int, r: int = 4) -> None:
        super().__init__()
        self.base = nn.Linear(width, width)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(width, r, bias=False)
        self.lora_B = nn.Linear(r, width, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


class LoraTower(Tower):
    def __init__(self, width: int = 16, depth: int = 2) -> None:
        torch.manual_seed(0)
        super().__init__(width, depth, block=LoraBlock)


def fsdp2_lora() -> nn.Module:
    return _blocks_sharded(LoraTower())


def fsdp1_lora() -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    ensure_group()
    return FSDP(LoraTower(), auto_wrap_policy=ModuleWrapPolicy({LoraBlock}), use_orig_params=True,
                device_id=torch.device("cpu"))


def fsdp1_tower(use_orig_params: bool = True) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    ensure_group()
    return FSDP(Tower(), auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=use_orig_params,
                device_id=torch.device("cpu"))


def fsdp1_plain() -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    ensure_group()
    model = Net()
    return FSDP(model, use_orig_params=False, device_id=torch.device("cpu"))


class ForwardRaises(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if rank() == 1:
            raise RuntimeError("rank 1 cannot run this forward")
        return super().forward(x)


class Boom(nn.Module):
    """Raises on rank 1 only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if rank() == 1:
            raise RuntimeError("rank 1 cannot run this layer")
        return x


class InnerRaises(Net):
    """The forward raises inside a submodule ('head.1'), on rank 1 only."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__(hidden)
        self.head = nn.Sequential(nn.Linear(hidden, 4), Boom())


class ExtraCollective(Net):
    """Rank 0 all-reduces in its forward, rank 1 does not: rank 0 waits for a collective that never comes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if rank() == 0:
            t = torch.ones(1)
            dist.all_reduce(t)
        return super().forward(x)


def bad_inputs_on_rank1() -> torch.Tensor:
    if rank() == 1:
        raise ValueError("no data shard for rank 1")
    return torch.randn(6, 8)


class Sleepy(Net):
    """A forward that takes a minute on every rank: something to interrupt."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(60)
        return super().forward(x)


class StuckInCollective(Net):
    """Rank 0 waits in an all-reduce that rank 1 joins only after a minute: Ctrl-C must still end it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marks = os.environ.get("GRADPROBE_TEST_MARKS")
        if marks:  # tells the test that this rank is inside the forward
            open(os.path.join(marks, f"rank{rank()}"), "w").close()
        if rank() == 1:
            import time

            time.sleep(60)
        t = torch.ones(1)
        dist.all_reduce(t)
        return super().forward(x)


class RankChaos(nn.Module):
    """Everything that can differ between ranks before any step: freeze, initial values, a shape, the order."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(100 + rank())  # rank-seeded initialisation
        if rank() == 1:  # registration order differs
            self.b = nn.Linear(8, 8)
            self.a = nn.Linear(8, 8)
        else:
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4 + rank())  # a width read from rank-local data
        if rank() == 1:
            self.a.requires_grad_(False)  # frozen on one rank only
        self.example_input_array = torch.randn(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x))).sum(dim=1)


def fsdp1_mixed_no_orig() -> nn.Module:
    return fsdp1_tower(use_orig_params=False)


class MismatchedCollective(Net):
    """An all-reduce whose size differs by rank (4 values on rank 0, 8 on rank 1): gloo aborts a process in C++
    (SIGABRT, 'Received data size doesn't match expected size'), which then runs no Python to report with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.ones(4 * (1 + rank()))
        dist.all_reduce(t)
        return super().forward(x)


class StepCounter(nn.Module):
    """An integer buffer counting the samples each rank saw (its batch size plus its rank): the replicas' counters
    differ after the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0] + rank()
        return self.fc(x)
