"""``--budget SIZE``: sizes to bytes by hand arithmetic (GB = 10**9, GiB = 2**30), and what is not a size."""

from __future__ import annotations

import pytest

from gradprobe.errors import UsageError
from gradprobe.judges.budget import parse_budget


@pytest.mark.parametrize(("text", "expected"), [
    ("80GB", 80 * 10**9), ("80GiB", 80 * 2**30), ("1.5T", 15 * 10**11), ("1.5TiB", 3 * 2**39),
    ("512 MiB", 512 * 2**20), ("1", 1), ("2.5", 2),
])
def test_sizes_are_bytes(text: str, expected: int) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["0.5", "0.9B", "0", "0GiB", "abc", "-1GB", "80XB", ""])
def test_a_budget_under_one_byte_or_not_a_size_is_a_usage_error(text: str) -> None:
    # '0.5' was a budget of 0 B: every step 'does not fit' (exit 1) instead of a usage error (exit 2)
    with pytest.raises(UsageError, match="is not a size"):
        parse_budget(text)
