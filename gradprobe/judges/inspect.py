"""Judges: plain-language diagnoses of one run's facts.

Pure functions of ``RunFacts`` -- no torch -- so each diagnosis is tested
with hand-made facts as well as real runs.  Codes are a public contract.
"""

from __future__ import annotations

from gradprobe.facts.run import Finding, GradState, InspectReport, ModuleFact, ParamFact, RunFacts
from gradprobe.judges.checkpoint import ADVICE_TOP, checkpoint_advice
from gradprobe.units import py_path, shorten

CODES = {
    "grad-none": "a parameter requires grad but received no gradient",
    "grad-zero": "a parameter's gradient is exactly zero",
    "requires-grad-attr": "module.requires_grad set as a plain attribute (freezes nothing)",
    "frozen-bn-drift": "a frozen module's BatchNorm statistics changed in the forward",
    "train-mode-no-grad": "Dropout/BatchNorm in train mode while grad is disabled",
    "inference-output": "the model's outputs are inference tensors",
    "global-grad-disabled": "the global grad mode was found disabled",
    "nonfinite-output": "an output holds NaN or Inf",
    "param-modified-in-forward": "the forward wrote into a parameter in place",
    "no-backward": "no backward pass was possible",
    "no-trainable-params": "no parameter requires grad: nothing will train",
    "weights-missing-keys": "the weights file lacks some of the model's keys",
    "weights-unexpected-keys": "the weights file has keys the model lacks",
}


def _in_subtree(name: str, module: str) -> bool:
    return module == "" or name == module or name.startswith(module + ".")


def _cut_off_roots(facts: RunFacts, missing: list[ParamFact]) -> list[tuple[ModuleFact, list[ParamFact]]]:
    """Group parameters without gradient under the outermost module all of whose trainable parameters lack one.

    Counts per module prefix keep this linear in parameters x depth (a 15,000-module model stays instant).
    """
    if not missing:
        return []
    missing_names = {p.name for p in missing}
    total: dict[str, int] = {}
    lacking: dict[str, list[ParamFact]] = {}
    for p in facts.parameters:
        if not p.requires_grad:
            continue
        for prefix in _ancestors(p.module):
            total[prefix] = total.get(prefix, 0) + 1
            if p.name in missing_names:
                lacking.setdefault(prefix, []).append(p)
    by_name = {m.name: m for m in facts.modules}
    lacking_children: dict[str, list[str]] = {}
    for name in lacking:
        if name:
            lacking_children.setdefault(_parent(name), []).append(name)
    groups: list[tuple[ModuleFact, list[ParamFact]]] = []
    covered: set[str] = set()
    for mod in facts.modules:  # named_modules order: parents before children
        inside = lacking.get(mod.name, [])
        if not inside or len(inside) != total.get(mod.name, 0):
            continue
        if any(prefix in covered for prefix in _ancestors(mod.name)):
            continue
        covered.add(mod.name)
        # name the top-level module holding all of them ('backbone'), not the model around a frozen head
        while mod.name == "":
            child = next((name for name in lacking_children.get(mod.name, ())
                          if len(lacking[name]) == len(inside) and name in by_name), None)
            if child is None:
                break
            mod = by_name[child]
        groups.append((mod, inside))
    return groups


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _cause(facts: RunFacts, mod: ModuleFact) -> str:
    """Why a module's parameters were cut off from the loss, as far as the facts tell."""
    label = f"'{mod.name}'" if mod.name else "the model"
    subtree = [m for m in facts.modules if _in_subtree(m.name, mod.name)]
    if all(m.calls == 0 for m in subtree if m.direct_params):
        return f"{label} was never called in forward"
    if mod.output_grad_fn is False and facts.grad_mode == "grad":
        return (f"the output of {label} has no grad_fn: forward runs it under torch.no_grad() "
                f"(or detaches inside it)")
    if mod.output_grad_fn:
        return (f"{label} built a graph, but the loss does not reach it: its output is detached "
                f"(.detach(), .data) or goes through a non-differentiable op before the loss")
    return f"the loss does not depend on the parameters of {label}"


