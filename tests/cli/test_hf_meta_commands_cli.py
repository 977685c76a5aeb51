"""``compare-modes`` and ``freeze-check`` with ``--device meta`` on a padded batch, through the real CLI (issue 17 §1).

The padded ``attention_mask`` is read on meta from its CPU copy, as in ``inspect``: every mode's bytes equal the
same command on the CPU, and freeze-check gives the same verdict.
"""

from __future__ import annotations

import json

import pytest

INPUTS = ("--inputs", "tests.fixtures.hf_tiny:padded_batch")
ROW_KEYS = ("mode", "grad_mode", "ok", "error", "saved_for_backward_bytes", "forward_peak_bytes",
            "backward_peak_bytes", "graph_nodes")


@pytest.mark.slow
def test_compare_modes_on_meta_equals_the_cpu_run(run_cli) -> None:
    rows = {}
    for device in ("cpu", "meta"):
        result = run_cli("compare-modes", "tests.fixtures.hf_tiny:llama", *INPUTS, "--device", device, "--repeat",
                         "2", "--backward", "--modes", "train:grad,eval:no_grad", "-f", "json")
        assert result.code == 0, result.err
        rows[device] = [{k: row.get(k) for k in ROW_KEYS} for row in json.loads(result.out)["rows"]]
    assert rows["meta"] == rows["cpu"]
    assert all(row["ok"] for row in rows["meta"]) and rows["meta"][0]["saved_for_backward_bytes"] > 0


@pytest.mark.slow
def test_freeze_check_on_meta_gives_the_cpu_verdict(run_cli) -> None:
    """The tiny Llama's embeddings still require grad: the same violation (exit 1) on both devices."""
    docs = {}
    for device in ("cpu", "meta"):
        result = run_cli("freeze-check", "tests.fixtures.hf_tiny:llama", *INPUTS, "--device", device,
                         "--frozen", "model.embed_tokens.*", "--trainable", "lm_head.*", "-f", "json")
        assert result.code == 1, result.err
        docs[device] = json.loads(result.out)
    assert docs["meta"]["passed"] is docs["cpu"]["passed"] is False
    subjects = [(v["check"], v["subject"]) for v in docs["cpu"]["violations"]]
    assert ("flag", "model.embed_tokens.weight") in subjects
    assert [(v["check"], v["subject"]) for v in docs["meta"]["violations"]] == subjects
    strip = [{k: v for k, v in p.items() if k != "grad"} for p in docs["cpu"]["parameters"]]
    assert [{k: v for k, v in p.items() if k != "grad"} for p in docs["meta"]["parameters"]] == strip
    assert {p["grad"] for p in docs["meta"]["parameters"]} == {"present"}  # meta: a gradient, values unknown
