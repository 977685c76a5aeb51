"""Cross-rank verdicts and merging on hand-made per-rank facts (no torch, no processes)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gradprobe.facts.distributed import (
    NO_SHARD,
    DistFacts,
    NameMap,
    RankBuffer,
    RankFacts,
    RankMemory,
    RankParam,
    UnitFact,
    WrapperInfo,
    clean_name,
    merged_grad,
    rename_strings,
    wrapper_text_cleaner,
    zero_factors_from_shards,
)
from gradprobe.facts.run import RunFacts
from gradprobe.judges.distributed import CODES, judge_distributed
from gradprobe.judges.distributed.text import ranks_text, shard_text
from gradprobe.judges.inspect import judge_inspect
from tests.fixtures.facts import param as run_param
from tests.fixtures.facts import run_facts


def param(name: str, *, rg: bool = True, grad: str | None = "nonzero", norm: float | None = 1.0,
          local: bool | None = True, shape: tuple[int, ...] = (4, 4), placement: str = "replicated",
          local_shape: tuple[int, ...] | None = None, digest: str | None = None) -> RankParam:
    return RankParam(name=name, global_shape=shape, local_shape=local_shape or shape, placement=placement,
                     dtype="float32", requires_grad=rg, grad=grad, grad_norm=norm, local_grad=local,
                     local_grad_norm=norm if local else None, local_bytes=64, digest=digest)


def facts(*ranks: list[RankParam], wrapper: WrapperInfo | None = None,
          extra: dict[int, dict] | None = None) -> DistFacts:
    extra = extra or {}
    rows = tuple(RankFacts(rank=i, host="h", params=tuple(ps), **extra.get(i, {})) for i, ps in enumerate(ranks))
    return DistFacts(world_size=len(rows), backend="gloo", group_owner="gradprobe",
                     wrapper=wrapper or WrapperInfo("none", "none"), ranks=rows)


def codes(findings: list) -> list[str]:
    return [f.code for f in findings]


def test_every_code_is_documented():
    assert set(CODES) == {"dist-grad-differs", "dist-requires-grad-differs", "dist-shape-differs",
                          "dist-params-differ", "dist-values-differ", "dist-buffers-diverge",
                          "ddp-unused-parameters", "ddp-find-unused-cost", "fsdp1-frozen-grad-memory",
                          "fsdp-mixed-unit"}


def test_identical_ranks_give_no_finding():
    ps = [param("a.weight"), param("a.bias", shape=(4,))]
    assert judge_distributed(facts(ps, ps)) == []


def test_gradient_used_on_some_ranks_only_names_params_and_ranks():
    r0 = [param("fc.weight"), param("aux.weight"), param("aux.bias", shape=(4,))]
    r1 = [param("fc.weight"), param("aux.weight", grad="none", local=False),
          param("aux.bias", shape=(4,), grad="none", local=False)]
    ddp = WrapperInfo("ddp", "target", find_unused_parameters=False)
    (f,) = [x for x in judge_distributed(facts(r0, r1, wrapper=ddp)) if x.code == "dist-grad-differs"]
    assert f.severity == "error" and f.subject == "aux"
    assert "aux.weight, aux.bias get a gradient on rank 0 but none on rank 1" in f.message
    assert "hangs" in f.message
    unused_ok = replace(ddp, find_unused_parameters=True)
    (g,) = [x for x in judge_distributed(facts(r0, r1, wrapper=unused_ok)) if x.code == "dist-grad-differs"]
    assert "scaled by 1/2" in g.message


def test_gradient_used_on_some_ranks_only_advice_fits_the_wrapper():
    """The fix said "or use find_unused_parameters=True with DDP" also to DDP that had it and to FSDP (which has no
    such option)."""
    r0 = [param("fc.weight"), param("aux.weight")]
    r1 = [param("fc.weight"), param("aux.weight", grad="none", local=False)]
    hints = {}
    for name, wrapper in (("ddp", WrapperInfo("ddp", "target", find_unused_parameters=False)),
                          ("ddp-unused", WrapperInfo("ddp", "target", find_unused_parameters=True)),
                          ("fsdp", WrapperInfo("fsdp", "target")), ("fsdp1", WrapperInfo("fsdp1", "target")),
                          ("none", None)):
        (f,) = [x for x in judge_distributed(facts(r0, r1, wrapper=wrapper)) if x.code == "dist-grad-differs"]
        hints[name] = f.hint
    assert all("0 * branch_output.sum()" in h for h in hints.values())
    assert "find_unused_parameters=True" in hints["ddp"] and "find_unused_parameters=True" in hints["none"]
    for name in ("ddp-unused", "fsdp", "fsdp1"):
        assert "find_unused_parameters" not in hints[name], (name, hints[name])


def test_requires_grad_shape_and_order_differences():
    r0 = [param("a.weight"), param("b.weight"), param("c.weight", shape=(4, 8))]
    r1 = [param("b.weight"), param("a.weight", rg=False, grad="none", local=None), param("c.weight", shape=(5, 8))]
    found = judge_distributed(facts(r0, r1))
    assert {"dist-params-differ", "dist-shape-differs", "dist-requires-grad-differs"} <= set(codes(found))
    shape = next(f for f in found if f.code == "dist-shape-differs")
    assert "4×8 on rank 0, 5×8 on rank 1" in shape.message
    order = next(f for f in found if f.code == "dist-params-differ")
    assert "'a.weight' versus 'b.weight'" in order.message


def test_missing_parameter_on_one_rank():
    found = judge_distributed(facts([param("a.weight"), param("x.weight")], [param("a.weight")]))
    (f,) = [x for x in found if x.code == "dist-params-differ"]
    assert "x.weight exists on rank 0 but not on rank 1" in f.message


def test_values_differ_only_where_nothing_broadcasts():
    r0 = [param("a.weight", digest="1/2")]
    r1 = [param("a.weight", digest="3/4")]
    assert "dist-values-differ" in codes(judge_distributed(facts(r0, r1)))
    ddp = WrapperInfo("ddp", "target")  # DDP broadcasts rank 0's values at construction
    assert "dist-values-differ" not in codes(judge_distributed(facts(r0, r1, wrapper=ddp)))
    pre = {0: {"pre_wrap_digests": (("a.weight", "1/2"),)}, 1: {"pre_wrap_digests": (("a.weight", "9/9"),)}}
    fsdp = WrapperInfo("fsdp", "--wrap")
    (f,) = [x for x in judge_distributed(facts([param("a.weight")], [param("a.weight")], wrapper=fsdp, extra=pre))
            if x.code == "dist-values-differ"]
    assert "before --wrap fsdp wrapped them" in f.message and "a mix" in f.message


def test_buffers_diverge_unless_syncbatchnorm():
    def ranks(kind: str) -> DistFacts:
        b0 = (RankBuffer("bn.running_mean", kind, True, "1/1"),)
        b1 = (RankBuffer("bn.running_mean", kind, True, "2/2"),)
        return facts([param("w")], [param("w")], wrapper=WrapperInfo("ddp", "target", broadcast_buffers=True),
                     extra={0: {"buffers": b0}, 1: {"buffers": b1}})

    (f,) = [x for x in judge_distributed(ranks("BatchNorm1d")) if x.code == "dist-buffers-diverge"]
    assert f.severity == "warning" and "rank 1" in f.message and "broadcasts rank 0's buffers" in f.message
    assert "convert_sync_batchnorm" in f.hint
    assert "dist-buffers-diverge" not in codes(judge_distributed(ranks("SyncBatchNorm")))


def test_ddp_unused_quotes_the_second_iteration():
    r = [param("fc.weight"), param("aux.weight", grad="none", local=False)]
    ddp = WrapperInfo("ddp", "target", find_unused_parameters=False)
    err = "Expected to have finished reduction in the prior iteration before starting a new one."
    dist = facts(r, r, wrapper=ddp, extra={0: {"second_iteration_ran": True, "second_iteration_error": err}})
    (f,) = [x for x in judge_distributed(dist) if x.code == "ddp-unused-parameters"]
    assert f'DDP raised: "{err}"' in f.message and f.subject == "aux.weight"
    not_run = facts(r, r, wrapper=ddp)
    (g,) = [x for x in judge_distributed(not_run) if x.code == "ddp-unused-parameters"]
    assert "would raise" in g.message


def test_ddp_unused_reports_gradients_never_all_reduced():
    ddp = WrapperInfo("ddp", "target", find_unused_parameters=False)
    r0 = [param("fc.weight", norm=2.0), param("aux.weight", grad="none", local=False)]
    r1 = [param("fc.weight", norm=3.0), param("aux.weight", grad="none", local=False)]
    (f,) = [x for x in judge_distributed(facts(r0, r1, wrapper=ddp)) if x.code == "ddp-unused-parameters"]
    assert "never all-reduced" in f.message and "‖2‖ on rank 0, ‖3‖ on rank 1" in f.message


def test_find_unused_parameters_cost_when_nothing_is_unused():
    ps = [param("fc.weight")]
    ddp = WrapperInfo("ddp", "target", find_unused_parameters=True)
    (f,) = [x for x in judge_distributed(facts(ps, ps, wrapper=ddp)) if x.code == "ddp-find-unused-cost"]
    assert f.severity == "warning" and "static_graph=True" in f.hint
    static = replace(ddp, static_graph=True)
    assert "ddp-find-unused-cost" not in codes(judge_distributed(facts(ps, ps, wrapper=static)))


def test_fsdp_mixed_units():
    unit = UnitFact("blocks.0", frozen=("blocks.0.body.weight",), trainable=("blocks.0.adapter.weight",),
                    frozen_bytes=1024, trainable_bytes=1024, all_gather_forward_bytes=2048,
                    all_gather_backward_bytes=2048, reduce_scatter_bytes=1024, gradient_bytes=1024)
    ps = [param("blocks.0.body.weight", rg=False, grad="none", local=None), param("blocks.0.adapter.weight")]
    dist = facts(ps, ps, wrapper=WrapperInfo("fsdp", "target"), extra={0: {"units": (unit,)}, 1: {"units": (unit,)}})
    (f,) = [x for x in judge_distributed(dist) if x.code == "fsdp-mixed-unit"]
    assert "all-gather 2.0 KiB in forward and 2.0 KiB again in backward, where the frozen parameters (50% of it)" \
        in f.message
    assert "fully_shard(model.blocks.0.adapter)" in f.hint
    root = replace(unit, name="", all_gather_backward_bytes=0, frozen=("backbone.conv.weight", "backbone.bn.weight"),
                   trainable=("head.weight", "aux.weight"))
    (r,) = [x for x in judge_distributed(facts(ps, ps, wrapper=WrapperInfo("fsdp", "target"),
                                               extra={0: {"units": (root,)}})) if x.code == "fsdp-mixed-unit"]
    assert "FSDP2 root unit mixes" in r.message and "stay all-gathered through the backward" in r.message
    assert "fully_shard(model.backbone)" in r.hint  # the trainable ones share no module but the root
    fsdp1 = WrapperInfo("fsdp1", "target", use_orig_params=True)
    u1 = replace(unit, frozen_gradient_bytes=512)
    u2 = replace(u1, frozen_gradient_bytes=0)
    dist1 = facts(ps, ps, wrapper=fsdp1, extra={0: {"units": (u1,)}, 1: {"units": (u2,)}})
    (g,) = [x for x in judge_distributed(dist1) if x.code == "fsdp1-frozen-grad-memory"]
    assert "512 B of gradient memory over all ranks (rank 0: 512 B, rank 1: 0 B)" in g.message
    split = replace(unit, frozen=())
    assert judge_distributed(facts(ps, ps, wrapper=WrapperInfo("fsdp", "target"), extra={0: {"units": (split,)}})) == []


def test_fsdp_mixed_unit_inside_one_module_is_not_told_to_split():
    """BitFit: 'layers.0' holds a frozen weight and a trainable bias itself.  The hint told users to make the trainable
    modules their own units; no unit can separate a module's own parameters."""
    unit = UnitFact("layers.0", frozen=("layers.0.weight",), trainable=("layers.0.bias",), frozen_bytes=256,
                    trainable_bytes=32, all_gather_forward_bytes=288, all_gather_backward_bytes=288,
                    reduce_scatter_bytes=32, gradient_bytes=32)
    ps = [param("layers.0.weight", rg=False, grad="none", local=None), param("layers.0.bias")]
    for wrapper, code in ((WrapperInfo("fsdp", "target"), "fsdp-mixed-unit"),
                          (WrapperInfo("fsdp1", "target", use_orig_params=True), "fsdp1-frozen-grad-memory")):
        dist = facts(ps, ps, wrapper=wrapper, extra={0: {"units": (unit,)}, 1: {"units": (unit,)}})
        (f,) = [x for x in judge_distributed(dist) if x.code == code]
        assert "own FSDP units" not in f.hint and "--shard" not in f.hint and "fully_shard" not in f.hint, f.hint
        assert "'layers.0' holds frozen and trainable parameters itself" in f.hint, f.hint
        assert "as a whole" in f.hint


