"""Judges: plain-language diagnoses of one run's facts.

Pure functions of ``RunFacts`` -- no torch -- so each diagnosis is tested
with hand-made facts as well as real runs.  Codes are a public contract.
"""

from __future__ import annotations

from gradprobe.facts.run import BufferFact, Finding, InspectReport, RunFacts
from gradprobe.judges.anatomy import CODES as ANATOMY_CODES
from gradprobe.judges.anatomy import anatomy_findings
from gradprobe.judges.checkpoint import ADVICE_TOP, checkpoint_advice
from gradprobe.judges.experts import CODE as EXPERTS_CODE
from gradprobe.judges.experts import DESCRIPTION as EXPERTS_DESCRIPTION
from gradprobe.judges.experts import expert_findings
from gradprobe.judges.grad_health import grad_health_findings
from gradprobe.judges.gradients import gradient_findings
from gradprobe.units import py_path, shorten

CODES = {
    "grad-none": "a parameter requires grad but received no gradient",
    "grad-zero": "a parameter's gradient is exactly zero",
    EXPERTS_CODE: EXPERTS_DESCRIPTION,
    "requires-grad-attr": "module.requires_grad set as a plain attribute (freezes nothing)",
    "frozen-bn-drift": "a frozen module's BatchNorm statistics changed in the forward",
    "frozen-buffer-drift": "a frozen module's other buffers (not BatchNorm statistics) changed in the forward",
    "flags-changed-in-forward": "forward flipped requires_grad or a module's training mode",
    "train-mode-no-grad": "Dropout/BatchNorm in train mode while grad is disabled",
    "inference-output": "the model's outputs are inference tensors",
    "global-grad-disabled": "the global grad mode was found disabled",
    "nonfinite-output": "an output holds NaN or Inf",
    "param-modified-in-forward": "the forward wrote into a parameter in place",
    "param-modified-in-backward": "a parameter was written during backward (an optimizer step in a hook)",
    "no-backward": "no backward pass was possible",
    "no-trainable-params": "no parameter requires grad: nothing will train",
    "weights-missing-keys": "the weights file lacks some of the model's keys",
    "weights-unexpected-keys": "the weights file has keys the model lacks",
    **ANATOMY_CODES,
}


def _in_subtree(name: str, module: str) -> bool:
    return module == "" or name == module or name.startswith(module + ".")


def judge_inspect(facts: RunFacts) -> InspectReport:
    """The whole ``inspect`` verdict on one run: findings and activation-checkpointing advice."""
    candidates, plan = checkpoint_advice(facts, top=ADVICE_TOP)
    return InspectReport(facts, tuple(judge_run(facts)), tuple(candidates), plan)


