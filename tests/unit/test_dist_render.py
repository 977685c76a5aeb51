"""The merged report's additions, rendered from hand-made facts: JSON fields, per-rank tables, Markdown."""

from __future__ import annotations

import json

from rich.console import Console

from gradprobe.facts.distributed import (
    NO_SHARD,
    DistFacts,
    DistInspectReport,
    RankBuffer,
    RankFacts,
    RankMemory,
    RankParam,
    UnitFact,
    WrapperInfo,
    merge_run_facts,
)
from gradprobe.facts.run import BufferFact, InspectReport, MemoryFact, ParamFact, RunFacts
from gradprobe.render.inspect.distributed import dist_inspect_json, dist_inspect_markdown, render_dist_inspect


def rank_param(rank: int, rows: int, norm: float | None) -> RankParam:
    return RankParam(name="out.weight", global_shape=(3, 16), local_shape=(rows, 16), placement="Shard(dim=0)",
                     dtype="float32", requires_grad=True, grad="nonzero" if rows else NO_SHARD, grad_norm=norm,
                     local_grad=True if rows else None, local_bytes=rows * 64, unit="")


def report() -> DistInspectReport:
    ranks = []
    for r, (rows, norm) in enumerate([(2, 3.0), (1, 4.0), (0, None)]):
        ranks.append(RankFacts(
            rank=r, host="node", params=(rank_param(r, rows, norm),),
            buffers=(RankBuffer("bn.running_mean", "BatchNorm1d", True, f"{r % 2}"),),
            memory=RankMemory(r, 100 + r, 200 + r, 50, rows * 64, rows * 64),
            units=(UnitFact("", (), ("out.weight",), 0, 192, 384, 0, 128, 128),),
        ))
    dist = DistFacts(3, "gloo", "gradprobe", WrapperInfo("fsdp", "target"), tuple(ranks))
    param = ParamFact("out.weight", (), (2, 16), "float32", True, "nonzero", 3.0, "out", True, 32, 128)
    facts = RunFacts(target="m:x", torch_version="2.13", device="cpu", mode="train", grad_mode="grad", backward=True,
                     backward_skipped_reason=None, loss=1.0, parameters=(param,),
                     buffers=(BufferFact("bn.running_mean", (16,), "float32", True, "bn"),), modules=(), tensors=(),
                     outputs=(), graph=None, memory=MemoryFact("m", 100, 200, 50, 128, 128), global_grad_enabled=True)
    merged = merge_run_facts(facts, dist)
    return DistInspectReport(InspectReport(merged), dist)


def test_merged_parameter_is_global():
    p = report().report.facts.parameters[0]
    assert p.shape == (3, 16) and p.numel == 48 and p.nbytes == 192
    assert p.grad == "nonzero" and p.grad_norm == 5.0  # sqrt(3² + 4²); the empty shard does not count


def test_json_adds_per_rank_fields_and_keeps_the_others():
    doc = dist_inspect_json(report())
    assert doc["schema"] == "gradprobe.inspect/1" and doc["world_size"] == 3
    (p,) = doc["parameters"]
    assert p["shape"] == p["global_shape"] == [3, 16] and p["grad_norm"] == 5.0
    assert [r["local_shape"] for r in p["ranks"]] == [[2, 16], [1, 16], [0, 16]]
    assert [r["grad"] for r in p["ranks"]] == ["nonzero", "nonzero", "no-shard"]
    assert [x["same_as_rank0"] for x in doc["buffers"][0]["ranks"]] == [True, False, True]
    assert doc["memory"]["per_rank_min"]["forward_peak_bytes"] == 100
    assert doc["memory"]["per_rank_max"]["backward_peak_bytes"] == 202
    assert doc["distributed"]["wrapper"]["kind"] == "fsdp"
    json.dumps(doc, allow_nan=False)


def test_table_and_markdown():
    console = Console(record=True, width=100, color_system=None)
    render_dist_inspect(report(), console)
    text = console.export_text()
    assert "Parameters by rank (3 ranks, gloo, wrapper: fsdp)" in text
    assert "no shard here" in text and "Shard(dim=0) 2×16" in text
    assert "Memory by rank" in text and "min" in text and "max" in text
    assert "FSDP units (measured on rank 0)" in text
    md = dist_inspect_markdown(report())
    assert "| `out.weight` | 3×16 | nonzero ‖3‖ | nonzero ‖4‖ | no shard here |" in md


def test_html_page_has_the_per_rank_sections():
    from gradprobe.render.html.distributed import dist_inspect_html

    html = dist_inspect_html(report())
    assert html.count("<!doctype html>") == 1
    for section in ("distributed", "rank-memory", "rank-params", "units"):
        assert f'<section id="{section}">' in html
    memory = html[html.index('id="t-rank-memory"'):]
    memory = memory[:memory.index("</table>")]
    # one row per rank, then min and max of each column (backward peak 200..202 B)
    assert [memory.count(f">{r}</td>") >= 1 for r in ("0", "1", "2", "min", "max")] == [True] * 5
    assert ">200 B</td>" in memory and ">202 B</td>" in memory
    params = html[html.index('id="t-rank-params"'):]
    params = params[:params.index("</table>")]
    assert "‖3‖" in params and "‖4‖" in params  # each rank's own shard norm
    assert "Shard(dim=0) 2×16" in params and "Shard(dim=0) 1×16" in params and "no shard here" in params
    assert "<th>rank 2</th>" in params.replace(' class=""', "")
