"""Plain dataclasses for ``compare-modes``: one row per mode combination, and what the comparison found.

Like :mod:`gradprobe.facts.run`, these hold only Python scalars, strings and tuples (no torch), so the
judges in :mod:`gradprobe.judges.compare` and the renderers can be tested with hand-made values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gradprobe.errors import UsageError
from gradprobe.facts.run import GRAD_MODES, MODES, Finding

COMPARE_SCHEMA = "gradprobe.run.compare/1"
ALL_MODES: tuple[tuple[str, str], ...] = tuple((m, g) for m in MODES for g in GRAD_MODES)
REFERENCE = ("eval", "no_grad")  # outputs of every row are compared with this combination's
_GRAD_ALIASES = {"no-grad": "no_grad", "nograd": "no_grad", "inference-mode": "inference_mode",
                 "inference": "inference_mode", "enable_grad": "grad"}


def label(mode: str, grad_mode: str) -> str:
    """``("eval", "no_grad")`` → ``"eval:no_grad"``: the spelling ``--modes`` takes."""
    return f"{mode}:{grad_mode}"


def parse_modes(spec: str | Iterable[str | tuple[str, str]] | None) -> list[tuple[str, str]]:
    """``"train:grad,eval:no_grad"`` (or a list of such items or pairs) → pairs, in the order given.

    ``None``/``"all"`` means all six.  Duplicates are dropped; anything else outside the six is a
    usage error naming the accepted spellings.
    """
    if spec is None:
        return list(ALL_MODES)
    items: list[str | tuple[str, str]] = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            text = item.strip().lower()
            if not text:
                continue
            if text == "all":
                pairs.extend(ALL_MODES)
                continue
            mode, sep, grad_mode = text.partition(":")
            if not sep:
                raise UsageError(f"--modes: '{item}' is not MODE:GRAD; write e.g. train:grad,eval:no_grad "
                                 f"(MODE: train|eval, GRAD: grad|no_grad|inference_mode)")
        else:
            mode, grad_mode = item
        mode, grad_mode = mode.strip(), _GRAD_ALIASES.get(grad_mode.strip(), grad_mode.strip())
        if mode not in MODES:
            raise UsageError(f"--modes: '{mode}' in '{label(mode, grad_mode)}' is not a mode; use train or eval")
        if grad_mode not in GRAD_MODES:
            raise UsageError(f"--modes: '{grad_mode}' in '{label(mode, grad_mode)}' is not a grad mode; "
                             f"use grad, no_grad or inference_mode")
        if (mode, grad_mode) not in pairs:
            pairs.append((mode, grad_mode))
    if not pairs:
        raise UsageError("--modes is empty; give at least one MODE:GRAD such as eval:no_grad, or leave it out "
                         "for all six")
    return pairs


@dataclass(frozen=True)
class ModeRow:
    """What one train/eval x grad-mode combination did. ``None`` means not measured (row failed, meta device)."""

    mode: str
    grad_mode: str
    ok: bool
    error: str | None = None
    output_requires_grad: bool | None = None  # any floating-point output requires grad
    output_grad_fn: str | None = None  # grad_fn of the first floating-point output
    is_inference: bool | None = None  # any output is an inference tensor
    graph_nodes: int | None = None  # distinct autograd nodes reachable from the sum of the outputs
    saved_for_backward_bytes: int | None = None
    forward_peak_bytes: int | None = None
    time_s: float | None = None  # median of the timed repeats
    times_s: tuple[float, ...] = ()
    max_abs_diff: float | None = None  # over floating-point outputs, against the reference row
    int_outputs_equal: bool | None = None  # integer/bool outputs equal to the reference's (None: there are none)
    diff_note: str | None = None  # why max_abs_diff is missing (structure or shape differs)
    buffers_changed: tuple[str, ...] = ()
    backward_possible: bool | None = None
    backward_time_s: float | None = None
    backward_peak_bytes: int | None = None
    backward_error: str | None = None
    repeat_max_abs_diff: float | None = None  # between two runs of this row from the same seed and state
    repeat_int_equal: bool | None = None

    @property
    def label(self) -> str:
        return label(self.mode, self.grad_mode)

    @property
    def differs(self) -> bool:
        """Outputs differ from the reference (floating-point or integer)."""
        return bool(self.max_abs_diff) or self.int_outputs_equal is False or self.diff_note is not None

    @property
    def nondeterministic(self) -> bool:
        """Two runs with the same seed and starting state gave different outputs."""
        return bool(self.repeat_max_abs_diff) or self.repeat_int_equal is False


@dataclass(frozen=True)
class ModuleEffect:
    """A module whose output changed when only its own ``training`` flag was flipped."""

    name: str  # qualified name, "" for the model itself
    type: str
    max_abs_diff: float | None  # of its own output, train flag vs eval flag, same inputs and RNG state
    int_outputs_equal: bool | None = None


@dataclass(frozen=True)
class Attribution:
    """Which modules make train and eval outputs differ, found by flipping one module's flag at a time."""

    modules: tuple[ModuleEffect, ...] = ()
    tested: tuple[str, ...] = ()  # modules whose flag was flipped alone
    explained: bool | None = None  # these modules alone in train mode reproduce the train output exactly
    note: str | None = None  # why the check did not run or is incomplete


@dataclass(frozen=True)
class GradModeDiff:
    """Outputs of two grad modes in the same train/eval mode: they should be identical."""

    row: str  # label, e.g. "eval:inference_mode"
    base: str  # label it is compared with, e.g. "eval:no_grad"
    max_abs_diff: float | None
    int_outputs_equal: bool | None = None
    note: str | None = None

    @property
    def differs(self) -> bool:
        return bool(self.max_abs_diff) or self.int_outputs_equal is False or self.note is not None


@dataclass(frozen=True)
class Comparison:
    """Every row plus the facts the verdict needs; produced by :func:`gradprobe.run.compare.run_compare`."""

    target: str
    torch_version: str
    device: str
    seed: int | None
    repeat: int
    backward: bool
    rows: tuple[ModeRow, ...]
    reference: str | None  # label of the row every max_abs_diff is taken against
    attribution: Attribution | None = None
    grad_mode_diffs: tuple[GradModeDiff, ...] = ()
    notes: tuple[str, ...] = ()
    # eval + no_grad from another RNG state against the reference (None: not run, e.g. on meta)
    eval_random_max_abs_diff: float | None = None
    eval_random_int_equal: bool | None = None
    eval_random_note: str | None = None  # why the diff is missing: the outputs differ in structure or shape
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()

    @property
    def eval_random(self) -> bool:
        """Eval outputs change with the RNG state: something samples randomness although the model is in eval."""
        return bool(self.eval_random_max_abs_diff) or self.eval_random_int_equal is False \
            or self.eval_random_note is not None

    def row(self, mode: str, grad_mode: str) -> ModeRow | None:
        for r in self.rows:
            if r.mode == mode and r.grad_mode == grad_mode:
                return r
        return None

    def ok_rows(self, mode: str | None = None) -> list[ModeRow]:
        return [r for r in self.rows if r.ok and (mode is None or r.mode == mode)]


@dataclass(frozen=True)
class CompareReport:
    """The result of ``compare-modes``: the comparison, the judges' findings and the plain-words verdict."""

    comparison: Comparison
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    verdict: tuple[str, ...] = field(default_factory=tuple)

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    @property
    def rows(self) -> Sequence[ModeRow]:
        return self.comparison.rows
