"""``--wrap ddp|fsdp|fsdp1`` on plain targets, rank-dependent models without a wrapper, and four ranks."""

from __future__ import annotations

import pytest
from dist_helpers import by_name, close, codes, finding

pytestmark = pytest.mark.slow


def test_wrap_fsdp_matches_pytorch_and_values_differing_before_the_wrap(reference):
    # every rank seeds its own initialisation: FSDP2 would shard (and train) a mix of the ranks' values
    r = reference(["dist_models:net_rank_seeded", "--wrap", "fsdp", "--shape", "6,8"],
                  ["inspect", "dist_models:net_rank_seeded", "--wrap", "fsdp", "--shape", "6,8", "-f", "json"])
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["distributed"]["wrapper"] == {**doc["distributed"]["wrapper"], "kind": "fsdp", "source": "--wrap"}
    params = by_name(doc)
    for ref in r.ranks:
        for name, expected in ref["params"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert mine["local_shape"] == expected["local_shape"], name
            assert mine["grad"] == expected["grad"] and close(mine["grad_norm"], expected["grad_norm"]), name
    values = finding(doc, "dist-values-differ")
    assert "before --wrap fsdp wrapped them" in values["message"] and "rank 1" in values["message"]


def test_wrap_ddp_and_fsdp1_run_through_the_wrapper(nproc):
    r = nproc("inspect", "dist_models:net", "--wrap", "ddp", "--shape", "6,8", "-f", "json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["distributed"]["wrapper"]["kind"] == "ddp" and doc["distributed"]["wrapper"]["source"] == "--wrap"
    assert doc["distributed"]["process_group_created_by"] == "gradprobe"  # and destroyed by it
    # DDP all-reduced: every rank holds the same gradient, while the local ones (different batches) differ
    head = by_name(doc)["head.weight"]["ranks"]
    assert close(head[0]["grad_norm"], head[1]["grad_norm"])
    assert not close(head[0]["local_grad_norm"], head[1]["local_grad_norm"])
    assert "dist-values-differ" not in codes(doc)  # DDP broadcast rank 0's values


def test_wrap_fsdp1_with_orig_params_and_shard_globs(nproc):
    r = nproc("inspect", "dist_models:Tower", "--wrap", "fsdp1", "--shard", "blocks.*", "--use-orig-params",
              "-f", "json")
    assert r.code == 0, r.err
    doc = r.json()
    units = [u["name"] for u in doc["distributed"]["ranks"][0]["units"]]
    assert units == ["", "blocks.0", "blocks.1"]
    assert [f["subject"] for f in doc["findings"] if f["code"] == "fsdp1-frozen-grad-memory"] == ["blocks.0",
                                                                                                 "blocks.1"]


def test_wrap_fsdp1_refused_unit_is_named(nproc):
    r = nproc("inspect", "dist_models:Tower", "--wrap", "fsdp1", "--shard", "blocks.*")
    assert r.code == 2
    (line,) = r.gradprobe_lines()
    assert line.startswith("gradprobe: run error: ")  # every rank fails alike; the ranks named are those heard from
    assert ": --wrap fsdp1: FSDP1 with use_orig_params=False cannot flatten unit 'blocks.0' (Block)" in line
    assert "blocks.0.body.weight" in line and "blocks.0.adapter.weight" in line
    assert "Must flatten tensors with uniform `requires_grad`" in line and "--shard 'blocks.0.adapter'" in line
    assert "Traceback" not in r.err


def test_wrap_fsdp1_refused_unit_inside_one_module_is_not_told_to_shard_itself(nproc):
    """BitFit under FSDP1: 'bn' and 'head' each hold a frozen weight and a trainable bias.  The fix said to make the
    trainable modules separate FSDP units (--shard GLOB): no unit can separate a module's own parameters."""
    import dist_models

    flags = {n: p.requires_grad for n, p in dist_models.bitfit().named_parameters()}  # plain PyTorch
    assert [n for n, f in flags.items() if not f] == ["stem.weight", "bn.weight", "head.weight"]
    r = nproc("inspect", "dist_models:bitfit", "--wrap", "fsdp1", "--shard", "stem")
    assert r.code == 2
    (line,) = r.gradprobe_lines()
    assert "cannot flatten the root unit (Net): it mixes 2 frozen parameter(s) (bn.weight, head.weight) with 2 " \
           "trainable one(s) (bn.bias, head.bias)" in line
    assert "Must flatten tensors with uniform `requires_grad`" in line  # torch's own error, quoted
    assert "--shard GLOB" not in line and "separate FSDP units" not in line, line
    assert "'bn' and 'head' each hold frozen and trainable parameters themselves" in line, line
    assert "--use-orig-params" in line


def test_rank_dependent_models_without_a_wrapper(nproc):
    r = nproc("inspect", "dist_models:RankChaos", "-f", "json")
    assert r.code == 0, r.err
    doc = r.json()
    assert {"dist-params-differ", "dist-shape-differs", "dist-requires-grad-differs", "dist-values-differ"} <= set(
        codes(doc))
    assert "registered in a different order on rank 1" in finding(doc, "dist-params-differ")["message"]
    shape = finding(doc, "dist-shape-differs")
    assert shape["subject"] == "c.weight" and "4×8 on rank 0, 5×8 on rank 1" in shape["message"]
    frozen = finding(doc, "dist-requires-grad-differs")
    assert frozen["subject"] == "a" and "on rank 0 but not on rank 1" in frozen["message"]
    order = doc["distributed"]["registration_order"]
    assert order["0"][:2] == ["a.weight", "a.bias"] and order["1"][:2] == ["b.weight", "b.bias"]


def test_four_ranks_fsdp2_shards_by_arithmetic(nproc):
    r = nproc("inspect", "dist_models:Tower", "--wrap", "fsdp", "--shard", "blocks.*", "-f", "json", n=4)
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["world_size"] == 4
    params = by_name(doc)
    # FSDP2 shards dim 0 in chunks of ceil(rows / 4): 16 rows → 4 each; 3 rows → 1, 1, 1 and an empty shard
    assert [x["local_shape"] for x in params["blocks.0.body.weight"]["ranks"]] == [[4, 16]] * 4
    out = params["out.weight"]["ranks"]
    assert [x["local_shape"] for x in out] == [[1, 16], [1, 16], [1, 16], [0, 16]]
    assert [x["grad"] for x in out] == ["nonzero", "nonzero", "nonzero", "no-shard"]  # no shard ≠ no gradient
    assert params["out.weight"]["grad"] == "nonzero" and "grad-none" not in codes(doc)
    assert len(doc["memory"]["per_rank"]) == 4
    assert doc["memory"]["per_rank_min"]["parameter_bytes"] < doc["memory"]["per_rank_max"]["parameter_bytes"]


def test_wrap_without_torchrun_is_a_world_of_one(nproc, run_cli):
    r = run_cli("inspect", "dist_models:Tower", "--wrap", "fsdp", "--shard", "blocks.*", "-f", "json",
                cwd=str(__import__("pathlib").Path(__file__).parent),
                env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parent)})
    assert r.code == 0, r.err
    import json

    doc = json.loads(r.out)
    assert doc["world_size"] == 1
    assert "fsdp-mixed-unit" in codes(doc)


@pytest.mark.parametrize("args", [("--grads",), ("--top", "-1")])
def test_usage_error_under_nproc_is_one_line(nproc, args):
    """Options are checked on every rank before the ranks meet: each rank printed the same usage error."""
    r = nproc("inspect", "dist_models:net", *args)
    assert r.code == 2
    lines = r.gradprobe_lines()
    assert len(lines) == 1 and lines[0].startswith("gradprobe: usage error: "), r.err
    assert "Traceback" not in r.err
