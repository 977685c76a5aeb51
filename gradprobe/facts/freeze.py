"""Plain dataclasses for ``freeze-check``: what the torch side observed, and the verdict.

No torch here: the rules and renderers work on these, and tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradprobe.facts.run import RunFacts

CHECKS = ("conflict", "flag", "gradient", "optimizer", "step", "buffer", "unlisted")
EXPECTED = ("frozen", "trainable", "unlisted")


@dataclass(frozen=True)
class FreezeIssue:
    """One violation or warning: which check, on what, expected versus found, and the likely cause."""

    check: str  # one of CHECKS
    subject: str  # a parameter, buffer or module name
    expected: str
    found: str
    message: str
    groups: tuple[str, ...] = ()  # spec groups it belongs to ("frozen backbone"), for JUnit test cases


@dataclass(frozen=True)
class FreezeParam:
    """One distinct parameter as the freeze spec sees it (a row of ``parameters[]``)."""

    name: str
    aliases: tuple[str, ...]
    expected: str  # frozen | trainable | unlisted
    requires_grad: bool
    grad: str | None  # none | zero | nonzero | present | None (no backward)
    groups: tuple[str, ...] = ()  # "frozen backbone", "trainable head", "baseline", "unlisted"
    conflict: bool = False  # matched by a frozen and a trainable pattern
    optimizer_group: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class OptimizerParam:
    """How one model parameter fared in the optimizer checks (canonical name)."""

    name: str
    groups: tuple[int, ...]  # param-group indices holding it (empty: not in the optimizer)
    had_grad: bool  # a gradient was set for the real step
    moved: bool | None  # changed by the real step (None: not measured, e.g. on meta)
    delta: float | None  # max |change| in the real step
    trap_moved: bool | None  # changed by zero_grad(set_to_none=False) + a second step
    trap_delta: float | None
    state: tuple[str, ...] = ()  # optimizer state entries holding nonzero values before the second step


@dataclass(frozen=True)
class OptimizerGroup:
    """One param group: index, size and its scalar settings (lr, momentum, weight_decay, betas ...)."""

    index: int
    size: int
    settings: tuple[tuple[str, str], ...]

    def setting(self, key: str) -> str | None:
        return dict(self.settings).get(key)


@dataclass(frozen=True)
class OptimizerFacts:
    """The optimizer a ``--optimizer`` factory built and what its steps did."""

    type: str
    spec: str
    groups: tuple[OptimizerGroup, ...]
    params: tuple[OptimizerParam, ...]
    foreign: int = 0  # tensors in param groups that are not parameters of the model
    steps_skipped: str | None = None  # why the steps did not run (meta device)

    def param(self, name: str) -> OptimizerParam | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True)
class FreezeFacts:
    """Everything the torch side of freeze-check observed."""

    run: RunFacts  # parameters carry requires_grad as handed over (before forward), not as forward left it
    optimizer: OptimizerFacts | None = None
    # requires_grad after forward where forward changed it (canonical name): a forward that calls
    # requires_grad_() must not hide the flags the optimizer is built from
    flags_after: dict[str, bool] = field(default_factory=dict)
    # every name of every buffer (a shared module has several): a frozen pattern may use any of them
    buffer_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class FreezeReport:
    """The result of ``freeze-check``: ``passed`` is True when there is no violation (warnings do not fail)."""

    target: str
    frozen: tuple[str, ...]
    trainable: tuple[str, ...]
    unlisted: str
    parameters: tuple[FreezeParam, ...]
    violations: tuple[FreezeIssue, ...]
    warnings: tuple[FreezeIssue, ...]
    facts: FreezeFacts
    allow_buffer_updates: bool = False
    baseline: str | None = None
    config: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    ddp_unused: tuple[str, ...] = ()  # require grad, receive none: DDP needs find_unused_parameters=True

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def optimizer(self) -> str | None:
        opt = self.facts.optimizer
        return f"{opt.spec} ({opt.type})" if opt is not None else None

    def summary(self) -> str:
        """The one-line verdict."""
        counts = {e: sum(p.expected == e and not p.conflict for p in self.parameters) for e in EXPECTED}
        conflicts = sum(p.conflict for p in self.parameters)
        checked = (f"{len(self.parameters)} parameters ({counts['frozen']} frozen, {counts['trainable']} trainable, "
                   f"{counts['unlisted']} unlisted" + (f", {conflicts} conflicting)" if conflicts else ")"))
        tail = f"{len(self.violations)} violation(s), {len(self.warnings)} warning(s)"
        if self.passed:
            return f"PASS: the freeze holds for {self.target}: {checked}; {tail}"
        return f"FAIL: the freeze does not hold for {self.target}: {checked}; {tail}"

    def explain(self) -> str:
        """The verdict and every violation, one per line: the text of ``assert_frozen``'s AssertionError."""
        lines = [self.summary()]
        lines += [f"  [{v.check}] {v.subject}: expected {v.expected}, found {v.found} -- {v.message}"
                  for v in self.violations]
        return "\n".join(lines)
