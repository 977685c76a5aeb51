"""``--device meta``: building, moving, what is reported exactly, and what cannot run (issue 5 §1)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from gradprobe.api import load, probe
from gradprobe.errors import RunError
from tests.fixtures import zoo

MODEL_FILE = """
import torch
import torch.nn.functional as F
from torch import nn
from tests.fixtures import zoo

tied = zoo.tiny_gpt()  # an instance: moved to meta by gradprobe, weight tying restored


class Net(nn.Module):
    def __init__(self, op: str = "none") -> None:
        super().__init__()
        self.op = op
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x):
        h = self.body(x)
        if self.op == "nonzero":
            h = h[h > 0].reshape(-1, 1).expand(-1, 8)
        elif self.op == "item":
            h = h * float(h.sum().item())
        elif self.op == "one_hot":
            h = h + F.one_hot(x.argmax(-1)).float().sum()
        return self.head(h)
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "metamodels.py").write_text(MODEL_FILE)
    return tmp_path


def _json(run_cli, *args: str, cwd: Path | None = None) -> dict:
    result = run_cli("inspect", *args, "--format", "json", cwd=cwd)
    assert result.code == 0, result.err
    return json.loads(result.out)


# ---- building on meta: no parameter memory


RSS_SCRIPT = textwrap.dedent("""
    import sys
    from gradprobe.api import load
    loaded, example = load(sys.argv[1], device="meta")
    devices = {p.device.type for p in loaded.model.parameters()} | {t.device.type for t in example.args}
    numel = sum(p.numel() for p in loaded.model.parameters())
    # VmHWM: this process's own peak (ru_maxrss would include the parent's size at fork, inherited over exec)
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    print(sorted(devices), numel, peak)
""")


@pytest.mark.slow
def test_factory_is_built_on_meta_without_allocating() -> None:
    """Llama-7B holds 27 GB of float32 parameters; built on meta the whole process stays a small fraction of that
    (~330 MB measured; the bound is loose so a busy machine cannot fail it)."""
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, "tests.fixtures.zoo:llama_7b"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    devices, numel, rss = proc.stdout.split("] ")[0] + "]", *proc.stdout.split("] ")[1].split()
    assert devices == "['meta']"
    assert int(numel) == 6_738_415_616
    assert int(rss) < 4 * 2**30


@pytest.mark.slow
def test_instance_moved_to_meta_keeps_its_tied_weights(run_cli, model_dir: Path) -> None:
    plain = zoo.tiny_gpt().to("meta")  # what .to("meta") alone does: the tied head becomes a second Parameter
    assert plain.lm_head.weight is not plain.transformer.wte.weight
    cpu = _json(run_cli, "metamodels.py:tied", cwd=model_dir)
    meta = _json(run_cli, "metamodels.py:tied", "--device", "meta", cwd=model_dir)
    assert len(meta["parameters"]) == len(cpu["parameters"]) == len(list(zoo.tiny_gpt().parameters()))
    wte = next(p for p in meta["parameters"] if p["name"] == "transformer.wte.weight")
    assert wte["aliases"] == ["lm_head.weight"]
    assert meta["summary"]["numel"] == cpu["summary"]["numel"]
    for key in ("forward_peak_bytes", "saved_for_backward_bytes", "backward_peak_bytes", "gradient_bytes"):
        assert meta["memory"][key] == cpu["memory"][key], key
    assert any("re-tied 1 shared parameter" in note for note in meta["notes"])


@pytest.mark.slow
def test_meta_reports_gradients_as_present(run_cli, model_dir: Path) -> None:
    doc = _json(run_cli, "tests.fixtures.zoo:tiny_llama", "--device", "meta")
    assert doc["device"] == "meta" and doc["backward"] is True
    assert {p["grad"] for p in doc["parameters"]} == {"present"}
    assert all(p["grad_norm"] is None for p in doc["parameters"])
    assert doc["loss"] is None


def test_meta_frozen_parameters_get_no_gradient() -> None:
    with torch.device("meta"):
        model = zoo.tiny_gpt()
    for p in model.transformer.h[0].parameters():
        p.requires_grad_(False)
    facts = probe(model).facts
    frozen = {p.name: p.grad for p in facts.parameters if p.name.startswith("transformer.h.0.")}
    assert set(frozen.values()) == {"none"}
    assert {p.grad for p in facts.parameters if p.requires_grad} == {"present"}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.slow
def test_meta_buffers_change_as_on_cpu(mode: str) -> None:
    """BatchNorm running statistics: changed in train mode, untouched in eval, told by the version counter."""
    torch.manual_seed(0)
    cpu = probe(zoo.resnet_small(), mode=mode).facts
    with torch.device("meta"):
        meta_model = zoo.resnet_small()
    meta = probe(meta_model, mode=mode).facts
    expected = {b.name: b.changed for b in cpu.buffers}
    assert {b.name: b.changed for b in meta.buffers} == expected
    assert set(expected.values()) == {mode == "train"}


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_meta_batchnorm_statistics_change_without_grad_as_plain_pytorch(grad_mode: str) -> None:
    """Under inference_mode the dispatch mode sees the undecomposed ``aten.batch_norm`` (not ``native_batch_norm``)
    and no version counter moves: the meta run reported running_mean/var unchanged (only num_batches_tracked, bumped
    by Python's add_), while a train forward on the CPU changes all three. Expected from plain PyTorch on the CPU."""
    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))

    torch.manual_seed(0)
    cpu_model, x = build(), torch.randn(2, 3, 6, 6)
    before = {n: b.clone() for n, b in cpu_model.named_buffers()}
    with getattr(torch, grad_mode)():
        cpu_model.train()(x)
    expected = {n: not torch.equal(b, before[n]) for n, b in cpu_model.named_buffers()}
    assert set(expected.values()) == {True}
    meta = probe(_meta(build), x.to("meta"), mode="train", grad_mode=grad_mode).facts
    assert {b.name: b.changed for b in meta.buffers} == expected


