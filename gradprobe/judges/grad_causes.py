"""Why a parameter that requires grad got no gradient, as far as the facts tell -- or "cannot be told".

Pure functions of ``RunFacts``.  Each parameter gets one :class:`Cause`; parameters sharing a cause are
grouped into one ``grad-none`` finding (see ``gradprobe.judges.inspect``).  The order of the checks is
the order of certainty: a flag forward flipped, code gradprobe cannot see (TorchScript), a graph the loss
reaches but whose backward returned None, a recorded cut of the graph (and where, and how), a module
that never ran, a parameter forward never reads.  Without the cut tracker's facts (hand-made facts,
older runs) the module-level facts give a hedged cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gradprobe.facts.run import GraphCut, ModuleFact, ParamFact, RunFacts
from gradprobe.units import shorten

CONTAINERS = frozenset({"ModuleList", "ModuleDict", "ParameterList", "ParameterDict"})
SCRIPTED = frozenset({"RecursiveScriptModule", "ScriptModule", "TopLevelTracedModule", "TracedModule"})
_STRONG = ("no_grad", "inference_mode", "reentrant_checkpoint", "detach", "data")  # deliberate cuts first
DDP = "DDP fails on unused parameters unless find_unused_parameters=True"


@dataclass(frozen=True)
class Cause:
    """One explanation.  ``kind`` and ``where`` group parameters; ``hint`` may hold ``{ref}``, the Python
    path of the finding's subject (``model.backbone[1]``)."""

    kind: str
    where: str
    text: str
    hint: str


def where_label(module: str) -> str:
    return f"'{module}'" if module else "the model's own forward"


def module_label(module: str) -> str:
    return f"'{module}'" if module else "the model"


def _ancestors(module: str) -> list[str]:
    """``a.b.c`` → ``["", "a", "a.b", "a.b.c"]``."""
    parts = module.split(".") if module else []
    return [".".join(parts[:n]) for n in range(len(parts) + 1)]


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _inside(name: str, module: str) -> bool:
    return module == "" or name == module or name.startswith(module + ".")


