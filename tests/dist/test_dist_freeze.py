"""freeze-check under torchrun: every rank checks its own freeze; violations name the ranks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.slow


def test_freeze_violated_on_one_rank_names_it(nproc, tmp_path):
    junit = tmp_path / "freeze.xml"
    r = nproc("freeze-check", "dist_models:rank_frozen", "--frozen", "stem", "--trainable", "head",
              "--trainable", "bn", "-f", "json", "--junit", str(junit))
    assert r.code == 1, r.err
    doc = json.loads(r.out)  # one document, from rank 0
    assert doc["world_size"] == 2 and doc["passed"] is False
    violations = doc["violations"]
    assert {v["subject"] for v in violations} == {"stem.weight", "stem.bias"}
    assert all("(on rank 0)" in v["message"] for v in violations)  # rank 1 freezes stem, rank 0 does not
    cases = ET.parse(junit).getroot()
    assert int(cases.get("failures", cases.find("testsuite").get("failures"))) >= 1


def test_freeze_holding_on_every_rank_under_plain_torchrun(torchrun):
    r = torchrun("freeze-check", "dist_models:net", "--wrap", "ddp", "--trainable", "stem", "--trainable", "bn",
                 "--trainable", "head")
    assert r.code == 0, r.err
    assert r.out.count("PASS: the freeze holds") == 1
    assert "every rank checked its own freeze" in r.out


def test_freeze_check_through_fsdp2_matches_pytorch(reference):
    """FSDP2 parameters are DTensors: restoring them after the run (one _foreach_copy_ of every parameter) raised
    'aten._foreach_copy_.default does not have a sharding strategy registered' on every rank."""
    r = reference(["dist_models:fsdp2_tower"],
                  ["freeze-check", "dist_models:fsdp2_tower", "--frozen", "blocks.*.body", "--trainable",
                   "blocks.*.adapter", "--trainable", "out", "-f", "json"])
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["world_size"] == 2 and doc["passed"] is True, doc.get("violations")
    for ref in r.ranks:  # plain PyTorch on every rank: what the freeze-check verdict rests on
        for name, p in ref["params"].items():
            frozen = ".body." in name
            assert p["requires_grad"] is not frozen, name
            assert p["grad"] == ("none" if frozen else "nonzero"), name
