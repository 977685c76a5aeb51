"""DDP under real torchrun: gradprobe's per-rank facts against plain PyTorch on every rank, and the DDP verdicts."""

from __future__ import annotations

import pytest
from dist_helpers import by_name, close, codes, finding

pytestmark = pytest.mark.slow


def test_ddp_per_rank_facts_match_pytorch_and_unused_parameters_are_proven(reference):
    r = reference(["dist_models:ddp_aux", "--shape", "6,8", "--steps", "2"],
                  ["inspect", "dist_models:ddp_aux", "--shape", "6,8", "-f", "json", "--dist-timeout", "20"])
    assert r.code == 0, r.err
    doc = r.json()  # a single document: rank 1 printed nothing
    assert doc["schema"] == "gradprobe.inspect/1" and doc["world_size"] == 2
    assert doc["distributed"]["wrapper"]["kind"] == "ddp"
    assert doc["distributed"]["wrapper"]["find_unused_parameters"] is False
    assert doc["distributed"]["process_group_created_by"] == "target"  # the reference script made it: left alone
    params = by_name(doc)
    assert set(params) == set(r.ranks[0]["params"])  # original names, not module.*
    for ref in r.ranks:
        for name, expected in ref["params"].items():
            mine = params[name]["ranks"][ref["rank"]]
            assert mine["rank"] == ref["rank"]
            assert mine["local_shape"] == expected["local_shape"] == expected["global_shape"]
            assert mine["grad"] == expected["grad"], name
            assert close(mine["grad_norm"], expected["grad_norm"]), name
            local = ref["local_grads"].get(name)  # what autograd computed on that rank, before DDP's all-reduce
            assert mine["local_grad"] is (local is not None), name
            if local is not None:
                assert mine["local_grad_norm"] == pytest.approx(local, rel=1e-5, abs=1e-9)
    # aux is never called: DDP's next iteration raises; gradprobe ran it and quotes torch's own words
    unused = finding(doc, "ddp-unused-parameters")
    assert unused["severity"] == "error" and unused["subject"] == "aux"
    first_sentence = r.ranks[0]["second_error"].split(". ")[0]
    assert first_sentence in unused["message"]
    # plain PyTorch shows the replicas' gradients were never all-reduced (one bucket never became ready)
    assert r.ranks[0]["params"]["stem.weight"]["grad_norm"] != pytest.approx(r.ranks[1]["params"]["stem.weight"]
                                                                            ["grad_norm"])
    assert "never all-reduced" in unused["message"]
    # --shape inputs are drawn per rank: BatchNorm statistics differ after the forward, in PyTorch and in the report
    assert r.ranks[0]["buffers"]["bn.running_mean"] != r.ranks[1]["buffers"]["bn.running_mean"]
    diverge = finding(doc, "dist-buffers-diverge")
    assert "bn.running_mean" in diverge["message"] and "rank 1" in diverge["message"]
    buffers = {b["name"]: b for b in doc["buffers"]}
    assert [x["same_as_rank0"] for x in buffers["bn.running_mean"]["ranks"]] == [True, False]
    memory = doc["memory"]
    assert [m["rank"] for m in memory["per_rank"]] == [0, 1]
    for key in ("forward_peak_bytes", "backward_peak_bytes", "parameter_bytes"):
        values = [m[key] for m in memory["per_rank"]]
        assert memory["per_rank_min"][key] == min(values) and memory["per_rank_max"][key] == max(values)
    assert memory["per_rank"][0]["parameter_bytes"] == sum(4 * _numel(p["shape"]) for p in doc["parameters"])
    assert "Traceback" not in r.err


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_rank_dependent_branch_is_named_with_its_ranks(reference):
    r = reference(["dist_models:ddp_rank_branch_unused_ok", "--shape", "6,8"],
                  ["inspect", "dist_models:ddp_rank_branch_unused_ok", "--shape", "6,8", "-f", "json"])
    assert r.code == 0, r.err
    doc = r.json()
    assert "aux.weight" in r.ranks[0]["local_grads"] and "aux.weight" not in r.ranks[1]["local_grads"]
    aux = by_name(doc)["aux.weight"]["ranks"]
    assert aux[0]["local_grad"] is True and aux[1]["local_grad"] is False
    assert aux[0]["local_grad_norm"] == pytest.approx(r.ranks[0]["local_grads"]["aux.weight"], rel=1e-5)
    # find_unused_parameters=True: DDP averages zeros in from rank 1; both ranks hold the same gradient afterwards
    for ref in r.ranks:
        assert aux[ref["rank"]]["grad_norm"] == pytest.approx(ref["params"]["aux.weight"]["grad_norm"], rel=1e-5)
    differs = finding(doc, "dist-grad-differs")
    assert differs["subject"] == "aux"
    assert "on rank 0 but none on rank 1" in differs["message"] and "1/2" in differs["message"]
    # the model passes find_unused_parameters=True already: the fix must not tell it to (it did)
    assert doc["distributed"]["wrapper"]["find_unused_parameters"] is True
    assert "find_unused_parameters=True" not in differs["hint"], differs["hint"]
    assert "ddp-find-unused-cost" not in codes(doc)


def test_find_unused_parameters_with_nothing_unused_warns_under_plain_torchrun(torchrun):
    r = torchrun("inspect", "dist_models:ddp_find_unused_all_used", "--shape", "6,8", "--dist-timeout", "20")
    assert r.code == 0, r.err
    assert r.out.count("gradprobe inspect") == 1  # one report, from rank 0
    assert "ddp-find-unused-cost" in r.out
    assert "Parameters by rank (2 ranks, gloo, wrapper: ddp)" in r.out
    assert "stem.weight" in r.out and "module.stem" not in r.out


def test_integer_buffers_that_diverge_are_compared(reference):
    """An int64 buffer was never compared across ranks (same_as_rank0 None: only floating buffers had digests)."""
    r = reference(["dist_models:StepCounter", "--wrap", "ddp", "--shape", "6,8"],
                  ["inspect", "dist_models:StepCounter", "--wrap", "ddp", "--shape", "6,8", "-f", "json"])
    assert r.code == 0, r.err
    seen = [ref["buffers"]["seen"] for ref in sorted(r.ranks, key=lambda x: x["rank"])]
    assert seen[0] != seen[1]  # plain PyTorch: the counters differ after the forward
    doc = r.json()
    buffers = {b["name"]: b for b in doc["buffers"]}
    assert [x["same_as_rank0"] for x in buffers["seen"]["ranks"]] == [True, False]
    assert finding(doc, "dist-buffers-diverge")["subject"] == "seen"
