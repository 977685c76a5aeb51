"""Gradient findings: ``grad-none`` for every trainable parameter left without a gradient, ``grad-zero``,
and why no backward ran (``no-backward``, ``no-trainable-params``).

Every parameter that requires grad and whose ``.grad`` is None after the backward is named in exactly one
``grad-none`` finding.  Parameters sharing a cause (:mod:`gradprobe.judges.grad_causes`) form one finding;
inside it they are named by the outermost modules all of whose trainable parameters lack a gradient, and
by their own names where only some of a module's parameters do.
"""

from __future__ import annotations

from gradprobe.facts.run import Finding, GradState, ParamFact, RunFacts
from gradprobe.judges.grad_causes import Cause, CauseFinder, module_label
from gradprobe.units import common_module, py_path, shorten


def gradient_findings(facts: RunFacts) -> list[Finding]:
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
        # a parameter backward wrote into (an optimizer step in a post-accumulate-grad hook) received its
        # gradient: the hook consumed it and cleared .grad (param-modified-in-backward says so)
        stepped = set(facts.modified_in_backward)
        missing = [p for p in facts.parameters if p.requires_grad and p.grad is GradState.ABSENT
                   and p.name not in stepped]
        verb = "received no gradient"
    return _grad_none(facts, missing, verb) + _grad_zero(facts)


def _grad_none(facts: RunFacts, missing: list[ParamFact], verb: str) -> list[Finding]:
    if not missing:
        return []
    finder = CauseFinder(facts)
    groups: dict[tuple[str, str], tuple[Cause, list[ParamFact]]] = {}
    for p in missing:
        cause = finder.of(p)
        groups.setdefault((cause.kind, cause.where), (cause, []))[1].append(p)
    findings = []
    for cause, params in groups.values():
        subject, what, ref = _named(facts, params, cause)
        single = what.startswith("parameter '")
        findings.append(Finding(
            "grad-none", "error", subject,
            f"{what} {'requires' if single else 'require'} grad but {verb}: "
            + cause.text.replace("{it}", "it" if single else "them"),
            ref_hint(cause.hint, ref).replace("{it}", "it" if single else "them"),
        ))
    return findings


def ref_hint(hint: str, ref: str | None) -> str:
    """Put the Python path of the subject into a hint (``model.backbone[1].requires_grad_(False)``)."""
    if ref is None:
        return hint.replace("{ref}.requires_grad_(False)", "requires_grad_(False) on each of them")
    return hint.replace("{ref}", ref)


def _named(facts: RunFacts, params: list[ParamFact], cause: Cause) -> tuple[str, str, str | None]:
    """(subject, the words naming the parameters, the Python path for the hint or None for several modules)."""
    roots, loose = cut_off_roots(facts, params)
    n = len(params)
    if n == 1 and (loose or roots == [""]):
        p = params[0]
        return p.name, f"parameter '{p.name}'", py_path(p.name)
    if len(roots) == 1 and not loose:
        module = roots[0]
        return module or "(model)", f"{n} parameter(s) of {_module_words(module)}", py_path(module)
    if not roots and len(loose) == 1:
        p = loose[0]
        return p.name, f"parameter '{p.name}'", py_path(p.name)
    names = [f"'{r}'" if r else "the model" for r in roots] + [f"'{p.name}'" for p in loose]
    subject = common_module(roots + [p.module for p in loose])
    if cause.kind == "not-routed":
        subject = cause.where
    owners = {p.module for p in loose}
    if not roots and len(owners) == 1:
        (owner,) = owners
        return (owner or "(model)", f"{n} parameter(s) of {module_label(owner)} ({shorten(names, 4, quote=False)})",
                None)
    return subject or "(model)", f"{n} parameter(s) in {shorten(names, 4, quote=False)}", None


def _module_words(module: str) -> str:
    return f"module '{module}'" if module else "the model"


def _ancestors(module: str) -> list[str]:
    parts = module.split(".") if module else []
    return [".".join(parts[:n]) for n in range(len(parts) + 1)]


def cut_off_roots(facts: RunFacts, missing: list[ParamFact]) -> tuple[list[str], list[ParamFact]]:
    """The outermost modules all of whose trainable parameters are in ``missing``, and the parameters of
    ``missing`` no such module holds.

    Counts per module prefix keep this linear in parameters x depth (a 15,000-module model stays instant).
    A root at the model itself is named by the top-level module holding all of them ('backbone'), not the
    model around a frozen head.
    """
    names = {p.name for p in missing}
    total: dict[str, int] = {}
    lacking: dict[str, int] = {}
    for p in facts.parameters:
        if not p.requires_grad and p.name not in names:
            continue
        for prefix in _ancestors(p.module):
            total[prefix] = total.get(prefix, 0) + 1
            if p.name in names:
                lacking[prefix] = lacking.get(prefix, 0) + 1
    known = {m.name for m in facts.modules}
    roots: list[str] = []
    covered: set[str] = set()
    for mod in facts.modules:  # named_modules order: parents before children
        name = mod.name
        count = lacking.get(name, 0)
        if not count or count != total.get(name, 0):
            continue
        if any(prefix in covered for prefix in _ancestors(name)):
            continue
        covered.add(name)
        while name == "":  # one top-level module holding every one of them: name it
            child = next((c for c in lacking if c and "." not in c and lacking[c] == count and c in known), None)
            if child is None:
                break
            name = child
        roots.append(name)
    loose = [p for p in missing if not any(r == "" or p.module == r or p.module.startswith(r + ".") for r in roots)]
    return roots, loose


