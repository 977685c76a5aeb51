"""Small models of the ``--world-size`` tests: an MLP stack and tiny GPT-2 / Llama built from transformers configs.

Targets are built fresh by name (``fit_models:Stack``); example inputs ride on ``example_input_array``."""

from __future__ import annotations

import torch
from torch import nn


class Stack(nn.Module):
    """Residual MLP blocks (``layers.N``) and a head: one FSDP unit per block with ``--shard 'layers.*'``."""

    def __init__(self, width: int = 96, depth: int = 4, batch: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)
        self.example_input_array = torch.randn(batch, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return self.head(self.norm(x))


def _tokens(vocab: int, batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32,
                                       use_cache=False))
    model.example_input_array = _tokens(128)
    return model


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                         use_cache=False))
    model.example_input_array = _tokens(128)
    return model


def self_wrapping() -> nn.Module:
    """A factory that applies FSDP2 itself (on whatever default group exists)."""
    from torch.distributed.fsdp import fully_shard

    model = Stack()
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def real_group() -> nn.Module:
    """A factory that initialises a real gloo group of its own: --world-size must refuse it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:29599")
    return Stack()


def hsdp_2x2() -> nn.Module:
    """FSDP2 over a (2, world size // 2) mesh (HSDP): an odd world size leaves a rank out of it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    n = torch.distributed.get_world_size()
    mesh = init_device_mesh("cpu", (2, n // 2), mesh_dim_names=("replicate", "shard"))
    model = Stack()
    fully_shard(model, mesh=mesh)
    return model


def needs_values() -> nn.Module:
    """A factory that reads a value while building: it cannot be built on the meta device."""
    model = Stack()
    if model.head.weight.sum().item() > 1e9:
        raise RuntimeError("unreachable")
    return model


def self_wrapping_bf16() -> nn.Module:
    """A factory that applies FSDP2 itself with a mixed precision policy (bf16 compute, fp32 reduce-scatter)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    model = Stack()
    for layer in model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
