"""Build the model a target names: a class, a factory or an instance, on the chosen device.

Sees through ``torch.compile`` and DataParallel-style wrappers, refuses what cannot be probed (uninitialized
lazy parameters, a meta model on a real device), and keeps weight tying when an instance moves to meta.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradprobe.errors import TargetError, UsageError, describe_exception
from gradprobe.load.user_code import user_frame


@dataclass
class LoadedModel:
    """A built model plus what loading it taught us (shown in the report's notes)."""

    model: nn.Module
    notes: list[str] = field(default_factory=list)
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    loss: Any = None  # the loss when none is given: the model's own for a Hugging Face head given labels


def resolve_device(name: str | None) -> torch.device:
    """Validate ``--device`` against what this torch build offers."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device '{name}' is not a device; use cpu, cuda, cuda:N, mps or meta") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {name}: CUDA is not available in this torch build ({torch.__version__}); "
            f"use --device cpu, or --device meta for a size estimate"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps", "meta"):
        raise UsageError(f"--device '{name}' is not supported; use cpu, cuda, mps or meta")
    return device



def parse_init(init: str | None) -> dict[str, Any]:
    """``--init '{"hidden": 64}'`` → keyword arguments."""
    if init is None:
        return {}
    try:
        value = json.loads(init)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--init is not valid JSON ({exc.msg} at column {exc.colno}): "
                         f"write e.g. --init '{{\"hidden\": 64}}'") from exc
    if not isinstance(value, dict):
        raise UsageError(f"--init must be a JSON object of keyword arguments, not {type(value).__name__}: "
                         f"e.g. --init '{{\"hidden\": 64}}'")
    return value


DISTRIBUTED_WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel")


def unwrap_model(model: nn.Module, notes: list[str], keep_distributed: bool = False) -> nn.Module:
    """See through ``torch.compile`` and DataParallel-style wrappers to the module users wrote.

    ``keep_distributed`` (runs under torchrun) keeps DDP and FSDP1 wrappers: the run goes through them.
    """
    for _ in range(8):
        if keep_distributed and type(model).__name__ in DISTRIBUTED_WRAPPERS:
            break
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            notes.append(f"{type(model).__name__} from torch.compile: inspected the original module "
                         f"{type(inner).__name__} (compiled graphs are not traced)")
            model = inner
            continue
        inner = getattr(model, "module", None)
        own = list(model.named_parameters(recurse=False))
        if isinstance(inner, nn.Module) and not own and len(list(model.children())) == 1:
            notes.append(f"{type(model).__name__} wrapper: inspected its .module ({type(inner).__name__})")
            model = inner
            continue
        break
    if isinstance(model, torch.jit.ScriptModule):
        notes.append("TorchScript module: parameters, outputs and the grad_fn graph are visible; "
                     "submodule calls are not (scripted code runs no Python hooks)")
    _refuse_lazy(model)
    return model


def _refuse_lazy(model: nn.Module) -> None:
    """Uninitialized Lazy* parameters have no shape or storage: probing them cannot work (and must not
    materialize the user's model behind their back)."""
    from torch.nn.parameter import is_lazy

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if is_lazy(tensor):
            owner = dict(model.named_modules()).get(name.rpartition(".")[0])
            kind = f" ({type(owner).__name__})" if owner is not None else ""
            raise TargetError(
                f"'{name}'{kind} is an uninitialized lazy parameter: run one forward on example inputs first "
                f"(model(x)) so its shape is known, e.g. in a factory function, then probe the model"
            )


def build_model(obj: Any, spec: str, init: dict[str, Any], device: torch.device,
                keep_distributed: bool = False) -> LoadedModel:
    """Build (or take) the model that ``spec`` names, on ``device``."""
    notes: list[str] = []
    if isinstance(obj, nn.Module):
        if init:
            raise UsageError(f"--init does not apply: '{spec}' is a module instance, not a class or factory")
        model = unwrap_model(obj, notes, keep_distributed)
        if device.type == "meta":
            model = move_instance_to_meta(model, notes)
        elif device.type != "cpu":
            model = model.to(device)
        _refuse_meta_on_real_device(model, spec, device)
        return LoadedModel(model, notes)
    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        raise TargetError(f"'{spec}' is the class {obj.__name__}, not an nn.Module subclass; "
                          f"name a model class or factory")
    if not callable(obj):
        raise TargetError(f"'{spec}' is a {type(obj).__name__}, not an nn.Module class, instance or factory function")
    kind = "constructor" if inspect.isclass(obj) else "factory"
    _check_init_args(obj, init, spec, kind)
    try:
        ctx = torch.device(device) if device.type != "cpu" else contextlib.nullcontext()
        with ctx:
            built = obj(**init)
    except TypeError as exc:
        msg = describe_exception(exc)
        if "argument" in str(exc) and _raised_by_call(exc):
            raise TargetError(
                f"building '{spec}' ({kind}) raised {msg}; pass its arguments as JSON with "
                f"--init '{{\"name\": value}}'{_signature_hint(obj)}"
            ) from exc
        raise TargetError(f"building '{spec}' ({kind}) raised {msg}{user_frame(exc)}") from exc
    except SystemExit as exc:
        raise TargetError(f"building '{spec}' called sys.exit({exc.code!r})") from exc
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise TargetError(f"building '{spec}' ({kind}) raised {describe_exception(exc)}{user_frame(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise TargetError(f"factory '{spec}' returned {type(built).__name__}, not an nn.Module; return the model")
    model = unwrap_model(built, notes, keep_distributed)
    if device.type == "meta":
        model = strays_to_meta(model, notes)
    if device.type not in ("cpu", "meta") and type(model).__name__ not in DISTRIBUTED_WRAPPERS:
        model = model.to(device)
    _refuse_meta_on_real_device(model, spec, device)
    return LoadedModel(model, notes)


def _refuse_meta_on_real_device(model: nn.Module, spec: str, device: torch.device) -> None:
    """A model built on meta has no values: a real-device run would fail deep inside torch."""
    if device.type == "meta":
        return
    on_meta = next((name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if on_meta is not None:
        raise TargetError(f"'{spec}' is on the meta device ('{on_meta}' has no data), but --device is {device}; "
                          f"pass --device meta for a size estimate, or build the model with real weights")


def _raised_by_call(exc: BaseException) -> bool:
    """True when a TypeError comes from the call itself (wrong arguments), not from code inside the callee."""
    tb = exc.__traceback__
    frames = 0
    while tb is not None:
        frames += 1
        tb = tb.tb_next
    return frames <= 1  # only our own frame: Python rejected the call before running the user's code


def _check_init_args(obj: Any, init: dict[str, Any], spec: str, kind: str) -> None:
    """Match --init against the signature before calling, so a TypeError raised *inside* the user's
    constructor is not mistaken for a wrong --init."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**init)
    except TypeError as exc:
        params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        required = [p.name for p in params if p.default is p.empty]
        accepted = ", ".join(p.name for p in params) or "none"
        unknown = [k for k in init if k not in {p.name for p in params}]
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if unknown and not has_var_kw:
            raise TargetError(
                f"--init: {kind} of '{spec}' takes no argument {', '.join(repr(k) for k in unknown)}; "
                f"its arguments are: {accepted}"
            ) from exc
        example = ", ".join(f'"{name}": ...' for name in required) or '"name": value'
        raise TargetError(
            f"building '{spec}' ({kind}) failed: {exc}; pass its arguments as JSON with --init '{{{example}}}'"
            f"{_signature_hint(obj)}"
        ) from exc


def _signature_hint(obj: Any) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    required = [p.name for p in sig.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return f" (required: {', '.join(required)})" if required else ""


def strays_to_meta(model: nn.Module, notes: list[str]) -> nn.Module:
    """A model built under ``torch.device("meta")`` can keep tensors its constructor made on the CPU (the legacy
    ``torch.Tensor(n)`` ignores the device context: Wav2Vec2's ``masked_spec_embed``); a meta run mixing them
    fails in backward.  gradprobe built it, so it moves them (weight tying kept)."""
    strays = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    if not strays:
        return model
    moved: list[str] = []
    model = move_instance_to_meta(model, moved)
    notes.append(f"--device meta: moved {len(strays)} tensor(s) the constructor made on the CPU to meta "
                 f"({', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''})")
    return model


def move_instance_to_meta(model: nn.Module, notes: list[str]) -> nn.Module:
    """``.to('meta')`` unties shared parameters; re-tie them by the identity recorded before the move."""
    groups: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for pname, param in mod._parameters.items():
            if param is not None:
                groups.setdefault(id(param), []).append((mod, pname))
    model = model.to("meta")
    retied = 0
    for owners in groups.values():
        first_mod, first_name = owners[0]
        shared = first_mod._parameters[first_name]
        for mod, pname in owners[1:]:
            if mod._parameters[pname] is not shared:
                mod._parameters[pname] = shared
                retied += 1
    notes.append("instance moved to the meta device" + (f"; re-tied {retied} shared parameter(s)" if retied else ""))
    return model
