"""Plain dataclasses for ``freeze-check``: what the torch side observed, and the issues the rules found.

No torch here, and no text building: the rules (``gradprobe.judges.freeze``) write the messages and the
verdict, the renderers lay them out.  Tests build these by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradprobe.facts.run import GradState, RunFacts

CHECKS = ("conflict", "flag", "gradient", "optimizer", "step", "buffer", "unlisted")
EXPECTED = ("frozen", "trainable", "unlisted")
# what moved a frozen parameter in the optimizer steps (FreezeIssue.mechanism, JSON ``mechanism``)
MECHANISMS = ("gradient", "stale-grad", "momentum", "adam-state", "weight-decay", "optimizer-state",
              "update-rule", "shared-storage")


@dataclass(frozen=True)
class FreezeIssue:
    """One violation or warning: which check, on what, expected versus found, the cause and the fix.

    ``message`` is the whole sentence for this one subject (the cause and then the fix), as JSON, JUnit,
    annotations and ``assert_frozen`` print it.  The parts are kept apart for the grouped views: when
    ``kind`` is set the message starts ``{kind} '{subject}' {cause}``, and ``cause`` never names the subject,
    so issues with the same check, kind and cause share one entry; ``fix`` is the remedy alone.
    """

    check: str  # one of CHECKS
    subject: str  # a parameter, buffer or module name
    expected: str
    found: str
    message: str
    groups: tuple[str, ...] = ()  # spec groups it belongs to ("frozen backbone"), for JUnit test cases
    fix: str | None = None  # what to change; the tail of ``message``
    kind: str = ""  # what the subject is: "frozen parameter", "trainable parameter", "buffer"
    cause: str = ""  # ``message`` without the subject phrase and the fix; the statement itself when kind is ""
    mechanism: tuple[str, ...] = ()  # step check: what moved a frozen parameter (one of MECHANISMS each)
    delta: float | None = None  # step check: the largest absolute change measured (``found`` quotes it)


@dataclass(frozen=True)
class FreezeParam:
    """One distinct parameter as the freeze spec sees it (a row of ``parameters[]``)."""

    name: str
    aliases: tuple[str, ...]
    expected: str  # frozen | trainable | unlisted
    requires_grad: bool
    grad: GradState | None  # None: no backward ran
    groups: tuple[str, ...] = ()  # "frozen backbone", "trainable head", "baseline", "unlisted"
    conflict: bool = False  # matched by a frozen and a trainable pattern
    optimizer_group: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class OptimizerState:
    """The optimizer's per-parameter state at one moment: its tensor entries and what they hold."""

    keys: tuple[str, ...] = ()  # tensor entries other than ``step`` (momentum_buffer, exp_avg, exp_avg_sq ...)
    nonzero: tuple[str, ...] = ()  # those holding a nonzero value (the ones that can move a parameter)
    nbytes: int = 0  # bytes of every tensor entry, ``step`` included

    @property
    def exists(self) -> bool:
        return bool(self.keys) or self.nbytes > 0


@dataclass(frozen=True)
class OptimizerParam:
    """How one model parameter fared in the optimizer steps (canonical name).

    The steps are the ones a training loop runs: the gradients as backward left them (``None`` stays
    ``None``; a ``.grad`` already there when the model was handed over stays and accumulates), ``step()``,
    then the optimizer's own ``zero_grad()``, repeated ``OptimizerFacts.steps`` times.
    """

    name: str
    groups: tuple[int, ...]  # param-group index per occurrence (empty: not in the optimizer; two: in two groups)
    had_grad: bool  # backward gave it a gradient
    moved: bool | None  # changed by the steps (None: not measured, e.g. on meta)
    delta: float | None  # max |change| after the steps
    moved_step: int | None = None  # the first step (1-based) that changed it
    stale_grad: GradState | None = None  # the .grad it held when handed over, backward not reaching it: zero | nonzero
    state_before: OptimizerState = field(default_factory=OptimizerState)  # as handed over (resumed checkpoint)
    state_after: OptimizerState = field(default_factory=OptimizerState)  # after the steps


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
    steps: int = 0  # training steps run
    zero_grad_keeps: GradState | None = None  # what its zero_grad() left in a .grad: ABSENT | ZERO (None: none seen)

    def param(self, name: str) -> OptimizerParam | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def group(self, index: int) -> OptimizerGroup | None:
        return next((g for g in self.groups if g.index == index), None)


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
