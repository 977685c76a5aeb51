"""Reference models: sizes match the published architectures, meta builds are free, tiny ones train.

Large models are only ever built under ``torch.device("meta")`` here, so the whole file runs in a few
seconds on CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.fixtures import zoo


def n_params(model: nn.Module) -> int:
    """Distinct parameters (``parameters()`` yields a tied Parameter once)."""
    return sum(p.numel() for p in model.parameters())


def on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


def forward_backward(model: nn.Module) -> torch.Tensor:
    out = model(model.example_input_array)
    out.float().sum().backward()
    return out


# ------------------------------------------------------------------------------------- parameter counts


def mlp_formula(i: int, h: int, o: int, depth: int) -> int:
    widths = [i] + [h] * (depth - 1) + [o]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_mlp_param_count(depth: int) -> None:
    model = zoo.mlp(in_features=7, hidden=11, out_features=3, depth=depth)
    assert n_params(model) == mlp_formula(7, 11, 3, depth)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == depth


def test_mlp_default_count() -> None:
    assert n_params(zoo.mlp()) == 256 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10


def resnet_formula(blocks: tuple[int, ...], bottleneck: bool, width: int, num_classes: int) -> int:
    """Bias-free convs, BatchNorm = 2 params/channel, 1x1 projection shortcut when the shape changes."""
    exp = 4 if bottleneck else 1
    total = 3 * width * 7 * 7 + 2 * width  # stem conv1 + bn1
    cin = width
    for stage, n in enumerate(blocks):
        planes = width * 2**stage
        for b in range(n):
            if bottleneck:
                total += cin * planes + 2 * planes  # conv1 1x1 + bn1
                total += planes * planes * 9 + 2 * planes  # conv2 3x3 + bn2
                total += planes * planes * exp + 2 * planes * exp  # conv3 1x1 + bn3
            else:
                total += cin * planes * 9 + 2 * planes  # conv1 + bn1
                total += planes * planes * 9 + 2 * planes  # conv2 + bn2
            if b == 0 and (stage > 0 or cin != planes * exp):
                total += cin * planes * exp + 2 * planes * exp  # downsample conv + bn
            cin = planes * exp
    return total + cin * num_classes + num_classes  # fc


def test_resnet50_param_count() -> None:
    model = on_meta(zoo.resnet50)
    assert n_params(model) == resnet_formula((3, 4, 6, 3), True, 64, 1000) == 25_557_032
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_resnet_small_param_count() -> None:
    model = zoo.resnet_small()
    assert n_params(model) == resnet_formula((1, 1, 1, 1), False, 8, 10)
    assert all(isinstance(getattr(model, f"layer{i}")[0], zoo.BasicBlock) for i in range(1, 5))


def gpt_formula(vocab: int, block: int, layers: int, d: int) -> int:
    """wte + wpe + per layer (2 LayerNorms, qkv, attn proj, fc, mlp proj; all with bias) + ln_f.

    The tied lm_head adds nothing.
    """
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + block * d + layers * per_layer + 2 * d


def test_gpt2_small_param_count() -> None:
    model = on_meta(zoo.gpt2_small)
    assert n_params(model) == gpt_formula(50257, 1024, 12, 768) == 124_439_808


def test_gpt2_xl_param_count() -> None:
    model = on_meta(zoo.gpt2_xl)
    assert n_params(model) == gpt_formula(50257, 1024, 48, 1600) == 1_557_611_200
    assert model.config.n_head == 25


def test_tiny_gpt_param_count() -> None:
    model = zoo.tiny_gpt()
    c = model.config
    assert n_params(model) == gpt_formula(c.vocab_size, c.block_size, c.n_layer, c.n_embd)


def llama_formula(vocab: int, layers: int, d: int, f: int) -> int:
    """embed + untied lm_head + per layer (q,k,v,o; gate,up,down; 2 RMSNorm scales) + final norm."""
    return 2 * vocab * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d


def test_llama_7b_param_count() -> None:
    model = on_meta(zoo.llama_7b)
    assert n_params(model) == llama_formula(32000, 32, 4096, 11008) == 6_738_415_616


def test_tiny_llama_param_count() -> None:
    model = zoo.tiny_llama()
    c = model.config
    assert n_params(model) == llama_formula(
        c.vocab_size, c.num_hidden_layers, c.hidden_size, c.intermediate_size
    )


# ----------------------------------------------------------------------------------- tying and names


@pytest.mark.parametrize("factory", [zoo.tiny_gpt, zoo.gpt2_small, zoo.gpt2_xl], ids=lambda f: f.__name__)
def test_gpt_head_is_tied(factory: Callable[[], zoo.GPT]) -> None:
    model = on_meta(factory) if factory is not zoo.tiny_gpt else factory()
    assert model.lm_head.weight is model.transformer.wte.weight
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    assert {"lm_head.weight", "transformer.wte.weight"} <= names
    assert "lm_head.weight" not in dict(model.named_parameters())  # deduplicated under the first name


def test_llama_head_is_untied() -> None:
    model = zoo.tiny_llama()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not any(isinstance(m, nn.Linear) and m.bias is not None for m in model.modules())


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (zoo.mlp, ["layers.0", "layers.1", "layers.4"]),
        (zoo.resnet_small, ["conv1", "bn1", "layer1.0.conv1", "layer2.0.downsample.0", "fc"]),
        (
            zoo.tiny_gpt,
            ["transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj", "lm_head"],
        ),
        (
            zoo.tiny_llama,
            ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj"],
        ),
    ],
)
def test_module_names_look_real(factory: Callable[[], nn.Module], expected: list[str]) -> None:
    names = {n for n, _ in factory().named_modules()}
    assert set(expected) <= names


def test_gpt_dropout_is_configurable() -> None:
    model = zoo.tiny_gpt(dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 + 2 * model.config.n_layer  # embedding drop + resid_dropout + mlp.dropout
    assert all(m.p == 0.3 for m in drops)
    assert all(b.attn.attn_dropout_p == 0.3 for b in model.transformer.h)
    assert all(m.p == 0.1 for m in zoo.tiny_gpt().modules() if isinstance(m, nn.Dropout))


# -------------------------------------------------------------------------------------- example inputs

CHEAP = [zoo.mlp, zoo.resnet_small, zoo.tiny_gpt, zoo.tiny_llama]
ALL = [*CHEAP, zoo.resnet50, zoo.gpt2_small, zoo.gpt2_xl, zoo.llama_7b]

EXPECTED_INPUT = {
    zoo.mlp: ((64, 256), torch.float32),
    zoo.resnet_small: ((4, 3, 32, 32), torch.float32),
    zoo.resnet50: ((2, 3, 128, 128), torch.float32),
    zoo.tiny_gpt: ((2, 16), torch.int64),
    zoo.gpt2_small: ((1, 128), torch.int64),
    zoo.gpt2_xl: ((1, 1024), torch.int64),
    zoo.tiny_llama: ((2, 16), torch.int64),
    zoo.llama_7b: ((1, 1024), torch.int64),
}


@pytest.mark.parametrize("factory", ALL, ids=lambda f: f.__name__)
def test_example_input_follows_build_device(factory: Callable[[], nn.Module]) -> None:
    model = on_meta(factory)
    x = model.example_input_array
    shape, dtype = EXPECTED_INPUT[factory]
    assert x.is_meta and tuple(x.shape) == shape and x.dtype == dtype
    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())


@pytest.mark.parametrize("factory", CHEAP, ids=lambda f: f.__name__)
def test_example_input_on_cpu(factory: Callable[[], nn.Module]) -> None:
    model = factory()
    x = model.example_input_array
    shape, dtype = EXPECTED_INPUT[factory]
    assert x.device.type == "cpu" and tuple(x.shape) == shape and x.dtype == dtype
    if dtype == torch.int64:
        assert 0 <= int(x.min()) and int(x.max()) < model.config.vocab_size


def test_factories_take_batch_and_seq() -> None:
    assert zoo.tiny_gpt(batch=3, seq=5).example_input_array.shape == (3, 5)
    assert zoo.tiny_llama(batch=3, seq=5).example_input_array.shape == (3, 5)
    assert zoo.resnet_small(batch=1, image=16).example_input_array.shape == (1, 3, 16, 16)
    assert zoo.mlp(batch=5, in_features=4).example_input_array.shape == (5, 4)
    with pytest.raises(ValueError):
        zoo.tiny_gpt(seq=65)  # beyond block_size


# ---------------------------------------------------------------------------------- meta end to end


@pytest.mark.parametrize("factory", [zoo.llama_7b, zoo.gpt2_xl], ids=lambda f: f.__name__)
@pytest.mark.slow
def test_big_model_meta_build_forward_backward(factory: Callable[[], nn.Module]) -> None:
    model = on_meta(factory)  # build time is measured in benchmarks/run.py, not asserted here
    assert model.training  # dropout (GPT) must also run on meta in train mode
    logits = forward_backward(model)
    b, t = model.example_input_array.shape
    vocab = model.config.vocab_size
    assert logits.is_meta and logits.shape == (b, t, vocab) and logits.dtype == torch.float32
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.is_meta and p.grad.shape == p.shape, name


# ----------------------------------------------------------------------------------- CPU end to end


@pytest.mark.parametrize("factory", [pytest.param(f, marks=pytest.mark.slow) if f is zoo.resnet_small else f
                                     for f in CHEAP], ids=lambda f: f.__name__)
def test_cheap_model_cpu_forward_backward(factory: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = factory()
    out = forward_backward(model)
    assert torch.isfinite(out).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_resnet_batchnorm_running_stats_update_in_train() -> None:
    model = zoo.resnet_small()
    before = model.bn1.running_mean.clone()
    model(model.example_input_array)
    assert not torch.equal(before, model.bn1.running_mean)


@pytest.mark.parametrize("factory", [zoo.tiny_gpt, zoo.tiny_llama], ids=lambda f: f.__name__)
def test_decoders_are_causal(factory: Callable[[], nn.Module]) -> None:
    """Changing the last token must leave every earlier position's logits untouched."""
    torch.manual_seed(0)
    model = factory().eval()
    idx = model.example_input_array
    idx2 = idx.clone()
    idx2[:, -1] = (idx2[:, -1] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(idx2)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_llama_rotary_makes_order_matter() -> None:
    """One causal attention layer without positions is blind to the order of the prefix; with rotary
    embeddings (the only position signal in Llama) it is not."""
    torch.manual_seed(0)
    model = zoo.tiny_llama(num_hidden_layers=1).eval()
    idx = torch.tensor([[3, 7, 11, 5]])
    swapped = torch.tensor([[7, 3, 11, 5]])
    with torch.no_grad():
        a, b = model(idx)[0, -1], model(swapped)[0, -1]
    assert not torch.allclose(a, b)
