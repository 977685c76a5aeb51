"""Turn a ``module:Name`` or ``file.py:Name`` spec into a model, weights and example inputs.

Loading a target runs the user's code (import, constructor, factory); every
failure on the way becomes a one-line ``GradprobeError`` naming the fix.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from gradprobe.errors import InputError, TargetError, UsageError, WeightsError, describe_exception

SPEC_FORMS = "'package.module:Name' or 'path/to/file.py:Name'"


@dataclass
class LoadedModel:
    """A built model plus what loading it taught us (shown in the report's notes)."""

    model: nn.Module
    notes: list[str] = field(default_factory=list)
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()


@dataclass
class ExampleInputs:
    """Positional and keyword inputs for ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    source: str

    def as_user_value(self) -> Any:
        """The inputs as a user thinks of them: one tensor, a tuple of positional inputs, or the kwargs dict."""
        if self.kwargs:
            return self.kwargs
        return self.args[0] if len(self.args) == 1 else self.args

    def describe(self) -> str:
        """Shapes and dtypes of the inputs, for error messages."""
        parts = [f"arg{i}: {_describe_value(a)}" for i, a in enumerate(self.args)]
        parts += [f"{k}: {_describe_value(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts) or "no inputs"


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe_value(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_describe_value(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


# --------------------------------------------------------------------------- specs


def split_spec(spec: str, option: str = "TARGET") -> tuple[str, str]:
    """Split ``mod:Name`` / ``file.py:Name`` into its module part and dotted attribute path."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(f"{option} '{spec}' is not a spec: write it as {SPEC_FORMS}{_names_in_file(spec)}")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"{option} '{spec}': '{attr}' is not a (dotted) Python name")
    return module_part, attr


def _names_in_file(path_text: str) -> str:
    """``; it defines: Net, build`` for a .py path given without ``:Name`` (read with ast, nothing is run)."""
    import ast

    path = Path(path_text.rstrip(":"))
    if path.suffix != ".py" or not path.is_file():
        return ""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    names = [node.name for node in tree.body
             if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_")]
    return f"; '{path_text.rstrip(':')}' defines: {', '.join(names[:8])}" if names else ""


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Make ``directory`` importable for the duration of the import, as ``python -m`` does."""
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def _import_file(path_text: str, option: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise TargetError(f"{option}: file '{path_text}' not found (looked in {Path.cwd()}); check the path")
    if path.is_dir():
        raise TargetError(f"{option}: '{path_text}' is a directory; name a .py file, "
                          f"e.g. '{path_text.rstrip('/')}/model.py:Net'")
    path = path.resolve()
    name = f"_gradprobe_user_{path.stem}_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"{option}: '{path_text}' cannot be imported as Python; name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(str(path.parent)):
            _run_user_import(lambda: spec.loader.exec_module(module), path_text, option)  # type: ignore[union-attr]
    except ModuleNotFoundError as exc:  # the file imports a package this environment lacks
        sys.modules.pop(name, None)
        raise TargetError(
            f"{option}: importing '{path_text}' failed: {describe_exception(exc)} "
            f"(a dependency of your code); install it in this environment"
        ) from exc
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(module_name: str, option: str) -> ModuleType:
    cwd = os.getcwd()
    with _on_sys_path(cwd):
        try:
            return _run_user_import(lambda: importlib.import_module(module_name), module_name, option)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                raise TargetError(
                    f"{option}: module '{module_name}' not found (searched the current directory {cwd} "
                    f"and sys.path); check the spelling, run from the project root, or name a file: "
                    f"'path/to/file.py:Name'"
                ) from exc
            raise TargetError(
                f"{option}: importing '{module_name}' failed: {describe_exception(exc)} "
                f"(a dependency of your code); install it in this environment"
            ) from exc


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    """Import user code without writing ``__pycache__`` into the user's project (gradprobe writes no files)."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def _run_user_import(load: Any, label: str, option: str) -> Any:
    try:
        with _no_bytecode():
            return load()
    except ModuleNotFoundError:
        raise
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else label
        raise TargetError(f"{option}: syntax error in {where}: {exc.msg}; fix the file and retry") from exc
    except SystemExit as exc:
        raise TargetError(
            f"{option}: importing '{label}' called sys.exit({exc.code!r}); guard script code with "
            f"`if __name__ == \"__main__\":`"
        ) from exc
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise TargetError(
            f"{option}: importing '{label}' raised {describe_exception(exc)}{_user_frame(exc)}; "
            f"fix the import-time error (run it with --debug for the traceback)"
        ) from exc


def _user_frame(exc: BaseException) -> str:
    """`` (at file:line)`` for the innermost frame of the traceback, if any."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    code = last.tb_frame.f_code
    return f" (at {code.co_filename}:{last.tb_lineno})"


def load_object(spec: str, option: str = "TARGET") -> Any:
    """Import the module part of ``spec`` and return the (dotted) attribute it names."""
    module_part, attr = split_spec(spec, option)
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        module = _import_file(module_part, option)
    else:
        module = _import_module(module_part, option)
    obj: Any = module
    walked: list[str] = []
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = ".".join([module_part.rsplit("/", 1)[-1], *walked]) if walked else module_part
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
                f"it has: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}" if names else "it is empty"
            )
            raise TargetError(f"{option}: '{owner}' has no attribute '{part}'; {hint}")
        obj = getattr(obj, part)
        walked.append(part)
    return obj


# --------------------------------------------------------------------------- device


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


# --------------------------------------------------------------------------- model


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


def unwrap_model(model: nn.Module, notes: list[str]) -> nn.Module:
    """See through ``torch.compile`` and DataParallel-style wrappers to the module users wrote."""
    for _ in range(8):
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


def build_model(obj: Any, spec: str, init: dict[str, Any], device: torch.device) -> LoadedModel:
    """Build (or take) the model that ``spec`` names, on ``device``."""
    notes: list[str] = []
    if isinstance(obj, nn.Module):
        if init:
            raise UsageError(f"--init does not apply: '{spec}' is a module instance, not a class or factory")
        model = unwrap_model(obj, notes)
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
        raise TargetError(f"building '{spec}' ({kind}) raised {msg}{_user_frame(exc)}") from exc
    except SystemExit as exc:
        raise TargetError(f"building '{spec}' called sys.exit({exc.code!r})") from exc
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise TargetError(f"building '{spec}' ({kind}) raised {describe_exception(exc)}{_user_frame(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise TargetError(f"factory '{spec}' returned {type(built).__name__}, not an nn.Module; return the model")
    model = unwrap_model(built, notes)
    if device.type not in ("cpu", "meta"):
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


def load_weights(loaded: LoadedModel, path_text: str) -> None:
    """Load a ``.pt``/``.pth`` (weights_only) or ``.safetensors`` state dict, non-strictly; record key mismatches."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "not found"
        raise WeightsError(f"--weights: '{path_text}' {problem}; name a state-dict file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise WeightsError("--weights: reading .safetensors needs the 'safetensors' package: "
                               "pip install safetensors") from exc
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"--weights: '{path_text}' is not a readable safetensors file "
                               f"({describe_exception(exc)})") from exc
    else:
        try:
            with warnings.catch_warnings():  # torch's pickle-protocol warnings would break the one-line error
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            text = str(exc)
            if "GLOBAL" in text:  # a real pickled object; any other unpickling error is a corrupt/foreign file
                found = text.split("GLOBAL", 1)[1].split()
                what = f" ({found[0]})" if found else ""
                raise WeightsError(
                    f"--weights: refused '{path_text}': it holds a pickled Python object{what}, and gradprobe "
                    f"loads only tensors (torch.load weights_only=True, so loading runs no code); "
                    f"save it with torch.save(model.state_dict(), path)"
                ) from exc
            if "Unpickl" in type(exc).__name__ or isinstance(exc, EOFError):
                raise WeightsError(f"--weights: cannot read '{path_text}': not a file written by torch.save "
                                   f"(corrupt, truncated or another format); pass a file written by "
                                   f"torch.save(model.state_dict(), path)") from exc
            raise WeightsError(f"--weights: cannot read '{path_text}' ({describe_exception(exc)}); "
                               f"pass a file written by torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                loaded.notes.append(f"weights: used the '{key}' entry of the checkpoint")
                state = inner
                break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise WeightsError(f"--weights: '{path_text}' holds a {type(state).__name__}, not a state dict of "
                           f"name → tensor; save it with torch.save(model.state_dict(), path)")
    model_state = loaded.model.state_dict()
    for key, value in state.items():
        if key in model_state and tuple(model_state[key].shape) != tuple(value.shape):
            raise WeightsError(f"--weights: '{key}' has shape {tuple(value.shape)} in the file but "
                               f"{tuple(model_state[key].shape)} in the model; is it the right checkpoint "
                               f"or --init?")
    try:
        on_meta = any(p.device.type == "meta" for p in loaded.model.parameters())
        result = loaded.model.load_state_dict(state, strict=False, assign=on_meta)
    except Exception as exc:
        raise WeightsError(f"--weights: loading '{path_text}' failed: {describe_exception(exc)}") from exc
    loaded.missing_keys = tuple(result.missing_keys)
    loaded.unexpected_keys = tuple(result.unexpected_keys)
    loaded.notes.append(f"weights: loaded {len(state)} tensor(s) from {path.name}; "
                        f"{len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected key(s)")


# --------------------------------------------------------------------------- inputs


_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}


def parse_dtype(name: str, option: str = "--dtype") -> torch.dtype:
    """A dtype name (``float32``, ``int64``, ``bfloat16`` ...)."""
    key = name.removeprefix("torch.")
    if key not in _DTYPES:
        raise UsageError(f"{option} '{name}' is not a dtype; use one of {', '.join(sorted(set(_DTYPES)))}")
    return _DTYPES[key]


def parse_shape(text: str) -> tuple[int, ...]:
    """``8,3,32,32`` → (8, 3, 32, 32)."""
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(","))  # an empty part ("3,x") is an error
    except ValueError as exc:
        raise UsageError(f"--shape '{text}' is not a shape: write comma-separated sizes, "
                         f"e.g. --shape 8,3,32,32") from exc
    if not dims or any(d < 0 for d in dims):
        raise UsageError(f"--shape '{text}' is not a shape: write comma-separated non-negative sizes, e.g. 8,3,32,32")
    return dims


