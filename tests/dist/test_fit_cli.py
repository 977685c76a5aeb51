"""``gradprobe inspect --world-size`` through the real CLI: the views, the budget gate's exit codes, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_helpers import HERE, gradprobe_cmd, run_command

from gradprobe.api_fit import fit

STACK = ["inspect", "fit_models:Stack", "--wrap", "fsdp", "--shard", "layers.*"]


def cli(*args: str) -> object:
    return run_command([*gradprobe_cmd(), *args], HERE, 240)


@pytest.mark.slow
def test_json_per_rank_equals_the_api() -> None:
    result = cli(*STACK, "--world-size", "2,4", "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    api = fit("fit_models:Stack", world_sizes=[2, 4], wrap="fsdp", shard=["layers.*"], path=[str(HERE)])
    assert doc["world_size"] == [2, 4] and doc["method"] == "simulated"
    for entry, row in zip(doc["memory"]["per_rank"], api.rows, strict=True):
        assert entry["rank"] == 0 and entry["world_size"] == row.world_size
        assert entry["peak_bytes"] == row.peak
        for phase in ("forward", "backward", "optimizer"):
            assert entry[phase]["total_bytes"] == row.phase(phase).total
            for name, value in row.phase(phase).categories:
                assert entry[phase][f"{name}_bytes"] == value


@pytest.mark.slow
def test_budget_gate_exit_1_names_the_dominant_category_and_a_lever() -> None:
    api = fit("fit_models:Stack", world_sizes=[2], wrap="fsdp", shard=["layers.*"], path=[str(HERE)]).rows[0]
    over = cli(*STACK, "--world-size", "2", "--budget", f"{api.peak - 1}", "--format", "markdown")
    assert over.code == 1, over.err
    from gradprobe.facts.fit import LABEL

    assert "does not fit" in over.out and f"the largest category is {LABEL[api.step.dominant()]}" in over.out
    assert "cheapest lever that fits" in over.out
    fits = cli(*STACK, "--world-size", "2", "--budget", f"{api.peak}")
    assert fits.code == 0, fits.err
    assert f"fits: {api.method} peak" in fits.out and "Rank 0's bytes by category" in fits.out


@pytest.mark.slow
def test_policy_and_reshard_options_reach_fully_shard() -> None:
    """--mixed-precision and --no-reshard-after-forward set fully_shard's arguments, for --world-size (the JSON
    says which policy ran) and for --wrap fsdp in a world of one (each unit's gradients reduce-scattered in fp32)."""
    options = ["--mixed-precision", "bf16,fp32", "--no-reshard-after-forward", "--format", "json"]
    result = cli(*STACK, "--world-size", "2", *options)
    assert result.code == 0, result.err
    entry = json.loads(result.out)["memory"]["per_rank"][0]
    api = fit("fit_models:Stack", world_sizes=[2], wrap="fsdp", shard=["layers.*"], path=[str(HERE)],
              mixed_precision="bf16,fp32", reshard_after_forward=False).rows[0]
    assert entry["mixed_precision"] == {"param_dtype": "bfloat16", "reduce_dtype": "float32"}
    assert entry["reshard_after_forward"] is False and entry["peak_bytes"] == api.peak
    one = cli(*STACK, *options)
    assert one.code == 0, one.err
    from fit_models import Stack

    units = {u["name"]: u for u in json.loads(one.out)["distributed"]["ranks"][0]["units"]}
    block = Stack().layers[0]
    numel = sum(p.numel() for p in block.parameters())
    assert units["layers.0"]["gradient_bytes"] == numel * 2  # unsharded gradients in bf16
    assert units["layers.0"]["reduce_scatter_bytes"] == numel * 4  # reduce-scattered in fp32


BAD = [
    (["--world-size", "2", "--budget", "80 GiBs"], "--budget '80 GiBs' is not a size"),
    (["--world-size", "0"], "--world-size '0'"),
    (["--world-size", "two"], "--world-size 'two'"),
    (["--budget", "1GiB"], "--budget applies to --world-size"),
    (["--world-size", "2", "--param-dtype", "bfloat16"], "leave out --param-dtype"),
    (["--world-size", "2", "--nproc", "2"], "leave out --nproc"),
    (["--world-size", "2", "--mixed-precision", "bf17"], "--mixed-precision 'bf17'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_options_one_line_exit_2(extra: list[str], message: str) -> None:
    result = cli(*STACK, *extra)
    assert result.code == 2
    assert len(result.gradprobe_lines()) == 1 and message in result.err, result.err
    assert "Traceback" not in result.err


BAD_TARGETS = [
    (["fit_models:Stack", "--world-size", "2"], "needs a wrapped model"),
    (["fit_models:Stack", "--wrap", "fsdp1", "--world-size", "2"], "FSDP1 is not simulated"),
    (["fit_models:real_group", "--world-size", "2"], "calls dist.init_process_group"),
    (["fit_models:hsdp_2x2", "--world-size", "5"], "does not match --world-size 5"),
    (["fit_models:needs_values", "--wrap", "ddp", "--world-size", "2"], "meta"),
    (["fit_models:Stack", "--wrap", "ddp", "--world-size", "2", "--no-reshard-after-forward"], "with --wrap fsdp"),
    (["fit_models:self_wrapping_bf16", "--world-size", "2", "--mixed-precision", "bf16"], "mp_policy="),
    (["fit_models:Stack", "--mixed-precision", "bf16"], "with --wrap fsdp"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), BAD_TARGETS)
def test_bad_targets_one_line_exit_2(args: list[str], message: str) -> None:
    result = cli("inspect", *args)
    assert result.code == 2, result.out
    assert len(result.gradprobe_lines()) == 1 and message in result.err, result.err
    assert "Traceback" not in result.err
