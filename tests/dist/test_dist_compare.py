"""compare-modes under torchrun: every rank compares through the wrapper; rank 0 reports, naming the wrapper."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_compare_modes_through_ddp(nproc):
    r = nproc("compare-modes", "dist_models:ddp_net", "--repeat", "1", "-f", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["world_size"] == 2
    assert any("wrapper: ddp" in n for n in doc["notes"])
    text = json.dumps(doc)
    assert "bn.running_mean" in text and "module.bn" not in text  # the user's names