def _grad_zero(facts: RunFacts) -> list[Finding]:
    by_name = {p.name: p for p in facts.parameters}
    measured = facts.zero_grad_partners is not None
    findings = []
    expected: list[tuple[ParamFact, list[ParamFact]]] = []  # LoRA's first step: grouped when there are many
    for p in facts.parameters:
        if not (p.requires_grad and p.grad is GradState.ZERO):
            continue
        partners = zero_partners(facts, p)
        known = [by_name[q] for q in partners if q in by_name]
        if partners and known and all(q.requires_grad and q.grad is GradState.NONZERO for q in known):
            expected.append((p, known))
        elif partners:
            findings.append(_zero_factor_finding(p, known or partners, measured=measured))
        else:
            findings.append(Finding(
                "grad-zero", "warning", p.name,
                f"parameter '{p.name}' received a gradient that is exactly zero",
                "a dead ReLU, a zero mask, or a loss that does not depend on it",
            ))
    if len(expected) <= _GROUP_FROM:
        return [_zero_factor_finding(p, known, measured=measured) for p, known in expected] + findings
    return [_zero_factors_grouped(expected, measured=measured), *findings]


_GROUP_FROM = 2  # more zero-factor gradients than this (a LoRA model's every lora_A): one finding for them all


def _zero_factors_grouped(expected: list[tuple[ParamFact, list[ParamFact]]], *, measured: bool) -> Finding:
    """Many zero gradients of the first LoRA step in one finding, each parameter with its zero partner."""
    pairs = [f"'{p.name}' (with '{known[0].name}')" for p, known in expected]
    names = [q.name for _, known in expected for q in known]
    init = "their usual initialisation in LoRA" if all("lora_b" in n.lower() for n in names) \
        else "zero-initialised factors"
    how = "multiplies it on every path from the loss" if measured else "is next to it and shares a dimension"
    subject = common_module([p.module for p, _ in expected]) or "(model)"
    return Finding(
        "grad-zero", "info", subject,
        f"{len(expected)} parameters received a gradient that is exactly zero, each because an all-zero factor "
        f"({init}) {how}: {shorten(pairs, 3)}; every one of those factors got a nonzero gradient, so these "
        f"gradients become nonzero once they have taken their first optimizer step, as expected",
        "nothing to fix for zero-initialised adapters; they get a gradient after the first optimizer step",
    )


def _zero_factor_finding(p: ParamFact, partners: list[ParamFact] | list[str], *, measured: bool) -> Finding:
    """A zero gradient caused by an all-zero factor: expected while that factor trains, a problem if it cannot."""
    facts = [q for q in partners if isinstance(q, ParamFact)]
    names = [q.name if isinstance(q, ParamFact) else q for q in partners]
    words = shorten(names, 2, quote=True)
    verb = "is" if len(names) == 1 else "are"
    init = "its usual initialisation in LoRA" if all("lora_b" in n.lower() for n in names) \
        else "a zero-initialised factor"
    how = "multiplies it on every path from the loss" if measured else "is next to it and shares a dimension"
    head = (f"parameter '{p.name}' received a gradient that is exactly zero: {words} {verb} all zeros ({init}) "
            f"and {how}, so its gradient is exactly zero on the first step")
    training = [q for q in facts if q.requires_grad and q.grad is GradState.NONZERO]
    if facts and len(training) == len(facts):
        return Finding("grad-zero", "info", p.name,
                       f"{head}; {words} got a nonzero gradient, so this gradient becomes nonzero once {words} "
                       f"has taken its first optimizer step, as expected",
                       "nothing to fix for a zero-initialised adapter; it gets a gradient after the first "
                       "optimizer step")
    if facts:
        stuck = [q.name for q in facts if q not in training]
        return Finding("grad-zero", "warning", p.name,
                       f"{head}; {shorten(stuck, 2, quote=True)} got no nonzero gradient itself, so neither "
                       f"will change in training",
                       "initialise one factor of the product with nonzero values, or unfreeze the zero one")
    return Finding("grad-zero", "info", p.name, f"{head}, as expected until that factor has trained a step",
                   "nothing to fix for a zero-initialised adapter; it gets a gradient after the first "
                   "optimizer step")


def zero_partners(facts: RunFacts, p: ParamFact) -> list[str]:
    """The all-zero parameters that make ``p``'s gradient exactly zero.

    Measured in the autograd graph where the run recorded it (``zero_grad_partners``); for facts without that
    measurement (hand-made, older runs), all-zero matrices next to ``p`` sharing a dimension with it.
    """
    if facts.zero_grad_partners is not None:
        return list(dict(facts.zero_grad_partners).get(p.name, ()))
    zero_valued = {q.name: q for q in facts.parameters if q.name in set(facts.zero_valued_parameters)}
    return _zero_partners(p, zero_valued)


def _zero_partners(p: ParamFact, zero_valued: dict[str, ParamFact]) -> list[str]:
    """All-zero matrices next to ``p`` (same parent module) that share a dimension with it: a factor pair."""
    if len(p.shape) < 2:
        return []
    scope = p.module.rpartition(".")[0] if p.module else ""
    return [q.name for q in zero_valued.values()
            if q.name != p.name and len(q.shape) >= 2 and set(q.shape) & set(p.shape)
            and (scope == "" or q.module == scope or q.module.startswith(scope + "."))]
