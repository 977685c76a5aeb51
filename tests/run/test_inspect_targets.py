"""Every TARGET form (issue 2 §2) and --weights, through the API the CLI uses and through the real command."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from gradprobe.api import load, probe
from gradprobe.errors import TargetError, UsageError
from tests.fixtures import models as mi

MODELS = Path(mi.__file__)
FILE = str(MODELS)


def _weights_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    mine = model.state_dict()
    return set(mine) == set(state) and all(torch.equal(mine[k], state[k]) for k in state)


def _write_module(directory: Path, body: str) -> str:
    """A uniquely named importable module in ``directory`` (so no test sees another's sys.modules entry)."""
    name = f"gp_user_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(body)
    return name


NET_SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.lin = nn.Linear(2, width)
        self.example_input_array = torch.ones(1, 2)

    def forward(self, x):
        return self.lin(x)
"""


# ------------------------------------------------------------------ module:Class and package.module:Class


def test_module_class_from_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _write_module(tmp_path, NET_SOURCE)
    monkeypatch.chdir(tmp_path)
    loaded, example = load(f"{name}:Net")
    assert type(loaded.model).__name__ == "Net"
    assert loaded.model.lin.out_features == 3
    assert example.source == "model.example_input_array"


def test_installed_package_module_class() -> None:
    loaded, _ = load("gradprobe.examples:FineTuneNet")
    from gradprobe.examples import FineTuneNet

    assert type(loaded.model) is FineTuneNet


@pytest.mark.slow
def test_dotted_package_module_via_cli(tmp_path: Path, run_cli) -> None:
    """``package.module:Name`` with the current directory importable, as ``python -m`` does."""
    pkg = tmp_path / "mypkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "nets.py").write_text(NET_SOURCE)
    result = run_cli("inspect", "mypkg.sub.nets:Net", "--init", '{"width": 4}', "--format", "json", cwd=tmp_path)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["target"] == "mypkg.sub.nets:Net"
    shapes = {p["name"]: p["shape"] for p in doc["parameters"]}
    assert shapes == {"lin.weight": [4, 2], "lin.bias": [4]}


# ------------------------------------------------------------------ file.py:Class, dotted names, factories, instances


def test_file_class() -> None:
    loaded, example = load(f"{FILE}:MLP")
    assert type(loaded.model).__name__ == "MLP"
    assert [tuple(p.shape) for p in loaded.model.parameters()] == [
        (mi.HIDDEN, mi.IN), (mi.HIDDEN,), (mi.OUT, mi.HIDDEN), (mi.OUT,)]
    assert tuple(example.args[0].shape) == (mi.B, mi.IN)


def test_relative_file_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(MODELS.parents[2])
    loaded, _ = load("tests/fixtures/models.py:MLP")
    assert type(loaded.model).__name__ == "MLP"


def test_dotted_name_in_file() -> None:
    loaded, _ = load(f"{FILE}:registry.model")
    assert type(loaded.model).__name__ == "MLP"
    loaded, _ = load(f"{FILE}:registry.factory", init={"hidden": 9})
    assert loaded.model.net[0].out_features == 9


def test_factory_without_init() -> None:
    loaded, _ = load(f"{FILE}:make_mlp")
    assert loaded.model.net[0].out_features == mi.HIDDEN


def test_factory_with_init_json() -> None:
    loaded, _ = load(f"{FILE}:make_mlp", init='{"hidden": 7}')
    assert loaded.model.net[0].out_features == 7


def test_class_with_init_json() -> None:
    loaded, example = load(f"{FILE}:MLP", init='{"hidden": 2, "batch": 3}')
    assert loaded.model.net[0].out_features == 2
    assert tuple(example.args[0].shape) == (3, mi.IN)


def test_class_needing_args_with_init() -> None:
    loaded, _ = load(f"{FILE}:NeedsArgs", init={"hidden": 4, "depth": 2})
    assert loaded.model.lin.out_features == 4 and len(loaded.model.blocks) == 2


def test_module_instance_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance is not copied or rebuilt: the user's object is probed (and left as found)."""
    monkeypatch.chdir(MODELS.parents[2])
    loaded, _ = load("tests.fixtures.models:mlp_instance")
    assert loaded.model is mi.mlp_instance


def test_init_on_instance_is_refused() -> None:
    with pytest.raises(UsageError, match="--init does not apply"):
        load(f"{FILE}:mlp_instance", init={"hidden": 3})


def test_init_with_unknown_key_names_the_arguments() -> None:
    with pytest.raises(TargetError, match=r"takes no argument 'nope'.*hidden, batch"):
        load(f"{FILE}:MLP", init={"nope": 1})


def test_type_error_inside_constructor_is_not_blamed_on_init(tmp_path: Path) -> None:
    path = tmp_path / "inner_typeerror.py"
    path.write_text("from torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.lin = nn.Linear(3)\n")
    with pytest.raises(TargetError) as info:
        load(f"{path}:Net")
    message = str(info.value)
    assert "missing 1 required positional argument" in message
    assert "--init" not in message
    assert f"{path}:5" in message  # the user's line


def test_seed_makes_building_reproducible() -> None:
    a, _ = load(f"{FILE}:MLP", seed=3)
    b, _ = load(f"{FILE}:MLP", seed=3)
    c, _ = load(f"{FILE}:MLP", seed=4)
    assert _weights_equal(a.model, b.model.state_dict())
    assert not _weights_equal(a.model, c.model.state_dict())


# ------------------------------------------------------------------ weights


def test_weights_pt_are_loaded(tmp_path: Path) -> None:
    source = mi.MLP()
    with torch.no_grad():
        for i, p in enumerate(source.parameters()):
            p.fill_(0.1 * (i + 1))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded, example = load(f"{FILE}:MLP", weights=str(tmp_path / "w.pt"))
    assert _weights_equal(loaded.model, source.state_dict())
    report = probe(loaded.model, example, loaded=loaded)
    assert report.facts.missing_keys == () and report.facts.unexpected_keys == ()
    assert not [f for f in report.findings if f.code.startswith("weights-")]
    expected = source(example.args[0]).sum().item()
    assert report.facts.loss == pytest.approx(expected, rel=1e-6)


def test_weights_checkpoint_entry_is_unwrapped(tmp_path: Path) -> None:
    source = mi.MLP()
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    loaded, _ = load(f"{FILE}:MLP", weights=str(tmp_path / "ckpt.pt"))
    assert _weights_equal(loaded.model, source.state_dict())


def test_weights_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = mi.MLP()
    safetensors_torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded, _ = load(f"{FILE}:MLP", weights=str(tmp_path / "w.safetensors"))
    assert _weights_equal(loaded.model, source.state_dict())


def test_weights_key_mismatch_is_reported(tmp_path: Path) -> None:
    state = mi.MLP().state_dict()
    del state["net.0.bias"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "keys.pt")
    loaded, example = load(f"{FILE}:MLP", weights=str(tmp_path / "keys.pt"))
    report = probe(loaded.model, example, loaded=loaded)
    assert report.facts.missing_keys == ("net.0.bias",)
    assert report.facts.unexpected_keys == ("extra.weight",)
    codes = {f.code: f for f in report.findings}
    assert codes["weights-missing-keys"].subject == "net.0.bias"
    assert codes["weights-unexpected-keys"].subject == "extra.weight"
    assert codes["weights-missing-keys"].severity == "warning"
