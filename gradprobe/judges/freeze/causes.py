"""Likely causes of a missing gradient, read off the module facts of the train-mode run.

No torch here.  Each cause is stated as far as the facts show it: a module that never ran, a module
whose output has no grad_fn, a parameter its own module did not use.
"""

from __future__ import annotations

from gradprobe.facts.run import GradState, ModuleFact, ParamFact, RunFacts
from gradprobe.judges.freeze.text import ancestors, in_subtree, label, short
from gradprobe.judges.grad_causes import CauseFinder
from gradprobe.judges.gradients import zero_partners

_FLOAT_PREFIXES = ("float", "bfloat", "complex", "half", "double")
# causes ``inspect`` reads off measured facts (the forward's recorded cuts, flags flipped by forward, the graph):
# where the run recorded one for a parameter, it names the cut between that parameter and the loss; the module-level
# guess after it (any graphless module, upstream or not) is only for facts without such a record
_MEASURED = frozenset({"flag-changed", "scripted", "backward-none", "cut", "cut-own", "reentrant"})


def effective_grad(run: RunFacts, p: ParamFact) -> GradState | None:
    """The gradient state after backward; a backward that could not run leaves every ``.grad`` None."""
    if run.backward:
        return p.grad
    return GradState.ABSENT


class Causes:
    """Where the parameters that require grad are cut off from the loss."""

    def __init__(self, run: RunFacts) -> None:
        self.run = run
        self.modules = {m.name: m for m in run.modules}
        self.outputs: dict[str, list[bool]] = {}  # module -> has grad_fn, per floating-point output
        for t in (*run.tensors, *run.outputs):
            if t.dtype.startswith(_FLOAT_PREFIXES):
                self.outputs.setdefault(t.module, []).append(t.grad_fn is not None)
        self.requiring = [p for p in run.parameters if p.requires_grad]
        self._finder: CauseFinder | None = None

    def called(self, module: str) -> bool:
        mod = self.modules.get(module)
        return module == "" or (mod is not None and mod.calls > 0)

    def graphless(self, module: str) -> bool:
        """Called, with floating-point outputs none of which has a grad_fn."""
        outs = self.outputs.get(module)
        return bool(outs) and not any(outs) and self.called(module)

    def attr_module(self, module: str) -> ModuleFact | None:
        """The outermost module on the path with a plain ``requires_grad`` attribute."""
        for name in ancestors(module):
            mod = self.modules.get(name)
            if mod is not None and mod.requires_grad_attr is not None:
                return mod
        return None

    def cut_region(self, module: str) -> str | None:
        """The outermost module on the path whose output has no grad_fn although parameters inside need grad."""
        for name in ancestors(module):
            if self.graphless(name) and any(in_subtree(p.module, name) for p in self.requiring):
                return name
        return None

    def cut_regions(self) -> list[str]:
        """Outermost called modules whose output has no grad_fn although parameters inside require grad."""
        found: list[str] = []
        for mod in self.run.modules:
            if any(in_subtree(mod.name, f) for f in found) or mod.name == "":
                continue
            if self.graphless(mod.name) and any(in_subtree(p.module, mod.name) for p in self.requiring):
                found.append(mod.name)
        return found

    def cut_root(self, module: str) -> str:
        """The outermost module on the path all of whose grad-requiring parameters received no gradient."""
        for name in ancestors(module)[1:]:
            inside = [p for p in self.requiring if in_subtree(p.module, name)]
            if inside and all(effective_grad(self.run, p) is GradState.ABSENT for p in inside):
                return name
        return module

    def zero_factors(self, p: ParamFact) -> tuple[list[str], bool]:
        """The all-zero parameters that make ``p``'s gradient exactly zero (LoRA's ``B`` at the first step), and
        whether each of them is known and got a nonzero gradient itself, so that ``p`` trains from the next step."""
        names = zero_partners(self.run, p)
        by_name = {q.name: q for q in self.run.parameters}
        known = [by_name[n] for n in names if n in by_name]
        training = bool(known) and all(q.requires_grad and effective_grad(self.run, q) is GradState.NONZERO
                                       for q in known)
        return names, training

    def never_called(self, module: str) -> str | None:
        """The outermost module on the path that never ran, if any."""
        for name in ancestors(module):
            if not self.called(name):
                return name
        return None

    def unused_by_its_module(self, p: ParamFact) -> bool:
        """Its own module ran and other parameters it owns got gradients: forward did not use this one.

        Parameters of the model itself count as such whenever any gradient reached the model.
        """
        others = [q for q in self.requiring if q.name != p.name and (p.module == "" or q.module == p.module)]
        return any(effective_grad(self.run, q) not in (GradState.ABSENT, None) for q in others)

    def _measured(self, p: ParamFact) -> str | None:
        """The cause ``inspect`` reads off the run's recorded cuts (or flags, the graph), when it has one."""
        if self._finder is None:
            self._finder = CauseFinder(self.run)
        cause = self._finder.of(p)
        return cause.text.replace("{it}", "it") if cause.kind in _MEASURED else None

    def no_gradient(self, p: ParamFact) -> str:
        """Why a parameter that requires grad received none: where it is cut off from the loss."""
        if not self.run.backward:
            measured = self._measured(p)
            if measured is not None:  # where the graph was cut, as inspect names it
                return f"no output of the model requires grad, so backward could not run: {measured}"
            return (f"no output of the model requires grad ({self.run.backward_skipped_reason}), so backward "
                    f"could not run")
        idle = self.never_called(p.module)
        if idle is not None:
            return f"module '{idle}' is never called in forward"
        region = self.cut_region(p.module)
        if region is not None:
            return (f"the output of {label(region)} has no grad_fn: forward runs it under torch.no_grad() "
                    f"(or detaches inside it)")
        if self.unused_by_its_module(p):
            owner = "the model itself" if p.module == "" else f"module '{p.module}'"
            return (f"{owner} runs and other parameters it owns receive gradients, so forward does not use this "
                    f"one on the way to the loss (never read, read only through .data, .detach() or under "
                    f"torch.no_grad(), or a custom autograd.Function whose backward returns None for it)")
        measured = self._measured(p)
        if measured is not None:
            return measured
        root = self.cut_root(p.module)
        regions = [r for r in self.cut_regions() if not in_subtree(p.module, r)]
        if regions:
            return (f"module {label(root)} builds a graph but the loss does not reach it: the graph is cut "
                    f"downstream at {short(regions)} (output without grad_fn: torch.no_grad() or detach() "
                    f"inside forward cuts the gradient to everything upstream)")
        return (f"module {label(root)} builds a graph but the loss does not reach it: its output is detached "
                f"(.detach(), .data) or passes through a non-differentiable op before the loss")
