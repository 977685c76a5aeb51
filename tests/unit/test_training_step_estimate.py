"""The training-step estimate as a pure function of hand-made facts (``run/estimate.py``)."""

from __future__ import annotations

import pytest

from gradprobe.errors import UsageError
from gradprobe.facts.run import MemoryFact, ModuleMemory, ParamFact
from gradprobe.run.estimate import training_step

MIB = 2**20


def param(name: str, numel: int, dtype: str = "float32", requires_grad: bool = True, grad: str | None = "nonzero",
          ) -> ParamFact:
    size = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8}[dtype]
    return ParamFact(name, (), (numel,), dtype, requires_grad, grad if requires_grad else "none", None, "", True,
                     numel, numel * size)


def memory(params: list[ParamFact], forward: int, backward: int | None, by_module: tuple[ModuleMemory, ...] = (),
           saved: int = 0) -> MemoryFact:
    grads = None if backward is None else sum(p.nbytes for p in params if p.requires_grad)
    return MemoryFact("test", forward, backward, saved, sum(p.nbytes for p in params), grads, by_module=by_module)


PARAMS = [param("w", 1000), param("frozen", 500, requires_grad=False), param("b", 24)]


@pytest.mark.parametrize(("optimizer", "copies"), [("sgd", 0), ("momentum", 1), ("adam", 2)])
def test_optimizer_state_is_copies_of_the_trainable_parameters(optimizer: str, copies: int) -> None:
    step = training_step(memory(PARAMS, 10 * MIB, 12 * MIB), PARAMS, optimizer)
    trainable = (1000 + 24) * 4
    assert step.optimizer_state_bytes == copies * trainable
    assert step.parameter_bytes == (1000 + 500 + 24) * 4
    assert step.gradient_bytes == trainable
    assert step.activation_peak_bytes == 12 * MIB
    assert step.total_bytes == step.parameter_bytes + copies * trainable + 12 * MIB


def test_forward_peak_can_be_the_larger_one() -> None:
    step = training_step(memory(PARAMS, 20 * MIB, 12 * MIB), PARAMS, "sgd")
    assert step.activation_peak_bytes == 20 * MIB
    assert step.total_bytes == (1000 + 500 + 24) * 4 + 20 * MIB


def test_scaled_param_dtype_on_a_real_device() -> None:
    """Parameters, gradients and optimizer state in bf16; the backward peak's gradients re-priced too."""
    m = memory(PARAMS, 10 * MIB, 12 * MIB)
    step = training_step(m, PARAMS, "adam", "bfloat16")
    assert step.parameter_bytes == (1000 + 500 + 24) * 2
    assert step.gradient_bytes == (1000 + 24) * 2
    assert step.optimizer_state_bytes == 2 * (1000 + 24) * 2
    assert step.activation_peak_bytes == 12 * MIB - (1000 + 24) * 4 + (1000 + 24) * 2
    assert "scaled" in step.method and step.param_dtype == "bfloat16"


def test_cast_run_is_taken_as_measured() -> None:
    params = [param("w", 1000, "bfloat16")]
    step = training_step(memory(params, MIB, 2 * MIB), params, "adam", "bfloat16", cast=True)
    assert step.parameter_bytes == 2000 and step.optimizer_state_bytes == 4000
    assert "cast" in step.method


def test_integer_parameters_keep_their_size() -> None:
    params = [param("w", 100), param("index", 10, "int64", requires_grad=False)]
    step = training_step(memory(params, 0, 0), params, "sgd", "float16")
    assert step.parameter_bytes == 100 * 2 + 10 * 8


def test_without_backward_every_trainable_parameter_would_get_a_gradient() -> None:
    step = training_step(memory(PARAMS, 5 * MIB, None), PARAMS, "sgd")
    assert step.gradient_bytes == (1000 + 24) * 4
    assert step.total_bytes == (1000 + 500 + 24) * 4 + 5 * MIB
    # the backward peak was not measured: the estimate says it is a lower bound instead of passing as a figure
    assert step.backward_measured is False
    assert "lower bound" in step.method


def test_with_backward_the_figure_is_measured() -> None:
    step = training_step(memory(PARAMS, 5 * MIB, 6 * MIB), PARAMS, "sgd")
    assert step.backward_measured is True
    assert "lower bound" not in step.method


@pytest.mark.parametrize(("optimizer", "dtype"), [("lion", None), ("adam", "int8")])
def test_bad_names_are_usage_errors(optimizer: str, dtype: str | None) -> None:
    with pytest.raises(UsageError):
        training_step(memory(PARAMS, 0, 0), PARAMS, optimizer, dtype)