def _cut_off_hint(cause: str, module: str) -> str:
    """The fix that matches the cause: an unused layer, a no_grad freeze, or a detached output."""
    ref = py_path(module)
    if "never called" in cause:
        return (f"call it in forward or delete it; if it is meant to stay unused, freeze it with "
                f"{ref}.requires_grad_(False) (DDP fails on unused parameters unless find_unused_parameters=True)")
    if "no grad_fn" in cause:
        return (f"to freeze it, use {ref}.requires_grad_(False) and keep its parameters out of the optimizer "
                f"instead of no_grad in forward; to train it, remove the no_grad")
    return (f"to freeze it, use {ref}.requires_grad_(False); to train it, remove the .detach()/.data "
            f"between it and the loss")


def judge_inspect(facts: RunFacts) -> InspectReport:
    """The whole ``inspect`` verdict on one run: findings and activation-checkpointing advice."""
    candidates, plan = checkpoint_advice(facts, top=ADVICE_TOP)
    return InspectReport(facts, tuple(judge_run(facts)), tuple(candidates), plan)


def judge_run(facts: RunFacts) -> list[Finding]:
    """Every diagnosis the facts of one run support, most severe first."""
    findings: list[Finding] = []
    findings += _gradient_findings(facts)
    findings += _module_findings(facts)
    findings += _output_findings(facts)
    if not facts.global_grad_enabled:
        findings.append(Finding(
            "global-grad-disabled", "warning", "torch.is_grad_enabled()",
            "the global grad mode was disabled when the run started (imported code called "
            "torch.set_grad_enabled(False)); gradprobe enabled grad explicitly for this run",
            "find the torch.set_grad_enabled(False) at import time and scope it with a `with` block",
        ))
    if facts.modified_parameters:
        findings.append(Finding(
            "param-modified-in-forward", "warning", facts.modified_parameters[0],
            f"the forward wrote into {len(facts.modified_parameters)} parameter(s) in place "
            f"({shorten(facts.modified_parameters)}): every call changes the model, and gradprobe cannot undo it "
            f"(it does not copy parameters, to stay cheap)",
            "update such state under torch.no_grad() in a training step or in a buffer, not in forward",
        ))
    if facts.missing_keys:
        findings.append(Finding(
            "weights-missing-keys", "warning", facts.missing_keys[0],
            f"{len(facts.missing_keys)} model key(s) not in the weights file: {shorten(facts.missing_keys)}",
            "those tensors keep their initial values; check the checkpoint matches the model",
        ))
    if facts.unexpected_keys:
        findings.append(Finding(
            "weights-unexpected-keys", "warning", facts.unexpected_keys[0],
            f"{len(facts.unexpected_keys)} key(s) in the weights file the model lacks: "
            f"{shorten(facts.unexpected_keys)}",
            "a renamed module or a prefix such as 'module.' from DataParallel",
        ))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


def _gradient_findings(facts: RunFacts) -> list[Finding]:
    findings: list[Finding] = []
    if not facts.backward:
        if not facts.backward_skipped_reason or facts.grad_mode != "grad":
            return []
        trainable = [p for p in facts.parameters if p.requires_grad]
        graph_cut = facts.outputs and any(o.dtype.startswith(("float", "bfloat", "complex")) for o in facts.outputs) \
            and not any(o.requires_grad for o in facts.outputs)
        if graph_cut and facts.parameters and not trainable:
            return [Finding(
                "no-trainable-params", "warning", "(model)",
                f"no parameter requires grad: all {len(facts.parameters)} are frozen, so nothing in this model "
                f"will train and no backward is possible",
                "unfreeze what should train, e.g. model.head.requires_grad_(True), and give those parameters "
                "to the optimizer",
            )]
        if not (graph_cut and trainable):
            return [Finding("no-backward", "info", "", f"no backward: {facts.backward_skipped_reason}")]
        missing, verb = trainable, "can receive no gradient (no output requires grad, so no backward is possible)"
    else:
        missing = [p for p in facts.parameters if p.requires_grad and p.grad is GradState.ABSENT]
        verb = "received no gradient"
    for mod, params in _cut_off_roots(facts, missing):
        label = f"module '{mod.name}'" if mod.name else "the model"
        cause = _cause(facts, mod)
        findings.append(Finding(
            "grad-none", "error", mod.name or "(model)",
            f"{len(params)} parameter(s) of {label} require grad but {verb}: {cause}",
            _cut_off_hint(cause, mod.name),
        ))
    for p in facts.parameters:
        if p.requires_grad and p.grad is GradState.ZERO:
            findings.append(Finding(
                "grad-zero", "warning", p.name,
                f"parameter '{p.name}' received a gradient that is exactly zero",
                "a dead ReLU, a zero mask, or a loss that does not depend on it",
            ))
    return findings


