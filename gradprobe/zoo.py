"""Reference models: ready-made targets for tests, benchmarks and users.

Everything here is plain ``torch`` so ``gradprobe inspect gradprobe.zoo:llama_7b --device meta`` works
without torchvision or transformers installed.  Module names deliberately mirror the well-known
implementations (torchvision ResNet, nanoGPT / HF GPT-2, HF Llama) so that reports read like they would
for the real thing.

Each model sets ``example_input_array`` (the PyTorch Lightning convention) in ``__init__``.  It is made
with ``torch.randn``/``torch.randint`` without a ``device`` argument, so it lands on whatever device the
model is being built on: building under ``with torch.device("meta"):`` gives meta inputs and costs no
memory.  Nothing in any forward is data-dependent (no ``.item()``, no ``nonzero``), so forward and
backward run entirely on the meta device, which is how the multi-billion-parameter models are meant to
be probed.

Default ``nn`` initialisation is kept (no per-module init loops) so that building the small models on
CPU stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GPT",
    "MLP",
    "BasicBlock",
    "Bottleneck",
    "GPTConfig",
    "Llama",
    "LlamaConfig",
    "RMSNorm",
    "ResNet",
    "gpt2_small",
    "gpt2_xl",
    "hf_llama_7b",
    "hf_tiny_llama",
    "llama_7b",
    "mlp",
    "resnet50",
    "resnet_small",
    "tiny_gpt",
    "tiny_llama",
]


# --------------------------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """``depth`` Linear layers with ReLU in between, held in ``layers`` (an ``nn.Sequential``).

    Module names: ``layers.0`` (Linear), ``layers.1`` (ReLU), ``layers.2`` (Linear), ...; the last
    Linear has no activation after it.  Example input: float ``[batch, in_features]``.
    """

    def __init__(
        self,
        in_features: int = 256,
        hidden: int = 1024,
        out_features: int = 10,
        depth: int = 3,
        batch: int = 64,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [in_features] + [hidden] * (depth - 1) + [out_features]
        mods: list[nn.Module] = []
        for i in range(depth):
            mods.append(nn.Linear(widths[i], widths[i + 1]))
            if i < depth - 1:
                mods.append(nn.ReLU())
        self.layers = nn.Sequential(*mods)
        self.example_input_array = torch.randn(batch, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def mlp(
    in_features: int = 256, hidden: int = 1024, out_features: int = 10, depth: int = 3, batch: int = 64
) -> MLP:
    """Small fully-connected net: the simplest possible target."""
    return MLP(in_features, hidden, out_features, depth, batch)


# ------------------------------------------------------------------------------------------------ ResNet


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual (torchvision ``BasicBlock`` names)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4 bottleneck, torchvision ``Bottleneck`` (ResNet v1.5) names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-layout ResNet: ``conv1 bn1 relu maxpool layer1..layer4 avgpool fc``.

    BatchNorm gives the probe running-stat buffers that change in train mode and ``inplace`` ReLUs
    exercise version-counter tracking.  Example input: float ``[batch, 3, image, image]``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int] | list[int],
        num_classes: int = 1000,
        width: int = 64,
        batch: int = 2,
        image: int = 128,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        self.example_input_array = torch.randn(batch, 3, image, image)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000, batch: int = 2, image: int = 128) -> ResNet:
    """Real ResNet-50 layout (3, 4, 6, 3 bottlenecks, 25,557,032 params at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, width=64, batch=batch, image=image)


def resnet_small(num_classes: int = 10, batch: int = 4, image: int = 32, width: int = 8) -> ResNet:
    """One BasicBlock per stage at small width: same module structure as a ResNet, milliseconds to run."""
    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes=num_classes, width=width, batch=batch, image=image)


# ----------------------------------------------------------------------------------------------- GPT-2


@dataclass
class GPTConfig:
    """GPT-2 hyper-parameters (defaults are GPT-2 small)."""

    vocab_size: int = 50257
    block_size: int = 1024  # max sequence length == rows of the position embedding
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2


