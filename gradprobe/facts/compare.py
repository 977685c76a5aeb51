"""Plain dataclasses for ``compare-modes``: one row per mode combination, and what the comparison found.

Like :mod:`gradprobe.facts.run`, these hold only Python scalars, strings and tuples (no torch), so the
judges in :mod:`gradprobe.judges.compare` and the renderers can be tested with hand-made values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gradprobe.facts.run import GRAD_MODES, MODES, Finding, RunFacts

COMPARE_SCHEMA = "gradprobe.run.compare/1"
ALL_MODES: tuple[tuple[str, str], ...] = tuple((m, g) for m in MODES for g in GRAD_MODES)
REFERENCE = ("eval", "no_grad")  # outputs of every row are compared with this combination's


def label(mode: str, grad_mode: str) -> str:
    """``("eval", "no_grad")`` → ``"eval:no_grad"``: the spelling ``--modes`` takes."""
    return f"{mode}:{grad_mode}"


@dataclass(frozen=True)
class Mismatch:
    """Why two runs' outputs could not be compared element by element."""

    kind: str  # "structure": different number of output tensors; "shape": shape or dtype; "unknown": meta values
    path: str = ""  # the output tensor whose shape or dtype differs ("shape" only)
    counts: tuple[int, int] = (0, 0)  # output tensors in each run ("structure")
    shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # of ``path`` in each run ("shape")
    dtypes: tuple[str, str] = ("", "")  # of ``path`` in each run ("shape")


@dataclass(frozen=True)
class ModeRow:
    """What one train/eval x grad-mode combination did. ``None`` means not measured (row failed, meta device)."""

    mode: str
    grad_mode: str
    ok: bool
    error: str | None = None  # the failure in one line, as the engine reports it, without the --debug advice
    output_requires_grad: bool | None = None  # any floating-point output requires grad
    output_grad_fn: str | None = None  # grad_fn of the first floating-point output
    is_inference: bool | None = None  # any output is an inference tensor
    graph_nodes: int | None = None  # distinct autograd nodes reachable from the sum of the outputs
    saved_for_backward_bytes: int | None = None
    forward_peak_bytes: int | None = None
    time_s: float | None = None  # median of the timed repeats
    times_s: tuple[float, ...] = ()
    # the same runs' process CPU time, on the CPU only: a run the machine's load delays (waiting for a core) takes
    # longer on the wall clock but not here, so the judges claim no speed difference these do not show
    cpu_times_s: tuple[float, ...] = ()
    max_abs_diff: float | None = None  # over floating-point outputs, against the reference row
    int_outputs_equal: bool | None = None  # integer/bool outputs equal to the reference's (None: there are none)
    mismatch: Mismatch | None = None  # why max_abs_diff is missing (structure or shape differs)
    buffers_changed: tuple[str, ...] = ()
    backward_possible: bool | None = None
    backward_time_s: float | None = None
    backward_peak_bytes: int | None = None
    backward_error: str | None = None
    repeat_max_abs_diff: float | None = None  # between two runs of this row from the same seed and state
    repeat_int_equal: bool | None = None
    error_phase: str | None = None  # where the failing run raised: forward, output, loss (None: timed run)
    error_cause: str | None = None  # a recognised cause: "inference-tensor" (inference tensors used with grad)
    failed_timed_run: int | None = None  # 1-based number of the timed run that raised (None: the tracked run)
    # against the reference: every float output within what float rounding explains (a relative tolerance per
    # dtype x the output's largest |value|, see gradprobe.run.compare.outputs); that limit for the closest output
    within_tolerance: bool | None = None
    tolerance: float | None = None
    # max_abs_diff on the non-padded positions only, when this row or the reference took the nested-tensor
    # fast path and the other did not (see NestedFastPath); None otherwise
    unpadded_max_abs_diff: float | None = None
    unpadded_within_tolerance: bool | None = None
    # the tracked run's facts with its memory event log, kept only when asked for (``memory_detail``: the HTML
    # report's timeline per mode and graph); never part of the JSON document nor of row equality
    run: RunFacts | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        return label(self.mode, self.grad_mode)

    @property
    def differs(self) -> bool:
        """Outputs differ from the reference (floating-point or integer)."""
        return bool(self.max_abs_diff) or self.int_outputs_equal is False or self.mismatch is not None

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
    within_tolerance: bool | None = None  # the difference is no more than float rounding explains
    # for a difference within tolerance: ATen ops only the eval flag's run used, and only the train flag's
    ops_only_eval: tuple[str, ...] = ()
    ops_only_train: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplayFailure:
    """One attribution step gradprobe could not do: a failure of the replay, never a verdict on the model."""

    step: str  # "capture" (recording module inputs), "replay" (one module alone), "check" (eval with flips)
    module: str | None  # qualified name for "replay", None otherwise
    exception: str  # the exception's type name
    detail: str  # its first line, for JSON and --debug readers; verdicts never quote it