def _as_inputs(value: Any, source: str) -> ExampleInputs:
    if isinstance(value, torch.Tensor):
        return ExampleInputs((value,), {}, source)
    if isinstance(value, (tuple, list)):
        return ExampleInputs(tuple(value), {}, source)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InputError(f"{source} returned a dict with non-string keys; keyword inputs need string keys")
        return ExampleInputs((), dict(value), source)
    got = "None" if value is None else type(value).__name__
    raise InputError(f"{source} gave {got}; give a tensor (one input), a tuple/list (positional inputs) "
                     f"or a dict (keyword inputs)")


def _call_inputs_factory(fn: Any, model: nn.Module, spec: str) -> Any:
    try:
        sig = inspect.signature(fn)
        required = [p for p in sig.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        required = []
    try:
        return fn(model) if len(required) == 1 else fn()
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        raise InputError(f"--inputs '{spec}' called sys.exit({exc.code!r})") from exc
    except Exception as exc:
        raise InputError(f"--inputs '{spec}' raised {describe_exception(exc)}{_user_frame(exc)}") from exc


def make_inputs(
    model: nn.Module,
    *,
    spec: str | None = None,
    shapes: list[str] | None = None,
    dtype: str = "float32",
    high: int = 2,
    device: torch.device | None = None,
    target: str = "the model",
) -> ExampleInputs:
    """Example inputs from --inputs, else --shape, else ``model.example_input_array``."""
    device = device or torch.device("cpu")
    if spec:
        obj = load_object(spec, "--inputs")
        value = _call_inputs_factory(obj, model, spec) if callable(obj) else obj
        inputs = _as_inputs(value, f"--inputs '{spec}'")
    elif shapes:
        torch_dtype = parse_dtype(dtype)
        if high < 1:
            raise UsageError(f"--high {high}: integer inputs are drawn from [0, high); use --high 1 or more")
        tensors = []
        for text in shapes:
            shape = parse_shape(text)
            if torch_dtype == torch.bool:
                tensors.append(torch.randint(0, 2, shape, device=device).bool())
            elif torch_dtype.is_floating_point:
                tensors.append(torch.randn(shape, dtype=torch_dtype, device=device))
            else:
                tensors.append(torch.randint(0, high, shape, dtype=torch_dtype, device=device))
        return ExampleInputs(tuple(tensors), {}, "--shape")
    else:
        try:
            value = getattr(model, "example_input_array", None)
        except Exception as exc:
            raise InputError(f"reading {target}.example_input_array raised {describe_exception(exc)}") from exc
        if value is None:
            raise InputError(
                f"no example inputs for {target}: pass --shape 8,3,32,32 (once per positional input, "
                f"--dtype int64 --high 1000 for token ids), --inputs module:fn (a function returning a tensor, "
                f"tuple or dict), or set model.example_input_array"
            )
        inputs = _as_inputs(value, "model.example_input_array")
    return ExampleInputs(to_device(inputs.args, device), to_device(inputs.kwargs, device), inputs.source)


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor inside a nested tuple/list/dict to ``device``, keeping dtypes."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