class CausalSelfAttention(nn.Module):
    """Fused qkv projection ``c_attn`` + output projection ``c_proj``, SDPA with ``is_causal=True``.

    Attention-probability dropout happens inside SDPA (``attn_dropout_p``, train mode only), so there is
    no ``attn_dropout`` module that would never be called; ``resid_dropout`` is a real module.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} not divisible by n_head {config.n_head}")
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.attn_dropout_p = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.attn_dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPTMLP(nn.Module):
    """``c_fc`` (4x) -> tanh-GELU -> ``c_proj`` -> dropout, as in GPT-2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = GPTMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 decoder with nanoGPT / HF module names.

    Modules: ``transformer.wte`` (token embedding), ``transformer.wpe`` (position embedding),
    ``transformer.drop``, ``transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}``,
    ``transformer.ln_f`` and ``lm_head``.  ``lm_head.weight is transformer.wte.weight`` (tied, one
    Parameter reachable under two names) -- the case the probe must report once, with an alias.
    Example input: int64 token ids ``[batch, seq]``; forward returns float logits ``[batch, seq, vocab]``.
    """

    def __init__(self, config: GPTConfig, batch: int = 1, seq: int = 128) -> None:
        super().__init__()
        if seq > config.block_size:
            raise ValueError(f"seq {seq} exceeds block_size {config.block_size}")
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, same Parameter object
        # Embedding's default N(0, 1) init would give logits of std ~sqrt(n_embd) through the tied head;
        # GPT-2's 0.02 keeps the loss sane.  Two calls, not a per-module loop.
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        nn.init.normal_(self.transformer.wpe.weight, std=0.02)
        self.example_input_array = torch.randint(0, config.vocab_size, (batch, seq))

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def gpt2_small(batch: int = 1, seq: int = 128, dropout: float = 0.1) -> GPT:
    """GPT-2 small, 124,439,808 params (tied head counted once)."""
    return GPT(GPTConfig(dropout=dropout), batch=batch, seq=seq)


def gpt2_xl(batch: int = 1, seq: int = 1024, dropout: float = 0.1) -> GPT:
    """GPT-2 XL, ~1.56B params: meant for ``--device meta``."""
    config = GPTConfig(n_layer=48, n_head=25, n_embd=1600, dropout=dropout)
    return GPT(config, batch=batch, seq=seq)


def tiny_gpt(
    batch: int = 2,
    seq: int = 16,
    vocab_size: int = 100,
    n_layer: int = 2,
    n_embd: int = 32,
    dropout: float = 0.1,
) -> GPT:
    """Same structure as GPT-2 at toy size, for fast tests."""
    config = GPTConfig(
        vocab_size=vocab_size, block_size=64, n_layer=n_layer, n_head=4, n_embd=n_embd, dropout=dropout
    )
    return GPT(config, batch=batch, seq=seq)


# ------------------------------------------------------------------------------------------------ Llama


@dataclass
class LlamaConfig:
    """Llama hyper-parameters (defaults are Llama-7B)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale ``weight``; statistics computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rotary_cos_sin(seq: int, head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``[seq, head_dim]`` (HF half-split layout), recomputed per forward.

    Computing them here instead of storing buffers means a model built on meta needs no
    materialisation step and nothing depends on data values.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


class LlamaAttention(nn.Module):
    """``q_proj k_proj v_proj o_proj`` (no biases), rotary on q/k, causal SDPA."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        d = config.hidden_size
        if d % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {d} not divisible by num_attention_heads {config.num_attention_heads}"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (
            proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class LlamaMLP(nn.Module):
    """SwiGLU: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with SiLU, no biases."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: ``input_layernorm -> self_attn``, ``post_attention_layernorm -> mlp``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Decoder trunk: ``embed_tokens``, ``layers``, ``norm`` (HF ``LlamaModel`` names)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds {self.config.max_position_embeddings}")
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = _rotary_cos_sin(T, head_dim, self.config.rope_theta, input_ids.device)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class Llama(nn.Module):
    """Llama causal LM laid out like HF ``LlamaForCausalLM``: ``model`` (trunk) + untied ``lm_head``.

    Names read as ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``,
    ``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.layers.{i}.{input,post_attention}_layernorm``,
    ``model.norm``, ``lm_head``.  No biases, no dropout, no buffers.  Example input: int64 token ids
    ``[batch, seq]``; forward returns float logits ``[batch, seq, vocab]``.
    """

    def __init__(self, config: LlamaConfig, batch: int = 1, seq: int = 1024) -> None:
        super().__init__()
        if seq > config.max_position_embeddings:
            raise ValueError(f"seq {seq} exceeds max_position_embeddings {config.max_position_embeddings}")
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.example_input_array = torch.randint(0, config.vocab_size, (batch, seq))

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.lm_head(self.model(input_ids))


