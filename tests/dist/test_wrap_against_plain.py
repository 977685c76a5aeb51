"""``--wrap ddp|fsdp|fsdp1`` under real torchrun, against plain PyTorch in the same job.

tests/dist/reference.py wraps the same model on every rank with DDP / ``fully_shard`` / ``FullyShardedDataParallel``
(the same --shard units, chosen by its own glob matching), runs the same inputs and loss, and writes each rank's
plain ``.grad`` facts, plus the gradients of an unwrapped copy run alone on the rank (before any reduction); then
gradprobe runs the same target with ``--wrap`` in the same processes.  Each test compares gradprobe's per-rank
facts with those."""

from __future__ import annotations

from typing import Any

import pytest
from dist_helpers import by_name, close, codes, finding

pytestmark = pytest.mark.slow


def run_both(reference, target: str, wrap: str, *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """gradprobe's JSON document and the plain facts of every rank, for ``TARGET --wrap WRAP EXTRA``."""
    ref_extra = ["--orig" if a == "--use-orig-params" else a for a in extra]
    r = reference([target, "--wrap", wrap, *ref_extra],
                  ["inspect", target, "--wrap", wrap, *extra, "-f", "json"])
    assert r.code == 0, r.err
    assert len(r.ranks) == 2
    doc = r.json()
    assert doc["world_size"] == 2
    assert doc["distributed"]["wrapper"]["kind"] == wrap and doc["distributed"]["wrapper"]["source"] == "--wrap"
    return doc, r.ranks


def assert_memory_matches(doc: dict[str, Any], refs: list[dict[str, Any]]) -> None:
    per_rank = {m["rank"]: m for m in doc["memory"]["per_rank"]}
    for ref in refs:
        mine = per_rank[ref["rank"]]
        assert mine["parameter_bytes"] == ref["memory"]["parameter_bytes"], ref["rank"]
        assert mine["gradient_bytes"] == ref["memory"]["gradient_bytes"], ref["rank"]


def assert_local_matches(params: dict[str, Any], refs: list[dict[str, Any]]) -> None:
    """The gradient autograd computed on each rank before the wrapper reduced it: an unwrapped copy's."""
    for ref in refs:
        for name, plain in ref["plain_local"].items():
            mine = params[name]["ranks"][ref["rank"]]
            if not plain["requires_grad"]:
                assert mine["local_grad"] is None, name
                continue
            assert mine["local_grad"] is (plain["grad"] != "none"), (ref["rank"], name)
            assert close(mine["local_grad_norm"], plain["grad_norm"]), (ref["rank"], name)


def test_wrap_ddp_against_plain_ddp(reference):
    doc, refs = run_both(reference, "dist_models:Tower", "ddp", "--shape", "4,16")
    params = by_name(doc)
    assert set(params) == set(refs[0]["params"])
    for ref in refs:
        for name, plain in ref["params"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert mine["requires_grad"] is plain["requires_grad"], name
            assert mine["local_shape"] == plain["local_shape"], name
            assert mine["grad"] == plain["grad"], (ref["rank"], name)  # the all-reduced .grad
            assert close(mine["grad_norm"], plain["grad_norm"]), (ref["rank"], name)
            if name in ref["local_grads"]:  # DDP's own hook order: the gradient before the all-reduce
                assert close(mine["local_grad_norm"], ref["local_grads"][name]), (ref["rank"], name)
    assert_local_matches(params, refs)
    # the ranks' batches differ: the local gradients differ, the reduced ones are equal
    adapter = [ref["plain_local"]["blocks.0.adapter.weight"]["grad_norm"] for ref in refs]
    assert not close(*adapter)
    assert_memory_matches(doc, refs)
    assert "dist-grad-differs" not in codes(doc)


def test_wrap_fsdp2_against_plain_fully_shard(reference):
    doc, refs = run_both(reference, "dist_models:Tower", "fsdp", "--shard", "blocks.*", "--shape", "4,16")
    params = by_name(doc)
    units = [u["name"] for u in doc["distributed"]["ranks"][0]["units"]]
    assert sorted(units) == sorted(refs[0]["fsdp2"]) == ["", "blocks.0", "blocks.1"]  # as the plain fully_shard calls
    for ref in refs:
        for name, plain in ref["params"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert params[name]["shape"] == plain["global_shape"], name
            assert mine["requires_grad"] is plain["requires_grad"], name
            assert mine["local_shape"] == plain["local_shape"], name  # the DTensor's .to_local()
            if plain["local_shape"][0] == 0:
                assert mine["grad"] == "no-shard", name
                continue
            assert mine["grad"] == plain["grad"], (ref["rank"], name)  # the reduce-scattered shard of .grad
            assert close(mine["grad_norm"], plain["grad_norm"]), (ref["rank"], name)
    assert_local_matches(params, refs)  # FSDP2's unsharded gradients before the reduce-scatter
    assert_memory_matches(doc, refs)


def test_wrap_fsdp1_against_plain_fully_sharded_data_parallel(reference):
    # units chosen so that each is all frozen or all trainable: use_orig_params=False accepts them
    doc, refs = run_both(reference, "dist_models:Tower", "fsdp1", "--shard", "blocks.*.body", "--shard",
                         "blocks.*.adapter", "--shape", "4,16")
    params = by_name(doc)
    assert set(params) == set(refs[0]["fsdp1"]["slices"])  # original names, not flat parameters
    units = {u["name"] for u in doc["distributed"]["ranks"][0]["units"]}
    assert units == set(refs[0]["fsdp1"]["units"])
    for ref in refs:
        units = {u["name"]: u for u in doc["distributed"]["ranks"][ref["rank"]]["units"]}
        for unit, plain in ref["fsdp1"]["units"].items():
            # a frozen unit's flat parameter has no .grad: no bytes
            assert units[unit]["flat_gradient_bytes"] == (plain["flat_grad_bytes"] or 0), (ref["rank"], unit)
        for name, plain in ref["fsdp1"]["slices"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert mine["requires_grad"] is ref["plain_local"][name]["requires_grad"], name
            assert mine["local_shape"] == [plain["numel"]], (ref["rank"], name)
            state, norm = plain["grad"]
            assert mine["grad"] == state, (ref["rank"], name)  # this rank's slice of the reduced flat gradient
            assert close(mine["grad_norm"], norm), (ref["rank"], name)
    assert_local_matches(params, refs)  # the gradients of the forward's views, before the reduce-scatter
    assert_memory_matches(doc, refs)
    assert "fsdp1-frozen-grad-memory" not in codes(doc)


def test_wrap_fsdp1_orig_params_against_plain(reference):
    # blocks mix a frozen body with a trainable adapter: allowed with use_orig_params=True, at a gradient cost
    doc, refs = run_both(reference, "dist_models:Tower", "fsdp1", "--shard", "blocks.*", "--use-orig-params",
                         "--shape", "4,16")
    params = by_name(doc)
    for ref in refs:
        units = {u["name"]: u for u in doc["distributed"]["ranks"][ref["rank"]]["units"]}
        for unit, plain in ref["fsdp1"]["units"].items():
            assert units[unit]["flat_gradient_bytes"] == (plain["flat_grad_bytes"] or 0), (ref["rank"], unit)
            assert units[unit]["frozen_gradient_bytes"] == plain["frozen_grad_bytes"], (ref["rank"], unit)
        for name, plain in ref["params"].items():  # use_orig_params=True: .grad of the original parameters
            mine = params[name]["ranks"][ref["rank"]]
            held = ref["fsdp1"]["slices"][name]["numel"]
            assert mine["requires_grad"] is plain["requires_grad"], name
            assert mine["local_shape"] == [held] == plain["local_shape"], (ref["rank"], name)
            if held == 0:
                assert mine["grad"] == "no-shard", (ref["rank"], name)
                continue
            assert mine["grad"] == plain["grad"], (ref["rank"], name)
            assert close(mine["grad_norm"], plain["grad_norm"]), (ref["rank"], name)
    assert_local_matches(params, refs)
    assert_memory_matches(doc, refs)
    assert [f["subject"] for f in doc["findings"] if f["code"] == "fsdp1-frozen-grad-memory"] == ["blocks.0",
                                                                                                 "blocks.1"]


@pytest.mark.parametrize("orig", [[], ["--use-orig-params"]], ids=["flat", "orig-params"])
def test_wrap_fsdp1_gradient_on_some_ranks_only(reference, orig):
    # rank 1's data takes the aux branch, rank 0's does not: one flat parameter, reduced across both ranks
    doc, refs = run_both(reference, "dist_models:DataBranch", "fsdp1", *orig)
    params = by_name(doc)
    local = {ref["rank"]: ref["plain_local"] for ref in refs}
    used = [r for r in sorted(local) if local[r]["aux.weight"]["grad"] != "none"]
    unused = [r for r in sorted(local) if local[r]["aux.weight"]["grad"] == "none"]
    assert used == [1] and unused == [0]  # the plain run on each rank says so first
    for ref in refs:
        for name, plain in ref["fsdp1"]["slices"].items():
            mine = params[name]["ranks"][ref["rank"]]
            state, norm = plain["grad"]
            assert mine["grad"] == state and close(mine["grad_norm"], norm), (ref["rank"], name)
    assert_local_matches(params, refs)  # before FSDP1's reduce-scatter: aux got nothing on rank 0
    assert [x["local_grad"] for x in params["aux.weight"]["ranks"]] == [False, True]
    differs = finding(doc, "dist-grad-differs")
    assert "aux.weight" in differs["message"] and "aux.bias" in differs["message"]
    assert "on rank 1 but none on rank 0" in differs["message"]
    assert "FSDP1" in differs["message"]
