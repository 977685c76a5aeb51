"""Small models and input functions for the ``inspect`` tests.

Every model here is tiny (a few hundred parameters) so a run costs milliseconds; each one exists to
show one behaviour of autograd or one mistake.  The module is imported by the tests and also named
as a file target (``tests/models_inspect.py:MLP``) by the subprocess tests.
"""

from __future__ import annotations

import dataclasses
import sys
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import nn

B, IN, HIDDEN, OUT = 4, 6, 5, 3


class MLP(nn.Module):
    """Linear(IN, hidden) → ReLU → Linear(hidden, OUT); its saved activations are known exactly."""

    def __init__(self, hidden: int = HIDDEN, batch: int = B) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN, hidden), nn.ReLU(), nn.Linear(hidden, OUT))
        self.example_input_array = torch.randn(batch, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_mlp(hidden: int = HIDDEN) -> MLP:
    """A factory function target."""
    return MLP(hidden=hidden)


def make_not_a_module() -> dict[str, int]:
    """A factory that returns the wrong thing."""
    return {"hidden": 3}


def make_raising() -> nn.Module:
    raise RuntimeError("factory exploded on purpose")


mlp_instance = MLP()
registry = SimpleNamespace(model=MLP, factory=make_mlp)
not_a_model = 42


class NotAModule:
    """A class that is not an ``nn.Module``."""


class NeedsArgs(nn.Module):
    """A constructor with a required argument and no default."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, hidden)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class RaisingInit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise ValueError("constructor exploded on purpose")


class NoExample(nn.Module):
    """No ``example_input_array``: inputs must come from --shape or --inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class TwoInputs(nn.Module):
    """Two positional inputs of different widths."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(IN, OUT)
        self.b = nn.Linear(2, OUT)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a(a) + self.b(b)


class KeywordInputs(nn.Module):
    """Keyword inputs: ``x`` and an optional multiplicative ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = {"x": torch.randn(B, IN), "scale": torch.full((B, 1), 2.0)}

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.lin(x)
        return y if scale is None else y * scale


class TupleExample(TwoInputs):
    """``example_input_array`` as a tuple of positional inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = (torch.randn(B, IN), torch.randn(B, 2))


class TokenModel(nn.Module):
    """Integer token ids → embedding → linear: needs ``--dtype int64 --high VOCAB``."""

    VOCAB = 11

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(self.VOCAB, 4)
        self.out = nn.Linear(4, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(ids.clone())
        return self.out(self.emb(ids))


# ------------------------------------------------------------------ inputs functions


def inputs_tensor() -> torch.Tensor:
    return torch.ones(B, IN)


def inputs_tuple() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(B, IN), torch.ones(B, 2)


def inputs_dict() -> dict[str, torch.Tensor]:
    return {"x": torch.ones(B, IN), "scale": torch.full((B, 1), 3.0)}


def inputs_from_model(model: nn.Module) -> torch.Tensor:
    """Takes the model as its one argument (to read a size from it)."""
    width = model.net[0].in_features  # type: ignore[index]
    return torch.full((2, width), 0.5)


def inputs_none() -> None:
    return None


def inputs_raising() -> torch.Tensor:
    raise OSError("dataset missing on purpose")


def loss_first_column(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A ``--loss MOD:fn`` target."""
    return outputs[:, 0].sum()


# ------------------------------------------------------------------ output structures


class Pair(NamedTuple):
    logits: torch.Tensor
    hidden: torch.Tensor


@dataclasses.dataclass
class DataOut:
    logits: torch.Tensor
    hidden: torch.Tensor
    step: int = 0


class StructuredOut(nn.Module):
    """Returns its two tensors (``logits``, ``hidden``) packed in the structure named by ``kind``."""

    def __init__(self, kind: str = "tuple") -> None:
        super().__init__()
        self.kind = kind
        self.enc = nn.Linear(IN, HIDDEN)
        self.dec = nn.Linear(HIDDEN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> object:
        hidden = torch.tanh(self.enc(x))
        logits = self.dec(hidden)
        if self.kind == "tuple":
            return logits, hidden
        if self.kind == "list":
            return [logits, hidden]
        if self.kind == "dict":
            return {"logits": logits, "hidden": hidden}
        if self.kind == "nested":
            return {"logits": logits, "extra": (hidden, [hidden * 2, "not a tensor"])}
        if self.kind == "dataclass":
            return DataOut(logits, hidden)
        if self.kind == "namedtuple":
            return Pair(logits, hidden)
        if self.kind == "hf":
            from transformers.utils import ModelOutput

            @dataclasses.dataclass
            class CausalOut(ModelOutput):
                loss: torch.Tensor | None = None
                logits: torch.Tensor | None = None
                hidden: torch.Tensor | None = None

            return CausalOut(logits=logits, hidden=hidden)
        raise ValueError(self.kind)


class IntOutput(nn.Module):
    """A float output and an integer one: the default loss must skip the integer tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y, y.argmax(dim=1)


class ReturnsNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> None:
        self.lin(x)


# ------------------------------------------------------------------ findings


class NeverCalled(nn.Module):
    """``aux`` is defined but never called: grad-none, cause "never called"."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(IN, OUT)
        self.aux = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class NoGradInside(nn.Module):
    """``backbone`` runs under ``torch.no_grad()`` inside forward while its parameters require grad."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU())
        self.head = nn.Linear(HIDDEN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


class DetachInside(nn.Module):
    """``backbone``'s output is detached before the head: the graph exists but the loss never reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(IN, HIDDEN)
        self.head = nn.Linear(HIDDEN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).detach())


class ZeroGrad(nn.Module):
    """``gate`` is multiplied by zero: it gets a gradient, and the gradient is exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(IN, OUT)
        self.gate = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + 0.0 * self.gate(x)


class FrozenBackbone(nn.Module):
    """A frozen backbone with two BatchNorms; ``fixed=True`` keeps it in eval mode in ``train()``."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.fixed = fixed
        self.backbone = nn.Sequential(
            nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
        )
        self.head = nn.Linear(HIDDEN, OUT)
        self.backbone.requires_grad_(False)
        self.example_input_array = torch.randn(B, IN)

    def train(self, mode: bool = True) -> FrozenBackbone:
        super().train(mode)
        if self.fixed:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TrainableBN(nn.Module):
    """BatchNorm whose parameters train: its statistics should update, no finding."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, HIDDEN)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(HIDDEN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.lin(x)))


class RequiresGradAttr(nn.Module):
    """``self.backbone.requires_grad = False`` sets a plain attribute: nothing is frozen."""

    def __init__(self, correct: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Linear(IN, HIDDEN)
        self.head = nn.Linear(HIDDEN, OUT)
        if correct:
            self.backbone.requires_grad_(False)
        else:
            self.backbone.requires_grad = False
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class InferenceInside(nn.Module):
    """``torch.inference_mode()`` inside forward: the output is an inference tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.lin(x)


class NonFinite(nn.Module):
    """The second output is ``log`` of a negative number: NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y, torch.log(-(y * y) - 1.0)


class CalledTwice(nn.Module):
    """One shared block applied twice: calls 0 and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(IN, IN)
        self.head = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.block(x))))


