"""``freeze_check`` and ``assert_frozen``: the freeze gate as plain Python, for the CLI and for pytest.

Re-exported by ``gradprobe.api`` (and lazily by ``gradprobe``).  ``gradprobe.api`` is imported inside
the functions because it re-exports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from gradprobe.errors import RunError, UsageError
from gradprobe.judges.freeze import FreezeReport, judge
from gradprobe.judges.freeze_spec import FreezeSpec
from gradprobe.load.config import read_baseline
from gradprobe.load.config import write_baseline as _write_baseline
from gradprobe.load.target import LoadedModel

NOTHING_TO_CHECK = ("nothing to check: give --frozen/--trainable GLOB patterns, a [tool.gradprobe.freeze] table in "
                    "pyproject.toml, or --baseline FILE")


def freeze_check(
    model: nn.Module,
    inputs: Any = None,
    *,
    frozen: str | Iterable[str] = (),
    trainable: str | Iterable[str] = (),
    optimizer: Any = None,
    unlisted: str = "warn",
    allow_buffer_updates: bool = False,
    baseline: str | os.PathLike[str] | Mapping[str, bool] | None = None,
    write_baseline: str | os.PathLike[str] | None = None,
    loss: Any = "sum",
    seed: int | None = 0,
    target: str | None = None,
    loaded: LoadedModel | None = None,
    config: str | os.PathLike[str] | None = None,
) -> FreezeReport:
    """Check that ``model`` is frozen as intended; ``report.passed`` is False when any violation exists.

    ``optimizer`` is an Optimizer, a function(model) returning one, or a ``module:fn`` / ``file.py:fn``
    spec.  ``baseline`` is a ``--write-baseline`` file or a mapping of name → expected requires_grad.
    The model (and a given optimizer) is left exactly as found.
    """
    from gradprobe.api import as_inputs, resolve_loss
    from gradprobe.load.target import load_object, unwrap_model
    from gradprobe.run.freeze import run_freeze
    from gradprobe.run.probe import param_names

    notes: list[str] = list(loaded.notes) if loaded is not None else []
    if loaded is None:  # a model object from Python: see through torch.compile/DataParallel as the CLI does
        model = unwrap_model(model, notes)
    label = target or type(model).__name__
    names = param_names(model)
    params = {id(p): p for p in model.parameters()}
    if write_baseline is not None:
        _write_baseline(write_baseline, [(names[pid], p.requires_grad) for pid, p in params.items()], label)
        if baseline is None:
            baseline = write_baseline
    expected_flags: dict[str, bool] | None = None
    baseline_path: str | None = None
    if isinstance(baseline, Mapping):
        expected_flags = {str(k): bool(v) for k, v in baseline.items()}
        baseline_path = "(mapping)"
    elif baseline is not None:
        baseline_path = os.fspath(baseline)
        expected_flags = read_baseline(baseline_path)
    spec = FreezeSpec.make(frozen, trainable, unlisted=unlisted, allow_buffer_updates=allow_buffer_updates,
                           baseline=expected_flags, baseline_path=baseline_path)
    if spec.empty:
        raise UsageError(NOTHING_TO_CHECK)
    spec.check_patterns([n for ns in names.values() for n in ns],
                        [n for n, _ in model.named_buffers(remove_duplicate=False)])  # aliases too
    example = as_inputs(inputs, model)
    opt_label = "optimizer"
    if isinstance(optimizer, str):
        opt_label = optimizer
        optimizer = load_object(optimizer, "--optimizer")
    elif optimizer is not None:
        opt_label = getattr(optimizer, "__qualname__", type(optimizer).__name__)
    try:
        facts = run_freeze(model, example, optimizer=optimizer, optimizer_label=opt_label,
                           loss=resolve_loss(loss) if isinstance(loss, str) else loss, seed=seed, target=label)
    except RunError as exc:
        raise RunError(f"the freeze could not be verified: {exc}") from exc
    verdict = judge(spec, facts)
    if not facts.run.backward:
        notes.append(f"no backward: {facts.run.backward_skipped_reason}")
    if facts.optimizer is not None and facts.optimizer.steps_skipped:
        notes.append(f"optimizer steps skipped: {facts.optimizer.steps_skipped}")
    if verdict.ddp_unused:
        notes.append(f"{len(verdict.ddp_unused)} parameter(s) require grad but receive no gradient: "
                     f"DistributedDataParallel would need find_unused_parameters=True")
    notes += verdict.notes
    return FreezeReport(
        target=label, frozen=spec.frozen, trainable=spec.trainable, unlisted=spec.unlisted,
        parameters=verdict.parameters, violations=verdict.violations, warnings=verdict.warnings, facts=facts,
        allow_buffer_updates=allow_buffer_updates, baseline=baseline_path,
        config=str(Path(config)) if config is not None else None, notes=tuple(notes), ddp_unused=verdict.ddp_unused,
    )


def assert_frozen(model: nn.Module, inputs: Any = None, **kwargs: Any) -> FreezeReport:
    """``freeze_check`` for pytest: raise ``AssertionError`` listing every violation; return the report otherwise."""
    report = freeze_check(model, inputs, **kwargs)
    if not report.passed:
        raise AssertionError(report.explain())
    return report