class CauseFinder:
    """Indexes of one run's facts, built once; :meth:`of` explains one parameter."""

    def __init__(self, facts: RunFacts) -> None:
        self.facts = facts
        self.modules = {m.name: m for m in facts.modules}
        self.ran: set[str] = set()  # modules that ran, and every ancestor of one (a descendant ran)
        for m in facts.modules:
            if m.calls:
                self.ran.update(_ancestors(m.name))
        self.cuts: dict[str, list[GraphCut]] = {}
        for c in facts.graph_cuts:
            for name in c.parameters:
                self.cuts.setdefault(name, []).append(c)
        self.changed = set(facts.requires_grad_changed)
        self.reached = facts.graph.reached_params if facts.graph is not None else frozenset()

    # ---- one parameter
    def of(self, p: ParamFact) -> Cause:
        if p.name in self.changed:
            return Cause("flag-changed", "", "forward called requires_grad_(False) on {it}: requires_grad was True "
                         "when the model was handed over (as shown), and autograd skipped {it}",
                         "set requires_grad once, before building the optimizer, not inside forward")
        scripted = self._scripted(p.module)
        if scripted is not None and scripted.name in self.ran:
            return Cause("scripted", scripted.name,
                         f"{module_label(scripted.name)} is TorchScript code ({scripted.type}): gradprobe cannot see "
                         f"the calls and ops inside it, so the cause cannot be told",
                         "inspect the Python module (before torch.jit.script/trace) to see why the loss does not "
                         "reach {it}")
        if p.name in self.reached:
            return Cause("backward-none", "", "the loss reaches {it} through autograd, but the gradient came back as "
                         "None: a custom torch.autograd.Function's backward returned None for {it}, or a hook removed "
                         ".grad (e.g. an optimizer step in register_post_accumulate_grad_hook)",
                         "return a gradient for every input that requires grad from the Function's backward, or "
                         "pass the parameter outside the Function if it should not train")
        cuts = self.cuts.get(p.name)
        if cuts:
            return self._cut(p, cuts)
        read = self.facts.parameters_read
        idle = self._never_ran(p.module)
        if read is None:
            return self._hedged(p, idle)
        if p.name not in read:
            if idle is not None:
                return self._not_called(idle)
            return Cause("unused", p.module,
                         f"{module_label(p.module)} ran, but its forward never reads {{it}}",
                         "use it in forward or delete it; if it must stay, freeze it with {ref}.requires_grad_(False) "
                         f"({DDP})")
        if any(not c.complete for c in self.facts.graph_cuts):
            big = [c for c in self.facts.graph_cuts if not c.complete]
            return Cause("cut-unsure", "", f"forward reads {{it}}, and the graph is probably cut at "
                         f"{_cut_places(big)} (the graph behind that cut was too large to walk to the end)",
                         "see the cut named above")
        return Cause("unknown", "", "forward reads {it}, but the loss does not depend on {it} and gradprobe saw no cut "
                     "of the graph: the cause cannot be told (an op gradprobe does not see, such as a C++ extension, "
                     "or a value read through .item()/.tolist() outside torch)",
                     "follow the parameter from its use in forward to the loss")

    def _scripted(self, module: str) -> ModuleFact | None:
        for name in _ancestors(module):
            m = self.modules.get(name)
            if m is not None and m.type in SCRIPTED:
                return m
        return None

    def _never_ran(self, module: str) -> str | None:
        """The outermost module on the path none of whose modules ran (a container counts only through its
        children: it has no forward of its own), or None when the owner or a module inside it ran."""
        for name in _ancestors(module):
            if name and name not in self.ran and name in self.modules:
                return name
        return None

    def _not_called(self, idle: str) -> Cause:
        mod = self.modules[idle]
        if mod.type in CONTAINERS:
            inner = [m.name for m in self.facts.modules if _parent(m.name) == idle]
            return Cause("never-called", idle,
                         f"no module in {module_label(idle)} ran in this forward ({mod.type} is a container without "
                         f"a forward of its own; its modules {_names(inner)} were not called)",
                         "call its modules in forward or delete them; if forward calls them only for some inputs, run "
                         "with inputs that reach them; to keep them unused, freeze them with "
                         "{ref}.requires_grad_(False) " f"({DDP})")
        parent = _parent(idle)
        holder = self.modules.get(parent)
        peers = [m for m in self.facts.modules if _parent(m.name) == parent and m.type == mod.type and m.name]
        ran = [m.name for m in peers if m.name in self.ran]
        if ran and holder is not None and holder.type in CONTAINERS:
            return Cause("not-routed", parent,
                         f"not called in this forward, while {len(ran)} of the {len(peers)} {mod.type} modules in "
                         f"{module_label(parent)} ran ({_names(ran)}): if forward picks them by the data (routing, "
                         f"mixture-of-experts, a conditional branch), these inputs did not reach it",
                         "if forward picks modules by the data, nothing to delete: run gradprobe with inputs that "
                         "reach it (--inputs mod:fn), and DDP needs find_unused_parameters=True; if it can never run, "
                         "delete it or freeze it with {ref}.requires_grad_(False)")
        return Cause("never-called", idle, f"{module_label(idle)} was never called in forward (with these inputs)",
                     "call it in forward or delete it; if forward calls it only for some inputs, run with inputs "
                     "that reach it; if it is meant to stay unused, freeze it with {ref}.requires_grad_(False) "
                     f"({DDP})")

    def _cut(self, p: ParamFact, cuts: list[GraphCut]) -> Cause:
        strong = [c for c in cuts if c.how in _STRONG]
        chosen = strong or cuts
        places = sorted({(c.module, c.how, c.op) for c in chosen},
                        key=lambda k: (_STRONG.index(k[1]) if k[1] in _STRONG else len(_STRONG), k))
        if len(places) == 1:
            module, how, op = places[0]
            own = (module != "" and _inside(module, p.module)) or module == p.module
            return _one_cut(module, how, op, own)
        text = "cut off from the loss by " + _cut_places([GraphCut(m, 0, h, o, ()) for m, h, o in places])
        return Cause("cut", "|".join(f"{m}:{h}:{o}" for m, h, o in places), text,
                     "remove the cuts between it and the loss if it should train; to freeze it, use "
                     "{ref}.requires_grad_(False) instead")

    def _hedged(self, p: ParamFact, idle: str | None) -> Cause:
        """Module-level facts only: the owner's calls and whether its outputs had a grad_fn."""
        if idle is not None:
            return self._not_called(idle)
        mod = self.modules.get(p.module)
        label = module_label(p.module)
        if mod is not None and mod.output_grad_fn is False and self.facts.grad_mode == "grad":
            return Cause("no-grad-fn", "", f"the output of {label} has no grad_fn: forward runs it under "
                         f"torch.no_grad() (or detaches inside it)", _NO_GRAD_OWN)
        if mod is not None and mod.output_grad_fn:
            return Cause("detached", "", f"{label} built a graph, but the loss does not reach it: its output is "
                         f"detached (.detach(), .data) or goes through a non-differentiable op before the loss",
                         _DETACH_HINT)
        return Cause("unknown", "", f"the loss does not depend on the parameters of {label}", _DETACH_HINT)


