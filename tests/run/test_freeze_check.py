"""freeze-check (issue 4): every trap fails with the right check and subject, every fix passes.

Expected subjects are computed from the models with plain PyTorch (``named_parameters``, a manual
forward/backward), never copied from gradprobe's output.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.errors import UsageError
from gradprobe.facts.freeze import CHECKS
from gradprobe.judges.freeze_spec import FreezeSpec, pattern_matches
from tests.fixtures import freeze_models as fm

MODELS = Path(fm.__file__).resolve()


def names_under(model: nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{n}" for n, _ in model.get_submodule(prefix).named_parameters()}


def subjects(report: Any, check: str, kind: str = "violations") -> set[str]:
    return {i.subject for i in getattr(report, kind) if i.check == check}


def messages(report: Any, check: str) -> str:
    return "\n".join(i.message for i in report.violations if i.check == check)


def plain_grads(model: nn.Module) -> dict[str, tuple[bool, str]]:
    """requires_grad and grad state per parameter after a train-mode forward + sum().backward(), in plain torch."""
    m = copy.deepcopy(model)
    m.train()
    for p in m.parameters():
        p.grad = None
    with torch.enable_grad():
        out = m(m.example_input_array)
        if out.requires_grad:
            out.sum().backward()
    states = {}
    for name, p in m.named_parameters():
        state = "none" if p.grad is None else ("zero" if not bool(p.grad.any()) else "nonzero")
        states[name] = (p.requires_grad, state)
    return states


@pytest.fixture(autouse=True)
def _not_on_github(monkeypatch: pytest.MonkeyPatch) -> None:
    """This suite may itself run under GitHub Actions: never write to the real step summary."""
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def plain_loop(model: nn.Module, factory: Callable[[nn.Module], torch.optim.Optimizer], frozen: set[str],
               steps: int = 3) -> set[str]:
    """Frozen parameters that a plain training loop moves: backward, step(), zero_grad(), ``steps`` times."""
    m = copy.deepcopy(model)
    opt = factory(m)
    m.train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(steps):
        m(m.example_input_array).sum().backward()
        opt.step()
        opt.zero_grad()
    return {n for n, p in m.named_parameters() if n in frozen and not torch.equal(before[n], p)}


# --------------------------------------------------------------------------- traps: each must fail


def test_no_grad_inside_forward() -> None:
    model = fm.NoGradFreeze()
    report = gradprobe.freeze_check(model, **fm.SPEC)
    assert not report.passed
    backbone, stem = names_under(model, "backbone"), names_under(model, "stem")
    assert subjects(report, "flag") == backbone  # still require grad
    assert "torch.no_grad()" in messages(report, "flag") and "find_unused_parameters=True" in messages(report, "flag")
    assert subjects(report, "gradient") == stem  # the no_grad region cuts everything upstream
    assert "'backbone" in messages(report, "gradient") and "upstream" in messages(report, "gradient")
    assert set(report.ddp_unused) == backbone | stem


def test_detach_inside_forward() -> None:
    model = fm.DetachFreeze()
    report = gradprobe.freeze_check(model, **fm.SPEC)
    assert subjects(report, "flag") == names_under(model, "backbone")
    assert "detach" in messages(report, "flag")
    assert subjects(report, "gradient") == names_under(model, "stem")


def test_requires_grad_attribute_freezes_nothing() -> None:
    model = fm.AttrFreeze()
    assert model.backbone.__dict__["requires_grad"] is False  # the trap really is a plain attribute
    report = gradprobe.freeze_check(model, **fm.SPEC)
    backbone = names_under(model, "backbone")
    assert subjects(report, "flag") == backbone
    assert "plain attribute requires_grad=False" in messages(report, "flag")
    assert "model.backbone.requires_grad_(False)" in messages(report, "flag")
    assert subjects(report, "gradient") == backbone  # and they are being trained


def test_tied_weight_frozen_under_one_name_trained_under_the_other() -> None:
    model = fm.TiedLM()
    assert model.head.weight is model.embed.weight
    report = gradprobe.freeze_check(model, frozen=["embed"], trainable=["head", "body"])
    assert not report.passed
    assert subjects(report, "conflict") == {"embed.weight"}
    (issue,) = [i for i in report.violations if i.check == "conflict"]
    assert "'head.weight'" in issue.message and "tied" in issue.message
    row = next(p for p in report.parameters if p.name == "embed.weight")
    assert row.aliases == ("head.weight",) and row.conflict


def test_batchnorm_statistics_drift_in_frozen_backbone() -> None:
    model = fm.BNNet()
    report = gradprobe.freeze_check(model, **fm.SPEC)
    bn = {f"backbone.1.{n}" for n, _ in model.backbone[1].named_buffers()}
    assert subjects(report, "buffer") == bn
    assert "model.backbone.eval()" in messages(report, "buffer")
    assert "--allow-buffer-updates" in messages(report, "buffer")


def test_never_called_layer() -> None:
    model = fm.UnusedLayer()
    report = gradprobe.freeze_check(model, frozen="backbone", trainable=["stem", "head", "aux"])
    assert subjects(report, "gradient") == names_under(model, "aux")
    text = messages(report, "gradient")
    assert "'aux' is never called" in text and "find_unused_parameters=True" in text


@pytest.mark.parametrize(("factory", "setting", "mechanism"), [
    (fm.sgd_momentum_resumed, "momentum=0.9", "momentum"),
    (fm.adam_resumed, "Adam's state exp_avg", "adam-state"),
])
def test_resumed_optimizer_state_keeps_moving_frozen_parameters(factory: Callable[[nn.Module], Any], setting: str,
                                                               mechanism: str) -> None:
    """Resumed mid-training: zero .grad tensors (zero_grad(set_to_none=False)) and momentum/Adam state."""
    model = fm.Frozen()
    report = gradprobe.freeze_check(model, optimizer=factory, **fm.SPEC)
    backbone = names_under(model, "backbone")
    assert subjects(report, "step") == plain_loop(fm.Frozen(), factory, backbone) == backbone
    for issue in (i for i in report.violations if i.check == "step"):
        assert setting in issue.message and "resumed checkpoint" in issue.message
        assert mechanism in issue.mechanism and "zero .grad" in issue.message


def test_frozen_parameters_in_adamw_with_weight_decay_pass_with_a_warning() -> None:
    """AdamW(model.parameters(), weight_decay): plain torch skips frozen parameters, so the freeze holds."""
    model = fm.Frozen()
    backbone = names_under(model, "backbone")
    assert plain_loop(model, fm.adamw_all, backbone) == set()
    report = gradprobe.freeze_check(model, optimizer=fm.adamw_all, **fm.SPEC)
    assert report.passed, report.explain()
    assert subjects(report, "optimizer", "warnings") == backbone
    assert all("would move if it ever got a gradient" in w.message for w in report.warnings)
    assert not any("optimizer state" in n for n in report.notes)  # AdamW created none for them


def test_trainable_parameter_missing_from_optimizer() -> None:
    model = fm.Frozen()
    report = gradprobe.freeze_check(model, optimizer=fm.head_only, **fm.SPEC)
    assert subjects(report, "optimizer") == names_under(model, "stem")
    assert "no param group" in messages(report, "optimizer")


def test_trainable_parameter_that_does_not_move_is_a_warning() -> None:
    report = gradprobe.freeze_check(
        fm.Frozen(), optimizer=lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0),
        **fm.SPEC)
    assert report.passed
    assert subjects(report, "step", "warnings") == names_under(fm.Frozen(), "stem") | names_under(fm.Frozen(), "head")


# --------------------------------------------------------------------------- counterparts: each must pass


@pytest.mark.parametrize(("make", "kwargs"), [
    (fm.Frozen, fm.SPEC),
    (fm.untied, {"frozen": ["embed"], "trainable": ["head", "body"]}),
    (fm.bn_eval, fm.SPEC),
    (fm.BNNet, {**fm.SPEC, "allow_buffer_updates": True}),
    (fm.UsedLayer, {"frozen": "backbone", "trainable": ["stem", "head", "aux"]}),
    (fm.Frozen, {**fm.SPEC, "optimizer": fm.adamw_trainable}),
    (fm.Frozen, {**fm.SPEC, "optimizer": fm.sgd_trainable_resumed}),
], ids=["frozen", "untied", "bn-eval", "allow-buffers", "used-layer", "adamw-trainable", "sgd-resumed-trainable"])
def test_correct_freeze_passes(make: Callable[[], nn.Module], kwargs: dict[str, Any]) -> None:
    report = gradprobe.freeze_check(make(), **kwargs)
    assert report.passed, report.explain()
    assert report.violations == ()
    gradprobe.assert_frozen(make(), **kwargs)


# --------------------------------------------------------------------------- facts against plain PyTorch


@pytest.mark.parametrize("make", [fm.Frozen, fm.NoGradFreeze, fm.AttrFreeze, fm.TiedLM, fm.UnusedLayer])
def test_parameter_rows_match_plain_pytorch(make: Callable[[], nn.Module]) -> None:
    model = make()
    expected = plain_grads(model)
    spec = {"frozen": ["embed"], "trainable": ["body"]} if isinstance(model, fm.TiedLM) else fm.SPEC
    report = gradprobe.freeze_check(model, **spec)
    rows = {p.name: (p.requires_grad, p.grad) for p in report.parameters}
    assert rows == expected
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(expected)
    assert {a for p in report.parameters for a in p.aliases} == tied


def test_model_and_optimizer_are_left_exactly_as_found() -> None:
    model = fm.BNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    fm._resume(model, opt)  # optimizer state and zeroed .grad tensors, as mid-training
    model.head.weight.grad = torch.full_like(model.head.weight, 7.0)
    model.eval()
    before_values = {k: v.clone() for k, v in model.state_dict().items()}
    before_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before_grads = {n: p.grad for n, p in model.named_parameters()}
    before_grad_values = {n: None if g is None else g.clone() for n, g in before_grads.items()}
    before_opt = copy.deepcopy(opt.state_dict())
    rng = torch.random.get_rng_state()

    report = gradprobe.freeze_check(model, optimizer=opt, **fm.SPEC)
    assert not report.passed  # buffers drift, frozen parameters in the optimizer move

    assert all(torch.equal(before_values[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before_flags
    for n, p in model.named_parameters():
        assert p.grad is before_grads[n]
        if p.grad is not None:
            assert torch.equal(p.grad, before_grad_values[n])
    assert not any(m.training for m in model.modules())
    after_opt = opt.state_dict()
    assert after_opt["param_groups"] == before_opt["param_groups"]
    assert before_opt["state"].keys() == after_opt["state"].keys()
    for k, state in before_opt["state"].items():
        assert torch.equal(state["momentum_buffer"], after_opt["state"][k]["momentum_buffer"])
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.is_grad_enabled()


def test_assert_frozen_lists_every_violation() -> None:
    model = fm.AttrFreeze()
    with pytest.raises(AssertionError) as info:
        gradprobe.assert_frozen(model, **fm.SPEC)
    text = str(info.value)
    backbone = names_under(model, "backbone")
    assert text.startswith("FAIL: the freeze does not hold")
    for name in backbone:
        assert f"[flag] {name}:" in text and f"[gradient] {name}:" in text
    assert len(text.splitlines()) == 1 + 2 * len(backbone)


# --------------------------------------------------------------------------- spec


def test_patterns_match_every_name_and_bare_module_names() -> None:
    assert pattern_matches("backbone", "backbone.0.weight")
    assert not pattern_matches("backbone", "backbone2.weight")
    assert pattern_matches("*.bias", "head.bias") and not pattern_matches("*.bias", "head.weight")
    spec = FreezeSpec.make(frozen="embed", trainable=["lm_head"])
    assert spec.classify(("embed.weight",)).expected == "frozen"
    assert spec.classify(("embed.weight", "lm_head.weight")).conflict
    assert spec.classify(("body.weight",)).expected == "unlisted"


def test_unlisted_policy() -> None:
    model = fm.UnusedLayer()
    aux = names_under(model, "aux")
    warn = gradprobe.freeze_check(model, **fm.SPEC)
    assert warn.passed and subjects(warn, "unlisted", "warnings") == {"aux"}
    assert subjects(warn, "gradient", "warnings") == aux  # distributed readiness, even when unlisted
    error = gradprobe.freeze_check(model, **fm.SPEC, unlisted="error")
    assert not error.passed and subjects(error, "unlisted") == {"aux"}
    ignore = gradprobe.freeze_check(model, **fm.SPEC, unlisted="ignore")
    assert not subjects(ignore, "unlisted", "warnings")
    assert {p.name for p in warn.parameters if p.expected == "unlisted"} == aux


def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="nothing to check"):
        gradprobe.freeze_check(fm.Frozen())
    with pytest.raises(UsageError, match="did you mean 'backbone'"):
        gradprobe.freeze_check(fm.Frozen(), frozen=["backbon"])
    with pytest.raises(UsageError, match="--unlisted"):
        gradprobe.freeze_check(fm.Frozen(), frozen=["backbone"], unlisted="sometimes")


def test_baseline_round_trip_api(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    model = fm.TiedLM()
    report = gradprobe.freeze_check(model, write_baseline=path)
    assert report.passed
    doc = json.loads(path.read_text())
    assert doc["parameters"] == {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    model.body.weight.requires_grad_(False)  # a silent change to the freeze
    changed = gradprobe.freeze_check(model, baseline=path)
    assert subjects(changed, "flag") == {"body.weight"}
    assert "baseline" in messages(changed, "flag")


# --------------------------------------------------------------------------- CLI in-process


def test_pyproject_round_trip(tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "freeze_models_cfg.py").write_text(MODELS.read_text())
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.gradprobe.freeze]\ntarget = "freeze_models_cfg:Frozen"\n'
        'frozen = ["backbone"]\ntrainable = ["stem", "head"]\noptimizer = "freeze_models_cfg:adamw_trainable"\n'
        'unlisted = "error"\n')
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # found by walking up
    ok = cli("freeze-check", "-f", "json")
    assert ok.code == 0, ok.err
    doc = json.loads(ok.out)
    assert doc["passed"] and doc["config"] == str(tmp_path / "pyproject.toml")
    assert doc["frozen"] == ["backbone"] and doc["unlisted"] == "error"
    assert doc["optimizer"]["type"] == "AdamW"
    # the command line overrides the table: another target, another trainable list
    over = cli("freeze-check", "freeze_models_cfg:NoGradFreeze", "--trainable", "head", "-f", "json")
    assert over.code == 1
    doc = json.loads(over.out)
    assert doc["trainable"] == ["head"] and doc["frozen"] == ["backbone"]
    assert {v["subject"] for v in doc["violations"] if v["check"] == "unlisted"} == {"stem"}
    (tmp_path / "pyproject.toml").write_text('[tool.gradprobe.freeze]\ntraniable = ["head"]\n')
    bad = cli("freeze-check")
    assert bad.code == 2 and len(bad.err_lines) == 1 and "did you mean 'trainable'" in bad.err


def test_baseline_round_trip_cli(tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "freeze-baseline.json"
    wrote = cli("freeze-check", f"{MODELS}:Frozen", "--write-baseline", str(path))
    assert wrote.code == 0, wrote.err
    flags = {n: p.requires_grad for n, p in fm.Frozen().named_parameters()}
    assert json.loads(path.read_text())["parameters"] == flags
    assert cli("freeze-check", f"{MODELS}:Frozen", "--baseline", str(path)).code == 0
    changed = cli("freeze-check", f"{MODELS}:Base", "--baseline", str(path), "-f", "json")
    assert changed.code == 1
    doc = json.loads(changed.out)
    unfrozen = {n for n, rg in flags.items() if not rg}
    by_check = {c: {v["subject"] for v in doc["violations"] if v["check"] == c} for c in ("flag", "gradient")}
    assert by_check == {"flag": unfrozen, "gradient": unfrozen}  # flag differs, and they are now trained
    assert len(doc["violations"]) == 2 * len(unfrozen)
    assert all("baseline" in v["message"] for v in doc["violations"] if v["check"] == "flag")


def test_json_fields(tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = cli("freeze-check", f"{MODELS}:UnusedLayer", "--frozen", "backbone", "--trainable", "stem",
              "--trainable", "head", "--trainable", "aux", "--optimizer", f"{MODELS}:adamw_all", "-f", "json")
    assert res.code == 1
    doc = json.loads(res.out)
    assert doc["schema"] == "gradprobe.freeze/1" and doc["passed"] is False
    model = fm.UnusedLayer()
    for issue in doc["violations"] + doc["warnings"]:
        assert set(issue) == {"check", "subject", "expected", "found", "message", "fix", "mechanism"}
        assert issue["check"] in CHECKS
        assert issue["fix"] is None or issue["message"].endswith(issue["fix"])
    assert {v["check"] for v in doc["violations"]} == {"gradient"}  # aux is never called
    assert {w["subject"] for w in doc["warnings"] if w["check"] == "optimizer"} == names_under(model, "backbone")
    assert [p["name"] for p in doc["parameters"]] == [n for n, _ in model.named_parameters()]
    for p in doc["parameters"]:
        assert {"name", "aliases", "expected", "requires_grad", "grad"} <= set(p)
        assert p["expected"] in ("frozen", "trainable", "unlisted")


def test_junit_file(tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "freeze.xml"
    res = cli("freeze-check", f"{MODELS}:BNNet", "--frozen", "backbone", "--trainable", "stem", "--trainable",
              "head", "--junit", str(out))
    assert res.code == 1
    root = ET.parse(out).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert int(suite.get("tests", "-1")) == len(cases)
    failing = {n for n, c in cases.items() if c.find("failure") is not None}
    assert failing == {"buffer: frozen backbone"}
    assert int(suite.get("failures", "-1")) == 1
    text = cases["buffer: frozen backbone"].find("failure").text or ""  # type: ignore[union-attr]
    for name, _ in fm.BNNet().backbone[1].named_buffers():
        assert f"backbone.1.{name}" in text
    assert cases["optimizer: trainable head"].find("skipped") is not None  # no --optimizer
    assert {"flag: frozen backbone", "gradient: trainable stem", "conflict: frozen vs trainable"} <= set(cases)


def test_cli_usage_errors(tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args, text in [((), "no TARGET"), ((f"{MODELS}:Frozen",), "nothing to check"),
                       ((f"{MODELS}:Frozen", "--frozen", "backbon"), "did you mean 'backbone'"),
                       ((f"{MODELS}:Frozen", "--frozen", "backbone", "--optimizer", f"{MODELS}:not_an_optimizer"),
                        "not a torch.optim.Optimizer")]:
        res = cli("freeze-check", *args)
        assert res.code == 2 and len(res.err_lines) == 1 and text in res.err, (args, res.err)
        assert "Traceback" not in res.err


# --------------------------------------------------------------------------- the real command


@pytest.mark.slow
def test_exit_codes_through_the_real_cli(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    spec = ["--frozen", "backbone", "--trainable", "stem", "--trainable", "head"]
    ok = run_cli("freeze-check", f"{MODELS}:Frozen", *spec, cwd=tmp_path)
    assert ok.code == 0, ok.err
    assert ok.out.strip().splitlines()[-1].startswith("PASS")
    broken = run_cli("freeze-check", f"{MODELS}:Broken", *spec, cwd=tmp_path)
    assert broken.code == 2 and "could not be verified" in broken.err and "Traceback" not in broken.err


@pytest.mark.slow
def test_github_actions_annotations_and_summary(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    res = run_cli("freeze-check", f"{MODELS}:NoGradFreeze", "--frozen", "backbone", "--trainable", "stem",
                  "--trainable", "head", "-f", "json", cwd=tmp_path,
                  env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert res.code == 1
    doc = json.loads(res.out)  # annotations never corrupt the report on stdout
    errors = [line for line in res.err.splitlines() if line.startswith("::error ")]
    assert len(errors) == len(doc["violations"]) == len(names_under(fm.Base(), "backbone")) + 2
    assert any("backbone.0.weight" in line for line in errors)
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "## gradprobe freeze-check" in text and ": FAIL" in text
    assert "| `flag` | `backbone.0.weight` |" in text
