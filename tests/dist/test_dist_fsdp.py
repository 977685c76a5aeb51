"""FSDP2 (fully_shard) and FSDP1 (FullyShardedDataParallel) targets under real torchrun, against plain PyTorch."""

from __future__ import annotations

import pytest
from dist_helpers import by_name, close, codes

pytestmark = pytest.mark.slow


def test_fsdp2_shards_and_gradients_match_pytorch_and_mixed_units_are_measured(reference):
    r = reference(["dist_models:fsdp2_tower"], ["inspect", "dist_models:fsdp2_tower", "-f", "json"])
    assert r.code == 0, r.err
    doc = r.json()
    params = by_name(doc)
    assert doc["distributed"]["wrapper"]["kind"] == "fsdp"
    for ref in r.ranks:
        for name, expected in ref["params"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert params[name]["global_shape"] == expected["global_shape"] == params[name]["shape"]
            assert mine["local_shape"] == expected["local_shape"], name  # the DTensor's .to_local()
            assert mine["placement"] == "Shard(dim=0)"
            assert mine["grad"] == expected["grad"], name
            assert close(mine["grad_norm"], expected["grad_norm"]), name
    # the merged gradient norm is the global one: root of the summed squares of the shards' norms
    for name, p in params.items():
        shard_norms = [ref["params"][name]["grad_norm"] or 0.0 for ref in r.ranks]
        if p["grad"] == "nonzero":
            assert close(p["grad_norm"], sum(n * n for n in shard_norms) ** 0.5), name
    # FSDP2's unsharded gradients, before the reduce-scatter: every rank computed one for each trainable parameter
    assert [x["local_grad"] for x in params["blocks.0.adapter.weight"]["ranks"]] == [True, True]
    assert [x["local_grad"] for x in params["blocks.0.body.weight"]["ranks"]] == [None, None]  # frozen
    # out.weight is 3x16: 2 rows on rank 0, 1 on rank 1
    assert [x["local_shape"] for x in params["out.weight"]["ranks"]] == [[2, 16], [1, 16]]
    mixed = [f for f in doc["findings"] if f["code"] == "fsdp-mixed-unit"]
    assert [f["subject"] for f in mixed] == ["blocks.0", "blocks.1"]
    assert "blocks.0.body.weight" in mixed[0]["message"] and "blocks.0.adapter.weight" in mixed[0]["message"]
    assert "fully_shard(model.blocks.0.adapter)" in mixed[0]["hint"]
    units = {u["name"]: u for u in doc["distributed"]["ranks"][0]["units"]}
    expected_units = r.ranks[0]["fsdp2"]
    for name, unit in expected_units.items():
        assert units[name]["all_gather_forward_bytes"] == unit["all_gather_bytes"], name
    # blocks re-gather in backward; the root keeps its parameters after forward (reshard_after_forward=False)
    assert units["blocks.0"]["all_gather_backward_bytes"] == expected_units["blocks.0"]["all_gather_bytes"]
    assert units[""]["all_gather_backward_bytes"] == 0
    assert units["blocks.0"]["frozen"] == ["blocks.0.body.weight", "blocks.0.body.bias"]
    # FSDP2 reduce-scatters gradients of trainable parameters only: 16x16 + 16 floats for the adapter
    assert units["blocks.0"]["reduce_scatter_bytes"] == (16 * 16 + 16) * 4
    assert "grad-none" not in codes(doc)


@pytest.mark.parametrize("factory, placement", [("fsdp2_lora", "Shard(dim=0)"), ("fsdp1_lora", "flat[")])
def test_fsdp_zero_initialised_lora_factor_is_found_from_the_shards(nproc, factory, placement):
    """No process holds a whole parameter after an FSDP backward; every rank's shards of ``lora_B`` are all zeros,
    so ``lora_A``'s exactly zero gradient is the first LoRA step's (info), as in one process, not a warning."""
    from dist_models import LoraTower

    plain = LoraTower()  # plain PyTorch, one process: what the verdict must agree with
    plain(plain.example_input_array).sum().backward()
    for block in plain.blocks:
        assert not bool(block.lora_B.weight.detach().any()) and not bool(block.lora_A.weight.grad.any())
        assert bool(block.lora_B.weight.grad.any())
    r = nproc("inspect", f"dist_models:{factory}", "-f", "json")
    assert r.code == 0, r.err
    doc = r.json()
    params = by_name(doc)
    assert all(x["placement"].startswith(placement) for x in params["blocks.0.lora_B.weight"]["ranks"])
    zero = [f for f in doc["findings"] if f["code"] == "grad-zero"]
    assert sorted(f["subject"] for f in zero) == ["blocks.0.lora_A.weight", "blocks.1.lora_A.weight"]
    for f in zero:
        assert f["severity"] == "info", f
        assert f["subject"].replace("lora_A", "lora_B") in f["message"] and "dead ReLU" not in f["hint"]
    assert doc["zero_grad_partners"] is None  # judged from the shards and the structure, not read off the graph
    assert [x["values_zero"] for x in params["blocks.0.lora_B.weight"]["ranks"]] == [True, True]
    # lora_A: random values; an FSDP1 rank may hold none of them (an empty slice counts as zeros)
    assert any(x["values_zero"] is False for x in params["blocks.0.lora_A.weight"]["ranks"])
    assert [x["values_zero"] for x in params["blocks.0.base.weight"]["ranks"]] == [None, None]  # frozen: not read


def test_fsdp1_use_orig_params_shards_empty_on_some_ranks_and_frozen_gradient_bytes(reference):
    r = reference(["dist_models:fsdp1_tower"], ["inspect", "dist_models:fsdp1_tower", "-f", "json"])
    assert r.code == 0, r.err
    doc = r.json()
    params = by_name(doc)
    assert set(params) == set(r.ranks[0]["params"])  # original names (no _fsdp_wrapped_module)
    for ref in r.ranks:
        for name, expected in ref["params"].items():
            mine = params[name]["ranks"][ref["rank"]]
            held = ref["fsdp1"]["slices"][name]["numel"]
            assert mine["local_shape"] == [held] == expected["local_shape"], name
            if held == 0:
                assert mine["grad"] == "no-shard", name  # an empty shard: no gradient there by design
            else:
                assert mine["grad"] == expected["grad"], name
                assert close(mine["grad_norm"], expected["grad_norm"]), name
    assert params["blocks.0.body.weight"]["shape"] == [16, 16]  # the global shape, not the 1-D shard
    assert "grad-none" not in codes(doc)  # trainable parameters with an empty shard somewhere still got gradients
    frozen = [f for f in doc["findings"] if f["code"] == "fsdp1-frozen-grad-memory"]
    assert [f["subject"] for f in frozen] == ["blocks.0", "blocks.1"]
    for ref in r.ranks:
        units = {u["name"]: u for u in doc["distributed"]["ranks"][ref["rank"]]["units"]}
        for unit, expected in ref["fsdp1"]["units"].items():
            assert units[unit]["frozen_gradient_bytes"] == expected["frozen_grad_bytes"], (ref["rank"], unit)
            assert units[unit]["flat_gradient_bytes"] == expected["flat_grad_bytes"], (ref["rank"], unit)
    total = sum(ref["fsdp1"]["units"]["blocks.0"]["frozen_grad_bytes"] for ref in r.ranks)
    assert total == (16 * 16 + 16) * 4  # the frozen body's gradient lives somewhere, whatever the split
    assert "1.1 KiB of gradient memory over all ranks" in frozen[0]["message"]


def test_fsdp1_flat_parameters_are_shown_by_original_names(reference):
    r = reference(["dist_models:fsdp1_plain"], ["inspect", "dist_models:fsdp1_plain", "-f", "json"])
    assert r.code == 0, r.err
    doc = r.json()
    params = by_name(doc)
    assert set(params) == {"stem.weight", "stem.bias", "bn.weight", "bn.bias", "head.weight", "head.bias"}
    for ref in r.ranks:
        for name, expected in ref["fsdp1"]["slices"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert mine["local_shape"] == [expected["numel"]]
            state, norm = expected["grad"]
            assert mine["grad"] == state, name
            assert close(mine["grad_norm"], norm), name
    assert params["head.weight"]["shape"] == [4, 16] and params["head.weight"]["grad"] == "nonzero"


def test_fsdp1_factory_refused_by_torch_names_the_unit(nproc):
    r = nproc("inspect", "dist_models:fsdp1_mixed_no_orig", "--dist-timeout", "20")
    assert r.code == 2
    lines = r.gradprobe_lines()
    assert len(lines) == 1, r.err
    assert "unit 'blocks.0'" in lines[0]
    assert "blocks.0.body.weight" in lines[0] and "blocks.0.adapter.weight" in lines[0]  # frozen and trainable
    assert "torch says: ValueError: blocks.0 has both parameters with requires_grad=True and False" in lines[0]
    assert "Traceback" not in r.err
