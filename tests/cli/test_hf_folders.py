"""A local Hugging Face model folder is a target (issue 10 §3): saved with ``save_pretrained`` from a tiny config
(no downloads), with and without weights; inputs come from the config, and the default loss is the model's own
``outputs.loss``.  Checked against the same model and inputs run in plain PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.transformers


def tiny_bert(folder: Path, weights: bool = True) -> Any:
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0,
                                     architectures=["BertForMaskedLM"])
    if weights:
        torch.manual_seed(123)
        model = transformers.BertForMaskedLM(config)
        model.save_pretrained(folder)
        return model
    config.save_pretrained(folder)
    return None


def test_folder_with_weights_uses_the_models_own_loss(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    saved = tiny_bert(tmp_path / "checkpoints/tiny-bert")
    res = run_cli("inspect", "./checkpoints/tiny-bert", "-f", "json", cwd=tmp_path)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    notes = " ".join(doc["notes"])
    assert "loaded model.safetensors" in notes and "0 missing, 0 unexpected" in notes
    assert "input_ids 2×16 in [0, 100)" in notes and "model's own (outputs.loss)" in notes
    # plain PyTorch: the saved weights (no dropout), the same inputs (seed 0: token ids; labels = the ids), the
    # model's own loss
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 16))
    saved.train()
    expected = saved(input_ids=ids, attention_mask=torch.ones(2, 16, dtype=torch.long), labels=ids.clone()).loss
    assert doc["loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    # --loss sum overrides: logits and loss added up
    summed = json.loads(run_cli("inspect", "checkpoints/tiny-bert", "--loss", "sum", "-f", "json", cwd=tmp_path).out)
    assert summed["loss"] != pytest.approx(doc["loss"])


def test_folder_without_weights_is_built_from_its_config(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    tiny_bert(tmp_path / "cfg-only", weights=False)
    res = run_cli("inspect", "cfg-only", "--shape", "3,8", "-f", "json", cwd=tmp_path)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert any("random weights (the folder has no weights)" in n for n in doc["notes"])
    assert any("input_ids 3×8" in n for n in doc["notes"])
    meta = run_cli("inspect", "cfg-only", "--device", "meta", "-f", "json", cwd=tmp_path)
    assert meta.code == 0, meta.err
    bad = run_cli("inspect", "cfg-only", "--shape", "3,8,2", cwd=tmp_path)
    assert bad.code == 2 and "B,T" in bad.err


def test_a_folder_without_config_json_says_what_a_target_is(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "empty").mkdir()
    res = run_cli("inspect", "empty", cwd=tmp_path)
    assert res.code == 2 and len(res.err_lines) == 1 and "folder without config.json" in res.err


def test_factory_by_import_path_gets_a_safe_high(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    """A transformers model from a factory: --dtype int64 without --high draws ids below the vocabulary size."""
    (tmp_path / "hf_factory.py").write_text(
        "from transformers import GPT2Config, GPT2LMHeadModel\n\n\n"
        "def build():\n"
        "    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))\n")
    res = run_cli("inspect", "hf_factory.py:build", "--shape", "2,8", "--dtype", "int64", "-f", "json", cwd=tmp_path)
    assert res.code == 0, res.err
    assert any(n.startswith("--high 64:") and "'transformer.wte'" in n for n in json.loads(res.out)["notes"])


def test_folder_whose_forward_takes_other_inputs_says_what_it_takes(tmp_path: Path,
                                                                    run_cli: Callable[..., Any]) -> None:
    """Whisper has a vocab_size but takes input_features, not input_ids: one line naming what forward takes."""
    import inspect

    config = transformers.WhisperConfig(vocab_size=100, num_mel_bins=8, encoder_layers=1, decoder_layers=1,
                                        d_model=16, encoder_attention_heads=2, decoder_attention_heads=2,
                                        encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=10,
                                        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1, architectures=["WhisperForConditionalGeneration"])
    model = transformers.WhisperForConditionalGeneration(config)
    model.save_pretrained(tmp_path / "whisper")
    first = next(iter(inspect.signature(model.forward).parameters))  # plain Python: what forward takes first
    assert first == "input_features" and "input_ids" not in inspect.signature(model.forward).parameters
    res = run_cli("inspect", "./whisper", cwd=tmp_path)
    assert res.code == 2 and res.out == "", res.err
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert f"its forward takes {first}" in res.err and "--inputs module:fn" in res.err, res.err