_NO_GRAD_OWN = ("to freeze it, use {ref}.requires_grad_(False) and keep its parameters out of the optimizer "
                "instead of no_grad in forward; to train it, remove the no_grad")
_DETACH_HINT = "to freeze it, use {ref}.requires_grad_(False); to train it, remove the .detach()/.data between it " \
               "and the loss"
_HOW = {
    "no_grad": "an op under torch.no_grad()",
    "inference_mode": "an op under torch.inference_mode()",
    "reentrant_checkpoint": "a reentrant torch.utils.checkpoint whose inputs do not require grad",
    "detach": ".detach()",
    "data": ".data",
}


def _how(how: str, op: str) -> str:
    return _HOW.get(how, f"'{op}', an op without a gradient")


def _cut_places(cuts: Iterable[GraphCut]) -> str:
    parts = [f"{_how(c.how, c.op)} in {where_label(c.module)}" for c in cuts]
    return _names(parts, quote=False)


def _one_cut(module: str, how: str, op: str, own: bool) -> Cause:
    where = where_label(module)
    key = f"{module}:{how}:{op}"
    if how == "reentrant_checkpoint":
        return Cause("reentrant", "", "used inside a reentrant activation checkpoint (torch.utils.checkpoint with "
                     "use_reentrant=True) none of whose inputs requires grad: the checkpoint runs its function "
                     "under no_grad and gives the parameters inside no gradient",
                     "pass use_reentrant=False to torch.utils.checkpoint (or make one of its tensor inputs require "
                     "grad)")
    if how in ("no_grad", "inference_mode"):
        ctx = "torch.no_grad()" if how == "no_grad" else "torch.inference_mode()"
        if own:
            return Cause("cut-own", how, f"used under {ctx} in forward: the module output has no grad_fn",
                         _NO_GRAD_OWN if how == "no_grad" else _NO_GRAD_OWN.replace("no_grad", "inference_mode"))
        return Cause("cut", key, f"the graph is cut downstream, in {where}: {_how(how, op)} there gives an output "
                     f"with no grad_fn, so nothing upstream of it gets a gradient",
                     f"to train it, remove the {ctx} in {where} (to freeze {where}, call requires_grad_(False) on "
                     f"its parameters instead: gradients then still flow through it)")
    if how in ("detach", "data"):
        text = f"{'used only through' if own else 'cut off from the loss by'} {_how(how, op)} in {where}"
        return Cause("cut", key, text, f"to train it, remove the {_how(how, op)} in {where}; to freeze it, use "
                     "{ref}.requires_grad_(False) instead")
    return Cause("cut", key, f"the path to the loss is cut by '{op}' in {where}, an op that has no gradient",
                 f"if it should learn through '{op}', use a differentiable relaxation "
                 "(soft weights, a straight-through estimator); if it should not train, freeze it with "
                 "{ref}.requires_grad_(False)")


def _names(items: Iterable[str], limit: int = 3, *, quote: bool = True) -> str:
    return shorten(items, limit, quote=quote)