@dataclass(frozen=True)
class Attribution:
    """Which modules make train and eval outputs differ, found by flipping one module's flag at a time."""

    modules: tuple[ModuleEffect, ...] = ()
    tested: tuple[str, ...] = ()  # modules whose flag was flipped alone
    explained: bool | None = None  # these modules alone in train mode reproduce the train output exactly
    skipped: str | None = None  # why no exact check: "same-flags" (train() and eval() set the same flags),
    #                             "nondeterministic" (two train runs from one seed differ)
    failures: tuple[ReplayFailure, ...] = ()  # steps that could not be done
    fast_path_off: bool = False  # ran with torch.backends.mha.set_fastpath_enabled(False) (see NestedFastPath)


@dataclass(frozen=True)
class GradModeDiff:
    """Outputs of two grad modes in the same train/eval mode: they should be identical."""

    row: str  # label, e.g. "eval:inference_mode"
    base: str  # label it is compared with, e.g. "eval:no_grad"
    max_abs_diff: float | None
    int_outputs_equal: bool | None = None
    mismatch: Mismatch | None = None
    within_tolerance: bool | None = None  # no more than float rounding explains (see ModeRow)
    tolerance: float | None = None
    unpadded_max_abs_diff: float | None = None  # on non-padded positions, when one side took the nested path
    unpadded_within_tolerance: bool | None = None
    # when the outputs differ: ATen ops only ``row``'s forward ran, and only ``base``'s (kernel choice)
    ops_only_row: tuple[str, ...] = ()
    ops_only_base: tuple[str, ...] = ()

    @property
    def differs(self) -> bool:
        return bool(self.max_abs_diff) or self.int_outputs_equal is False or self.mismatch is not None


@dataclass(frozen=True)
class NestedFastPath:
    """``nn.TransformerEncoder``'s nested-tensor fast path: taken with a padding mask in eval with grad off.

    It runs the layers on the real positions only and writes zeros at the padded ones, where every other
    combination computes values: rows on either side of it differ there by design.
    """

    encoders: tuple[str, ...]  # qualified names of the encoders that took it
    rows: tuple[str, ...]  # labels of the rows whose forward took it
    padded_positions: int | None  # (batch, position) pairs the mask pads
    positions: int | None  # (batch, position) pairs in all
    separable: bool  # every output is laid out by position, so non-padded positions can be compared alone


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
    notes: tuple[str, ...] = ()  # from loading the model (weights, unwrapping)
    # eval + no_grad from another RNG state against the reference (None: not run, e.g. on meta)
    eval_random_max_abs_diff: float | None = None
    eval_random_int_equal: bool | None = None
    eval_random_mismatch: Mismatch | None = None  # why the diff is missing: the outputs differ in structure or shape
    eval_random_error: str | None = None  # that forward raised: ``Type: first line``
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    nested_fast_path: NestedFastPath | None = None
    # each changed buffer's owner: (buffer name, owning module's class name, the owner is a BatchNorm layer)
    buffer_owners: tuple[tuple[str, str, bool], ...] = ()

    @property
    def eval_random(self) -> bool:
        """Eval outputs change with the RNG state: something samples randomness although the model is in eval."""
        return bool(self.eval_random_max_abs_diff) or self.eval_random_int_equal is False \
            or self.eval_random_mismatch is not None

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
    notes: tuple[str, ...] = field(default_factory=tuple)  # shown under the table: loading, meta limits, skipped checks

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    @property
    def rows(self) -> Sequence[ModeRow]:
        return self.comparison.rows