def test_meta_findings_and_graph_match_cpu() -> None:
    """Everything that does not depend on values is reported exactly as on CPU."""
    def build() -> nn.Module:
        model = zoo.tiny_gpt()
        model.transformer.h[1].requires_grad = False  # the classic mistake: freezes nothing
        return model

    torch.manual_seed(0)
    cpu_report, meta_report = probe(build()), probe(_meta(build))
    cpu, meta = cpu_report.facts, meta_report.facts
    codes = {(f.code, f.subject) for f in cpu_report.findings}
    assert ("requires-grad-attr", "transformer.h.1") in codes
    assert {(f.code, f.subject) for f in meta_report.findings} == codes
    assert (meta.graph.nodes, meta.graph.depth) == (cpu.graph.nodes, cpu.graph.depth)
    assert meta.graph.reached_params == cpu.graph.reached_params
    strip = [(t.module, t.call, t.path, t.shape, t.dtype, t.requires_grad, t.grad_fn, t.is_leaf) for t in cpu.tensors]
    assert [(t.module, t.call, t.path, t.shape, t.dtype, t.requires_grad, t.grad_fn, t.is_leaf)
            for t in meta.tensors] == strip


def _meta(factory) -> nn.Module:
    with torch.device("meta"):
        return factory()


# ---- ops that need values


@pytest.mark.parametrize(("op", "words"), [
    ("nonzero", "nonzero"), ("item", ".item()"), ("one_hot", ".item()")])
@pytest.mark.slow
def test_value_dependent_op_fails_with_one_clear_line(run_cli, model_dir: Path, op: str, words: str) -> None:
    result = run_cli("inspect", "metamodels.py:Net", "--init", json.dumps({"op": op}), "--device", "meta",
                     cwd=model_dir)
    assert result.code == 2
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert words in line and "meta" in line and "--device cpu" in line
    assert "Traceback" not in result.err
    # the module running when it failed is named: 'body' has returned, the model's own forward raised
    assert "model itself" in line and "Net" in line
    assert run_cli("inspect", "metamodels.py:Net", "--init", json.dumps({"op": op}), cwd=model_dir).code == 0


def test_value_dependent_op_names_the_inner_module() -> None:
    class Inner(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0]

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.pick = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pick(self.lin(x))

    with torch.device("meta"):
        model = Outer()
    with pytest.raises(RunError, match=r"module 'pick' \(Inner\): nonzero .*--device cpu"):
        probe(model, torch.randn(2, 4, device="meta"))


# ---- --param-dtype and the training-step estimate


def test_param_dtype_casts_the_meta_run_and_restores_the_model() -> None:
    with torch.device("meta"):
        model = zoo.tiny_llama()
    f32 = probe(model, optimizer_state="adam").facts.memory
    bf16 = probe(model, optimizer_state="adam", param_dtype="bfloat16").facts.memory
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # restored
    n_params = sum(p.numel() for p in model.parameters())
    assert f32.parameter_bytes == 4 * n_params and bf16.parameter_bytes == 2 * n_params
    step = bf16.training_step
    assert step is not None and step.param_dtype == "bfloat16" and "cast" in step.method
    assert step.optimizer_state_bytes == 2 * 2 * n_params  # Adam: exp_avg + exp_avg_sq, in the parameters' dtype
    assert step.total_bytes == (2 * n_params + 4 * n_params
                                + max(bf16.forward_peak_bytes, bf16.backward_peak_bytes, bf16.gradient_bytes))
    # activations shrink too (not exactly half: RMSNorm computes in float32, token ids stay int64)
    assert bf16.saved_for_backward_bytes < 0.75 * f32.saved_for_backward_bytes


def test_param_dtype_on_cpu_scales_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = zoo.mlp(in_features=16, hidden=32, out_features=4, batch=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    memory = probe(model, optimizer_state="momentum", param_dtype="float16").facts.memory
    n_params = sum(p.numel() for p in model.parameters())
    step = memory.training_step
    assert step.parameter_bytes == 2 * n_params and step.optimizer_state_bytes == 2 * n_params
    assert "scaled" in step.method
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.slow
def test_cli_options_for_the_training_step(run_cli) -> None:
    doc = _json(run_cli, "tests.fixtures.zoo:tiny_gpt", "--device", "meta", "--optimizer-state", "sgd",
                "--param-dtype", "float16")
    step = doc["memory"]["training_step"]
    params = sum(p["numel"] for p in doc["parameters"])
    assert step["optimizer_state"] == "sgd" and step["optimizer_state_bytes"] == 0
    assert step["param_dtype"] == "float16" and step["parameter_bytes"] == 2 * params
    assert {p["dtype"] for p in doc["parameters"]} == {"float16"}
    bad = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--optimizer-state", "lion")
    assert bad.code == 2 and "--optimizer-state" in bad.err


def test_load_on_meta_makes_meta_inputs() -> None:
    loaded, example = load("tests.fixtures.zoo:tiny_gpt", device="meta")
    assert {t.device.type for t in example.args} == {"meta"}
    assert probe(loaded.model, example).facts.device == "meta"