def llama_7b(batch: int = 1, seq: int = 1024) -> Llama:
    """Llama-7B, 6,738,415,616 params: meant for ``--device meta``."""
    return Llama(LlamaConfig(), batch=batch, seq=seq)


def tiny_llama(
    batch: int = 2,
    seq: int = 16,
    vocab_size: int = 100,
    num_hidden_layers: int = 2,
    hidden_size: int = 32,
    intermediate_size: int = 88,
) -> Llama:
    """Same structure as Llama at toy size, for fast tests."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return Llama(config, batch=batch, seq=seq)


# ------------------------------------------------------------------------------- Hugging Face (optional)


def _hf_llama(config_kwargs: dict[str, int | float], batch: int, seq: int) -> nn.Module:
    try:
        from transformers import LlamaConfig as HFLlamaConfig
        from transformers import LlamaForCausalLM
    except ImportError as exc:  # an optional extra: say how to get it
        raise ImportError("the Hugging Face Llama targets need the 'transformers' package: "
                          "pip install transformers") from exc
    config = HFLlamaConfig(**config_kwargs, attn_implementation="sdpa", use_cache=False)
    model = LlamaForCausalLM(config)
    model.example_input_array = torch.randint(0, config.vocab_size, (batch, seq))
    _unpacked_on_meta(model)
    return model


_META_FORWARDS = [0]  # forwards of zoo HF models running now


def _unpacked_on_meta(model: nn.Module) -> None:
    """Let this model's forward run on meta: answer transformers' packed-sequence probe without values.

    With no attention mask, ``transformers.masking_utils`` asks ``(diff(position_ids) != 1).cumsum(-1)[:, -1]
    == 0).all()`` -- a value a meta tensor does not have -- to detect several sequences packed into one row.
    The position ids here are the model's own ``arange`` (one sequence per row), for which the real answer is
    "not packed" (None): that is what is returned, only for meta tensors and only during this model's forward
    (a pair of hooks on the instance), so the model takes exactly the path it takes on a real device.
    """
    import transformers.masking_utils as masking

    original = masking.find_packed_sequence_indices
    if not getattr(original, "_gradprobe_zoo", False):

        def find_packed_sequence_indices(position_ids: Tensor) -> Tensor | None:
            if _META_FORWARDS[0] and position_ids.device.type == "meta":
                return None
            return original(position_ids)

        find_packed_sequence_indices._gradprobe_zoo = True  # type: ignore[attr-defined]
        masking.find_packed_sequence_indices = find_packed_sequence_indices

    def enter(*_: object) -> None:
        _META_FORWARDS[0] += 1

    def leave(*_: object) -> None:
        _META_FORWARDS[0] -= 1

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)


def hf_llama_7b(batch: int = 1, seq: int = 1024) -> nn.Module:
    """``transformers.LlamaForCausalLM`` with Llama-7B sizes (6,738,415,616 params): meant for ``--device meta``.

    Built from a ``LlamaConfig`` only, never from downloaded weights; needs ``transformers``.
    """
    return _hf_llama(dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                          rms_norm_eps=1e-6, tie_word_embeddings=False), batch, seq)


def hf_tiny_llama(batch: int = 2, seq: int = 16, num_hidden_layers: int = 2) -> nn.Module:
    """``transformers.LlamaForCausalLM`` at toy size, for tests (same module names as :func:`hf_llama_7b`)."""
    return _hf_llama(dict(vocab_size=100, hidden_size=32, intermediate_size=88, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                          tie_word_embeddings=False), batch, seq)
