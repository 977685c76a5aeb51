"""compare-modes' output diff takes a one-pass path when no NaN/Inf is involved (issue 16); every figure it
gives must equal the plain element-wise definition: max |x - y| with NaN == NaN, and the largest finite |value|."""

from __future__ import annotations

import math

import pytest
import torch

from gradprobe.run.compare.outputs import _magnitude, compare_outputs, max_abs_diff


def _plain_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """The definition, element by element in float64 (complex128): NaN on both sides equal, on one side infinite."""
    wide = torch.complex128 if x.is_complex() else torch.float64
    worst = 0.0
    for a, b in zip(x.to(wide).flatten().tolist(), y.to(wide).flatten().tolist(), strict=True):
        a_nan, b_nan = a != a, b != b
        if a_nan and b_nan:
            continue
        d = abs(a - b)
        if d != d:  # one NaN, or the same infinity on both sides (inf - inf), as the engine always counted it
            return math.inf
        worst = max(worst, d)
    return worst


def _plain_magnitude(t: torch.Tensor) -> float:
    finite = [abs(v) for v in t.to(torch.complex128 if t.is_complex() else torch.float64).flatten().tolist()
              if not (isinstance(v, complex) and not math.isfinite(abs(v))) and math.isfinite(abs(v))]
    return max(finite, default=0.0)


def _cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 7, generator=g)
    b = a + 1e-3 * torch.randn(40, 7, generator=g)
    nan_both, nan_one = a.clone(), b.clone()
    nan_both[3, 2] = float("nan")
    nan_one[3, 2] = float("nan")
    inf_a = a.clone()
    inf_a[0, 0] = float("inf")
    inf_b = b.clone()
    inf_b[0, 0] = float("inf")
    neg = -torch.zeros(5)
    return [
        ("close", a, b), ("same", a, a.clone()), ("nan both sides", nan_both, nan_both.clone()),
        ("nan one side", nan_both, b), ("nan other side", a, nan_one), ("same inf", inf_a, inf_b),
        ("inf one side", inf_a, b), ("neg zeros", neg, torch.zeros(5)), ("zeros", torch.zeros(3), torch.zeros(3)),
        ("float64", a.double(), b.double()), ("half", a.half(), b.half()), ("bf16", a.bfloat16(), b.bfloat16()),
        ("complex", torch.complex(a, b), torch.complex(b, a)),
        ("complex nan", torch.complex(nan_both, a), torch.complex(nan_both, a)),
        ("huge", torch.full((4,), 3e38), torch.full((4,), -3e38)),
        ("all nan", torch.full((3,), float("nan")), torch.full((3,), float("nan"))),
    ]


@pytest.mark.parametrize(("name", "x", "y"), _cases(), ids=[c[0] for c in _cases()])
def test_diff_and_magnitude_match_the_definition(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    want = _plain_diff(x, y)
    got = max_abs_diff(x, y)
    if x.dtype in (torch.float16, torch.bfloat16, torch.float32):  # computed in float32: compare as float32
        want = float(torch.tensor(want, dtype=torch.float32)) if math.isfinite(want) else want
    assert got == pytest.approx(want, rel=1e-6, abs=0) or got == want, name
    for t in (x, y):
        mag = _magnitude(t)
        assert mag == pytest.approx(_plain_magnitude(t), rel=1e-6, abs=0), name
        assert math.copysign(1.0, mag) == 1.0, name  # never -0.0: it shows up in the JSON


def test_compare_outputs_reports_the_same_tolerance_for_equal_outputs() -> None:
    x = torch.randn(6, 5)
    diff = compare_outputs([("", x)], [("", x.clone())])
    assert diff.max_abs_diff == 0.0 and diff.within_tolerance is True
    assert diff.tolerance == pytest.approx(1e-5 * float(x.abs().max()), rel=1e-12)
