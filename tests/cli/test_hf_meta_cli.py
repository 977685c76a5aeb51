"""``gradprobe inspect --device meta`` on Hugging Face models, through the real CLI (issue 17 §1).

The meta estimate of a padded Llama batch and of a Wav2Vec2 (time-step masking in training) must carry the
same bytes as the CPU run of the same command, and so must a float32 Mixtral (grouped_mm).
"""

from __future__ import annotations

import json

import pytest

TARGETS = {"llama": "tests.fixtures.hf_tiny:padded_batch", "wav2vec2": "tests.fixtures.hf_tiny:audio"}


def _memory(run_cli, target: str, device: str) -> dict:
    result = run_cli("inspect", f"tests.fixtures.hf_tiny:{target}", "--inputs", TARGETS[target], "--device", device,
                     "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)["memory"]


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_meta_estimate_equals_the_cpu_run(run_cli, target: str) -> None:
    cpu, meta = _memory(run_cli, target, "cpu"), _memory(run_cli, target, "meta")
    keys = ("saved_for_backward_bytes", "forward_peak_bytes", "backward_peak_bytes", "parameter_bytes")
    assert {k: meta[k] for k in keys} == {k: cpu[k] for k in keys}
    assert meta["approximate"] == [] and cpu["approximate"] == []


@pytest.mark.slow
def test_mixtral_in_float32_on_meta_equals_the_cpu_run(run_cli) -> None:
    """grouped_mm's meta kernel takes bfloat16 only; gradprobe shapes it as the CPU kernel does."""
    docs = {}
    for device in ("cpu", "meta"):
        result = run_cli("inspect", "tests.fixtures.hf_tiny:mixtral", "--inputs", TARGETS["llama"], "--device",
                         device, "--format", "json")
        assert result.code == 0, result.err
        docs[device] = json.loads(result.out)["memory"]
    keys = ("saved_for_backward_bytes", "forward_peak_bytes", "backward_peak_bytes", "parameter_bytes")
    assert {k: docs["meta"][k] for k in keys} == {k: docs["cpu"][k] for k in keys}
    assert docs["meta"]["approximate"] == []


@pytest.mark.slow
def test_hf_folder_on_meta_keeps_its_attention_mask_and_equals_the_cpu_run(run_cli, tmp_path) -> None:
    """A config-only folder: inputs made from config.json carry an attention_mask on meta too (its values stay
    on the CPU beside the run), so the estimate is the CPU run's to the byte."""
    from tests.fixtures import hf_tiny

    make_config, _ = hf_tiny._configs()["bert"]
    config = make_config()
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp_path / "bert")
    docs = {}
    for device in ("cpu", "meta"):
        result = run_cli("inspect", "bert", "--shape", "2,12", "--device", device, "-f", "json", cwd=tmp_path)
        assert result.code == 0, result.err
        docs[device] = json.loads(result.out)
    assert any("attention_mask of ones" in n for n in docs["meta"]["notes"])
    keys = ("saved_for_backward_bytes", "forward_peak_bytes", "backward_peak_bytes")
    assert {k: docs["meta"]["memory"][k] for k in keys} == {k: docs["cpu"]["memory"][k] for k in keys}