def _module_findings(facts: RunFacts) -> list[Finding]:
    findings: list[Finding] = []
    for mod in facts.modules:
        if mod.requires_grad_attr is not None:
            inside = [p for p in facts.parameters if _in_subtree(p.module, mod.name)]
            still = sum(p.requires_grad for p in inside)
            who = f"module '{mod.name}'" if mod.name else "the model"
            findings.append(Finding(
                "requires-grad-attr", "error", mod.name or "(model)",
                f"{who} has a plain attribute requires_grad={mod.requires_grad_attr}, "
                f"which freezes nothing: {still} of its {len(inside)} parameter(s) still require grad",
                f"call {py_path(mod.name)}.requires_grad_({mod.requires_grad_attr})",
            ))
    findings += _frozen_drift_findings(facts)
    if facts.grad_mode != "grad" and facts.mode == "train":
        active = [m for m in facts.modules if m.training_dependent and m.training and m.calls > 0]
        if active:
            findings.append(Finding(
                "train-mode-no-grad", "warning", active[0].name,
                f"{len(active)} Dropout/BatchNorm module(s) ran in train mode under {facts.grad_mode} "
                f"(e.g. '{active[0].name}', {active[0].type}): an evaluation loop without model.eval() "
                f"gets random dropout and updates BatchNorm statistics",
                "call model.eval() before validation and model.train() after it",
            ))
    return findings


def _ancestors(module: str) -> list[str]:
    """``a.b.c`` → ``["", "a", "a.b", "a.b.c"]`` (outermost first)."""
    parts = module.split(".") if module else []
    return [".".join(parts[:n]) for n in range(len(parts) + 1)]


def _frozen_drift_findings(facts: RunFacts) -> list[Finding]:
    """One finding per outermost frozen module whose buffers (BatchNorm statistics) the forward changed."""
    drifted = [b for b in facts.buffers if b.changed]
    if not drifted:
        return []
    # per module: does its subtree hold parameters, and does any of them train? One pass, O(params x depth).
    holds: set[str] = set()
    trains: set[str] = set()
    for p in facts.parameters:
        for prefix in _ancestors(p.module):
            holds.add(prefix)
            if p.requires_grad:
                trains.add(prefix)
    known = {m.name for m in facts.modules}
    groups: dict[str, list[str]] = {}
    owners: dict[str, list[str]] = {}
    for b in drifted:
        root = next((m for m in _ancestors(b.module) if m in known and m in holds and m not in trains), None)
        if root is None:
            continue
        groups.setdefault(root, []).append(b.name)
        if b.module not in owners.setdefault(root, []):
            owners[root].append(b.module)
    findings = []
    for root, buffers in groups.items():
        label = f"frozen module '{root}'" if root else "the frozen model"
        mods = owners[root]
        target = py_path(root)
        findings.append(Finding(
            "frozen-bn-drift", "warning", root or "(model)",
            f"{len(buffers)} buffer(s) of {len(mods)} module(s) inside {label} changed in the forward "
            f"({shorten(mods, 3)}): running statistics drift although the parameters are frozen",
            f"call {target}.eval() after every model.train() (e.g. override train()), or use a frozen BatchNorm",
        ))
    return findings


def _output_findings(facts: RunFacts) -> list[Finding]:
    findings: list[Finding] = []
    inference = [o for o in facts.outputs if o.is_inference]
    if inference:
        if facts.grad_mode == "inference_mode":
            findings.append(Finding(
                "inference-output", "info", inference[0].path,
                f"{len(inference)} output(s) are inference tensors: they can never join a graph later "
                f"(fine for serving, an error if reused for training)",
            ))
        else:
            findings.append(Finding(
                "inference-output", "error", inference[0].path,
                f"output '{inference[0].path}' is an inference tensor although the forward ran with "
                f"{facts.grad_mode}: torch.inference_mode() inside forward (or a cached inference tensor) "
                f"leaks into training",
                "use torch.no_grad() there, or .clone() the tensor outside inference_mode",
            ))
    for path in facts.nonfinite_outputs:
        findings.append(Finding(
            "nonfinite-output", "error", path, f"output '{path}' contains NaN or Inf",
            "check inputs, initialisation, and ops such as log/sqrt/division on zero",
        ))
    return findings
