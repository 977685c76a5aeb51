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


def test_compare_modes_through_fsdp2(nproc):
    """A forward-only run leaves FSDP2's root unit unsharded; restoring the captured (sharded) registrations behind
    FSDP2's back made every later forward mix DTensor and Tensor: all six rows failed."""
    import contextlib

    import torch
    from dist_models import Tower

    model = Tower()
    expected = {}  # plain PyTorch, unwrapped: what each mode's output is (wrapping changes none of it)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        for grad, ctx in (("grad", contextlib.nullcontext), ("no_grad", torch.no_grad),
                          ("inference_mode", torch.inference_mode)):
            with ctx():
                out = model(model.example_input_array)
            expected[mode, grad] = (out.requires_grad, out.is_inference())
    r = nproc("compare-modes", "dist_models:fsdp2_tower", "--repeat", "1", "-f", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert any("wrapper: fsdp" in n for n in doc["notes"])
    rows = {(row["mode"], row["grad_mode"]): row for row in doc["rows"]}
    assert [k for k, row in rows.items() if not row["ok"]] == [], [row["error"] for row in rows.values()]
    assert {k: (row["output_requires_grad"], row["is_inference"]) for k, row in rows.items()} == expected
