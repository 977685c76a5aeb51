"""Every source of example inputs (issue 2 §3), in the documented order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradprobe.api import load, probe
from gradprobe.errors import InputError, UsageError
from tests.fixtures import models as mi

FILE = str(Path(mi.__file__))


def _plain_loss(model: torch.nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(*args, **kwargs).sum())


# ------------------------------------------------------------------ --inputs SPEC


def test_inputs_fn_returning_tensor() -> None:
    loaded, example = load(f"{FILE}:MLP", inputs=f"{FILE}:inputs_tensor")
    assert example.kwargs == {}
    assert len(example.args) == 1 and torch.equal(example.args[0], torch.ones(mi.B, mi.IN))
    report = probe(loaded.model, example)
    assert report.facts.loss == pytest.approx(_plain_loss(loaded.model, torch.ones(mi.B, mi.IN)), rel=1e-6)


def test_inputs_fn_returning_tuple_gives_positional_args() -> None:
    loaded, example = load(f"{FILE}:TwoInputs", inputs=f"{FILE}:inputs_tuple")
    assert [tuple(a.shape) for a in example.args] == [(mi.B, mi.IN), (mi.B, 2)]
    report = probe(loaded.model, example)
    expected = _plain_loss(loaded.model, torch.ones(mi.B, mi.IN), torch.ones(mi.B, 2))
    assert report.facts.loss == pytest.approx(expected, rel=1e-6)


def test_inputs_fn_returning_dict_gives_keyword_args() -> None:
    loaded, example = load(f"{FILE}:KeywordInputs", inputs=f"{FILE}:inputs_dict")
    assert example.args == () and set(example.kwargs) == {"x", "scale"}
    report = probe(loaded.model, example)
    expected = _plain_loss(loaded.model, x=torch.ones(mi.B, mi.IN), scale=torch.full((mi.B, 1), 3.0))
    assert report.facts.loss == pytest.approx(expected, rel=1e-6)


def test_inputs_fn_taking_the_model() -> None:
    loaded, example = load(f"{FILE}:MLP", inputs=f"{FILE}:inputs_from_model")
    assert torch.equal(example.args[0], torch.full((2, mi.IN), 0.5))
    report = probe(loaded.model, example)
    assert report.facts.outputs[0].shape == (2, mi.OUT)


def test_inputs_from_a_module_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(FILE).parents[2])
    _, example = load(f"{FILE}:MLP", inputs="tests.fixtures.models:inputs_tensor")
    assert torch.equal(example.args[0], torch.ones(mi.B, mi.IN))


def test_inputs_take_precedence_over_shape_and_example_array() -> None:
    _, example = load(f"{FILE}:MLP", inputs=f"{FILE}:inputs_tensor", shapes=["2,6"])
    assert example.source.startswith("--inputs")
    assert tuple(example.args[0].shape) == (mi.B, mi.IN)


@pytest.mark.parametrize(("fn", "message"), [
    ("inputs_none", "gave None"),
    ("inputs_raising", "raised OSError: dataset missing on purpose"),
    ("not_a_model", "gave int"),
])
def test_bad_inputs_fn(fn: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load(f"{FILE}:MLP", inputs=f"{FILE}:{fn}")


# ------------------------------------------------------------------ --shape / --dtype / --high


def test_shape_overrides_example_input_array() -> None:
    loaded, example = load(f"{FILE}:MLP", shapes=["2,6"])
    assert example.source == "--shape"
    assert tuple(example.args[0].shape) == (2, mi.IN) and example.args[0].dtype == torch.float32
    assert probe(loaded.model, example).facts.outputs[0].shape == (2, mi.OUT)


def test_shape_repeated_gives_positional_inputs() -> None:
    loaded, example = load(f"{FILE}:TwoInputs", shapes=["3,6", "3,2"])
    assert [tuple(a.shape) for a in example.args] == [(3, mi.IN), (3, 2)]
    report = probe(loaded.model, example)
    assert report.facts.outputs[0].shape == (3, mi.OUT)
    assert {t.module for t in report.facts.tensors} == {"a", "b", ""}


def test_shape_with_float64_dtype() -> None:
    _, example = load(f"{FILE}:NoExample", shapes=["2,6"], dtype="float64")
    assert example.args[0].dtype == torch.float64


@pytest.mark.parametrize("high", [1, 2, mi.TokenModel.VOCAB])
def test_integer_dtype_draws_from_zero_to_high(high: int) -> None:
    loaded, example = load(f"{FILE}:TokenModel", shapes=["64,5"], dtype="int64", high=high)
    ids = example.args[0]
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (64, 5)
    assert int(ids.min()) >= 0 and int(ids.max()) < high
    if high > 2:
        assert len(torch.unique(ids)) > 2  # really drawn, not constant
    report = probe(loaded.model, example)
    assert report.facts.backward
    assert torch.equal(loaded.model.seen[-1], ids)  # the model ran on exactly these ids


def test_seed_controls_random_inputs() -> None:
    _, a = load(f"{FILE}:NoExample", shapes=["3,6"], seed=1)
    _, b = load(f"{FILE}:NoExample", shapes=["3,6"], seed=1)
    _, c = load(f"{FILE}:NoExample", shapes=["3,6"], seed=2)
    assert torch.equal(a.args[0], b.args[0])
    assert not torch.equal(a.args[0], c.args[0])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shapes": ["4,x"]}, "--shape '4,x' is not a shape"),
    ({"shapes": ["4,-1"]}, "is not a shape"),
    ({"shapes": ["2,6"], "dtype": "int99"}, "--dtype 'int99' is not a dtype"),
    ({"shapes": ["2,6"], "dtype": "int64", "high": 0}, "--high 0"),
])
def test_bad_shape_options(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(f"{FILE}:NoExample", **kwargs)


# ------------------------------------------------------------------ example_input_array


def test_example_input_array_tensor() -> None:
    loaded, example = load(f"{FILE}:MLP")
    assert example.source == "model.example_input_array"
    assert torch.equal(example.args[0], loaded.model.example_input_array)


def test_example_input_array_tuple() -> None:
    loaded, example = load(f"{FILE}:TupleExample")
    assert len(example.args) == 2
    assert all(torch.equal(a, b) for a, b in zip(example.args, loaded.model.example_input_array, strict=True))
    report = probe(loaded.model, example)
    assert report.facts.loss == pytest.approx(_plain_loss(loaded.model, *example.args), rel=1e-6)


def test_example_input_array_dict() -> None:
    loaded, example = load(f"{FILE}:KeywordInputs")
    assert example.args == () and set(example.kwargs) == {"x", "scale"}
    report = probe(loaded.model, example)
    assert report.facts.loss == pytest.approx(_plain_loss(loaded.model, **example.kwargs), rel=1e-6)


def test_probe_api_accepts_raw_inputs() -> None:
    model = mi.TwoInputs()
    a, b = torch.randn(2, mi.IN), torch.randn(2, 2)
    assert probe(model, (a, b)).facts.loss == pytest.approx(_plain_loss(model, a, b), rel=1e-6)
    assert probe(model, {"a": a, "b": b}).facts.loss == pytest.approx(_plain_loss(model, a, b), rel=1e-6)
    mlp = mi.MLP()
    assert probe(mlp, a).facts.loss == pytest.approx(_plain_loss(mlp, a), rel=1e-6)
    assert probe(mlp).facts.outputs[0].shape == (mi.B, mi.OUT)  # None: example_input_array


def test_missing_inputs_say_how_to_provide_them() -> None:
    with pytest.raises(InputError) as info:
        load(f"{FILE}:NoExample")
    message = str(info.value)
    for needed in ("--shape", "--inputs", "example_input_array", "--dtype int64"):
        assert needed in message
    assert "\n" not in message