@pytest.mark.parametrize(("states", "expected"), [
    ([("nonzero", 3.0, "Shard(dim=0)"), ("nonzero", 4.0, "Shard(dim=0)")], ("nonzero", 5.0)),
    ([("nonzero", 3.0, "flat[0:4]"), (NO_SHARD, None, "flat[]")], ("nonzero", 3.0)),
    ([("zero", 0.0, "Shard(dim=0)"), ("zero", 0.0, "Shard(dim=0)")], ("zero", 0.0)),
    ([(NO_SHARD, None, "flat[]"), (NO_SHARD, None, "flat[]")], (NO_SHARD, None)),
    ([("nonzero", 2.0, "replicated"), ("nonzero", 2.0, "replicated")], ("nonzero", 2.0)),
    ([("nonzero", 2.0, "replicated"), ("none", None, "replicated")], ("none", None)),
    ([(None, None, "replicated"), (None, None, "replicated")], (None, None)),
])
def test_merged_gradient(states, expected):
    assert merged_grad(states) == expected


def test_names_and_text_helpers():
    assert clean_name("_fsdp_wrapped_module.blocks.0._fsdp_wrapped_module.fc.weight") == "blocks.0.fc.weight"
    assert ranks_text([2, 0]) == "ranks 0, 2" and ranks_text([1]) == "rank 1"
    assert shard_text(param("w", placement="flat[]", local_shape=(0,), grad=NO_SHARD)) == "no shard here"
    assert shard_text(param("w", placement="Shard(dim=0)", local_shape=(2, 4))) == "Shard(dim=0) 2×4"
    ddp = wrapper_text_cleaner("ddp")
    assert ddp("module.bn.running_mean changed; submodule.x stays") == "bn.running_mean changed; submodule.x stays"
    assert NameMap(params={"module.a": "a"}).param("module.a") == "a"
    memory = RankMemory(0, 1, 2, 3, 4, 5)
    assert rename_strings(memory, str.upper) == memory  # numbers untouched
    assert rename_strings(("module.a", ["module.b"]), ddp) == ("a", ["b"])