def judge_run(facts: RunFacts) -> list[Finding]:
    """Every diagnosis the facts of one run support, most severe first."""
    findings: list[Finding] = []
    findings += gradient_findings(facts)
    findings += expert_findings(facts)  # fused mixture-of-experts parameters (gradprobe.judges.experts)
    findings += _module_findings(facts)
    findings += _output_findings(facts)
    findings += _flag_findings(facts)
    findings += grad_health_findings(facts)  # --grads only (gradprobe.judges.grad_health)
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
            f"({shorten(facts.modified_parameters)}): every plain call changes the model (gradprobe put the "
            f"values back after its own run)",
            "update such state under torch.no_grad() in a training step or in a buffer, not in forward",
        ))
    if facts.modified_in_backward:
        findings.append(Finding(
            "param-modified-in-backward", "info", facts.modified_in_backward[0],
            f"backward wrote into {len(facts.modified_in_backward)} parameter(s) "
            f"({shorten(facts.modified_in_backward)}): a gradient hook updates them during backward (an optimizer "
            f"step in a register_post_accumulate_grad_hook); gradprobe put the values back after its run, and "
            f"their .grad is as the hook left it",
            "expected with the optimizer-step-in-backward recipe; otherwise look for hooks that write parameters",
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
    findings += anatomy_findings(facts)  # only with the memory event log (issue 14)
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


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


_BN_STATS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def is_norm_statistic(b: BufferFact, types: dict[str, str]) -> bool:
    """A BatchNorm/InstanceNorm running statistic (by its owner's type and its name), not any buffer."""
    kind = types.get(b.module, "")
    return ("BatchNorm" in kind or "InstanceNorm" in kind) and b.name.rpartition(".")[2] in _BN_STATS


def _frozen_drift_findings(facts: RunFacts) -> list[Finding]:
    """One finding per outermost frozen module whose buffers the forward changed: BatchNorm statistics
    (``frozen-bn-drift``) apart from other buffers (``frozen-buffer-drift``: spectral-norm vectors, ...)."""
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
    types = {m.name: m.type for m in facts.modules}
    groups: dict[tuple[bool, str], list[BufferFact]] = {}
    for b in drifted:
        root = next((m for m in _ancestors(b.module) if m in types and m in holds and m not in trains), None)
        if root is not None:
            groups.setdefault((is_norm_statistic(b, types), root), []).append(b)
    findings = []
    for (statistic, root), buffers in groups.items():
        label = f"frozen module '{root}'" if root else "the frozen model"
        mods = list(dict.fromkeys(b.module for b in buffers))
        head = f"{len(buffers)} buffer(s) of {len(mods)} module(s) inside {label} changed in the forward"
        if statistic:
            findings.append(Finding(
                "frozen-bn-drift", "warning", root or "(model)",
                f"{head} ({shorten(mods, 3)}): running statistics drift although the parameters are frozen",
                f"call {py_path(root)}.eval() after every model.train() (e.g. override train()), or use a frozen "
                f"BatchNorm",
            ))
        else:
            findings.append(Finding(
                "frozen-buffer-drift", "warning", root or "(model)",
                f"{head} ({shorten([b.name for b in buffers], 3)}): these are not BatchNorm statistics "
                f"({', '.join(sorted({types.get(m, '?') for m in mods}))}); the forward updates them in train mode "
                f"although the parameters are frozen, so the frozen module's output still changes from step to step",
                f"if they must stay fixed while frozen, call {py_path(root)}.eval() after every model.train(); "
                f"if updating them is intended, nothing to fix",
            ))
    return findings


def _mode(training: bool) -> str:
    return "train" if training else "eval"


def _flag_findings(facts: RunFacts) -> list[Finding]:
    """Flags the forward flipped: the facts show them as handed over, these findings say what forward did."""
    findings = []
    if facts.requires_grad_changed:
        given = {p.name: p.requires_grad for p in facts.parameters}
        names = facts.requires_grad_changed
        states = sorted({given.get(n, True) for n in names})
        was = " / ".join(f"requires_grad={s}" for s in states)
        findings.append(Finding(
            "flags-changed-in-forward", "warning", names[0],
            f"forward flipped requires_grad on {len(names)} parameter(s) ({shorten(names)}): shown as handed over "
            f"({was}); after forward they are the opposite, so an optimizer built before the first forward and "
            f"the next forward disagree about what trains",
            "set requires_grad once, before building the optimizer, not inside forward",
        ))
    if facts.training_changed:
        modes = {m.name: m.training for m in facts.modules}
        names = facts.training_changed
        findings.append(Finding(
            "flags-changed-in-forward", "warning", names[0] or "(model)",
            f"forward switched the training mode of {len(names)} module(s) ({shorten(n or '(model)' for n in names)}) "
            f"from {_mode(modes.get(names[0], True))} to {_mode(not modes.get(names[0], True))} mode: shown in the "
            f"mode the run set; "
            f"model.train()/model.eval() outside does not decide their mode",
            "do not call train()/eval() inside forward; override train() if a submodule must stay in eval mode",
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