class Tied(nn.Module):
    """A language-model-style tie: ``lm_head.weight`` is ``emb.weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lm_head = nn.Linear(4, 7, bias=False)
        self.lm_head.weight = self.emb.weight
        self.example_input_array = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.emb(ids))


class Empty(nn.Module):
    """No parameters at all: the output does not require grad."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


# ------------------------------------------------------------------ in-place and failures


class InplaceBad(nn.Module):
    """``sigmoid`` saves its output for backward; ``mul_`` then changes it: backward must raise."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.lin(x))
        y.mul_(2)
        return y


class InplaceFine(nn.Module):
    """In-place ops autograd accepts: ``add_`` then ``relu_`` on a Linear output (addmm saves its input, not its
    output, and nothing changes relu's saved result afterwards)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(IN, HIDDEN)
        self.lin2 = nn.Linear(HIDDEN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin1(x)
        h.add_(1.0)
        h.relu_()
        return self.lin2(h)


class Boom(nn.Module):
    """A submodule that raises in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom in forward")


class RaisesInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(IN, HIDDEN), Boom())
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class ShapeMismatch(nn.Module):
    """``second`` expects 7 features but gets HIDDEN: torch raises inside ``layers.1``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Linear(7, OUT))
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("backward exploded on purpose")


class RaisesInBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BadBackward.apply(self.lin(x))


class InterruptInForward(nn.Module):
    """Simulates Ctrl-C in the middle of forward, after BatchNorm already updated its statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn(self.lin(x))
        raise KeyboardInterrupt


class ChattyModel(nn.Module):
    """Prints in the constructor and in forward; stdout must stay clean for ``--format json``."""

    def __init__(self) -> None:
        super().__init__()
        print("chatty: constructor output")
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("chatty: forward output")
        sys.stdout.write("chatty: raw write\n")
        return self.lin(x)


class RaisesInOwnForward(nn.Module):
    """The model's own forward raises after its submodule returned."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).view(7, 7)


class PartlyInference(nn.Module):
    """A trainable output plus a statistic computed under ``inference_mode``: backward must still run."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, OUT)
        self.example_input_array = torch.randn(B, IN)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        with torch.inference_mode():
            stat = x.mean(dim=1)
        return y, stat