# ---- FSDP: all-zero parameters from the ranks' shards (zero_factors_from_shards)


def _lora_run() -> RunFacts:
    a = replace(run_param("b.lora_A.weight", 8, grad="zero", grad_norm=0.0), shape=(2, 4))
    b = replace(run_param("b.lora_B.weight", 8, grad="nonzero", grad_norm=1.0), shape=(4, 2))
    return run_facts([a, b], zero_grad_partners=())


def _lora_dist(kind: str, zero_on_rank1: bool) -> DistFacts:
    def ranks(r: int) -> list[RankParam]:
        a = replace(param("b.lora_A.weight", grad="zero", norm=0.0, shape=(2, 4), placement="Shard(dim=0)"),
                    values_zero=False)
        b = replace(param("b.lora_B.weight", shape=(4, 2), placement="Shard(dim=0)"),
                    values_zero=True if r == 0 else zero_on_rank1)
        return [a, b]

    return facts(ranks(0), ranks(1), wrapper=WrapperInfo(kind, "target"))


@pytest.mark.parametrize("kind, zero_on_rank1, found", [
    ("fsdp", True, ("b.lora_B.weight",)),  # every shard all zeros: the parameter is
    ("fsdp", False, ()),  # one rank's shard holds a nonzero value: not all zeros
    ("fsdp1", True, ("b.lora_B.weight",)),  # FSDP1: each rank's slice of the flat parameter
    ("ddp", True, ()),  # a replicated parameter: the engine read it whole already
])
def test_zero_factor_from_every_rank_shard(kind: str, zero_on_rank1: bool, found: tuple[str, ...]) -> None:
    merged = zero_factors_from_shards(_lora_run(), _lora_dist(kind, zero_on_rank1))
    assert merged.zero_valued_parameters == found
    (zero,) = [f for f in judge_inspect(merged).findings if f.code == "grad-zero"]
    if found:
        assert merged.zero_grad_partners is None  # not read off the graph: judged from the structure
        assert zero.severity == "info" and "'b.lora_B.weight'" in zero.message
    else:
        assert merged.zero_grad_partners == () and zero.severity == "warning"


def test_replicas_mismatch_names_what_differs_where():
    from gradprobe.judges.distributed.replicas import replicas_mismatch

    same = [("a.weight", True, (2, 2)), ("b.weight", False, (2,))]
    assert replicas_mismatch([same, same]) is None
    frozen_on_1 = [("a.weight", False, (2, 2)), ("b.weight", False, (2,))]
    assert replicas_mismatch([same, frozen_on_1]) == ("a.weight requires grad on rank 0 but not on rank 1: the ranks "
                                                      "freeze differently (dist-requires-grad-differs)")
    text = replicas_mismatch([same, [("a.weight", True, (2, 3))]])
    assert text == "b.weight do not exist on rank 1: the ranks build different models; a.weight differ in shape " \
                   "across ranks"
