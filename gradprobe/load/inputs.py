"""Example inputs for ``model(*args, **kwargs)``: from ``--inputs``, ``--shape`` or ``example_input_array``.

One conversion turns whatever the user gives (a tensor, a tuple/list, a dict) into :class:`ExampleInputs`, for
the CLI and the Python API alike.  Containers keep their type (a namedtuple stays that namedtuple).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from gradprobe.errors import InputError, UsageError, describe_exception
from gradprobe.load.user_code import load_object, user_frame


@dataclass
class ExampleInputs:
    """Positional and keyword inputs for ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    source: str
    notes: tuple[str, ...] = ()  # what making them decided (a default --high), shown in the report
    host: tuple[tuple[Any, ...], dict[str, Any]] | None = None  # on meta: the same inputs with their CPU values

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


# --------------------------------------------------------------------------- user values → ExampleInputs


def to_example_inputs(value: Any, source: str) -> ExampleInputs:
    """A tensor (one positional input), a tuple/list (positional inputs) or a dict (keyword inputs)."""
    if isinstance(value, ExampleInputs):
        return value
    if isinstance(value, torch.Tensor):
        return ExampleInputs((value,), {}, source)
    if isinstance(value, (tuple, list)):
        return ExampleInputs(tuple(value), {}, source)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InputError(f"{source} gave a dict with non-string keys; keyword inputs need string keys")
        return ExampleInputs((), dict(value), source)
    got = "None" if value is None else type(value).__name__
    raise InputError(f"{source} gave {got}; give a tensor (one input), a tuple/list (positional inputs) "
                     f"or a dict (keyword inputs)")


def as_inputs(inputs: Any, model: nn.Module) -> ExampleInputs:
    """The API's ``inputs`` argument → ``ExampleInputs``; None uses the model's ``example_input_array``."""
    if inputs is None:  # on the model's device: a model built on meta has meta example inputs
        device = next((p.device for p in model.parameters()), None)
        return make_inputs(model, target=type(model).__name__, device=device)
    found = to_example_inputs(inputs, "inputs")
    if found.host is None and _on_meta(model) and any(not t.is_meta for _, t in named_tensors(found.args,
                                                                                             found.kwargs)):
        # CPU inputs for a meta model: moved to meta, their values kept for the ops that read them (masks)
        return _placed(found, torch.device("meta"))
    return found


def _on_meta(model: nn.Module) -> bool:
    """Any parameter on meta: a model built under ``torch.device("meta")`` can keep a stray CPU parameter (one
    made with the legacy ``torch.Tensor(n)`` constructor, which ignores the device context)."""
    return any(p.is_meta for p in model.parameters())


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor inside nested containers to ``device``, keeping dtypes and container types
    (namedtuples, tuple/list/dict subclasses, dataclasses)."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    return _map_containers(value, lambda v: to_device(v, device))


def _map_containers(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to each element of a container, the container's type kept; others as is."""
    if isinstance(value, tuple):
        items = [fn(v) for v in value]
        if hasattr(value, "_fields"):  # namedtuple
            return type(value)(*items)
        return tuple(items) if type(value) is tuple else _rebuild(value, items)
    if isinstance(value, list):
        items = [fn(v) for v in value]
        return items if type(value) is list else _rebuild(value, items)
    if isinstance(value, dict):
        items = {k: fn(v) for k, v in value.items()}
        if type(value) is dict:
            return items
        out = _rebuild(value, None)  # defaultdict, OrderedDict, BatchEncoding-like mappings
        if out is value:
            return value
        out.update(items)
        return out
    if is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: fn(getattr(value, f.name)) for f in fields(value) if f.init}
        try:
            return replace(value, **changes)
        except (TypeError, ValueError):
            return value
    return value


def _rebuild(value: Any, items: list[Any] | None) -> Any:
    """A container subclass rebuilt around ``items`` (or an empty copy for mappings); the value itself when
    its type cannot be rebuilt (then its tensors stay where they are)."""
    import copy

    try:
        if items is None:
            out = copy.copy(value)
            out.clear()
            return out
        return type(value)(items)
    except Exception:
        return value


# --------------------------------------------------------------------------- --shape, --dtype, --high


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


def first_embedding(model: nn.Module) -> tuple[str, int] | None:
    """(name, num_embeddings) of the model's first ``nn.Embedding``/``nn.EmbeddingBag``: the usual first
    consumer of integer inputs (token ids); None when the model has none."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return name or "(root)", int(module.num_embeddings)
    return None


def default_high(model: nn.Module) -> tuple[int, str | None]:
    """``--high`` when none is given: the first embedding's ``num_embeddings`` (so token ids never index out of
    range), else 2; with a note saying where it came from."""
    found = first_embedding(model)
    if found is None:
        return 2, None
    name, size = found
    return size, f"--high {size}: integer inputs drawn from [0, {size}), the size of nn.Embedding '{name}'"


def _shape_inputs(model: nn.Module, shapes: list[str], dtype: str, high: int | None,
                  device: torch.device) -> ExampleInputs:
    torch_dtype = parse_dtype(dtype)
    integer = not torch_dtype.is_floating_point and torch_dtype != torch.bool
    notes: tuple[str, ...] = ()
    if high is None:
        high, note = default_high(model) if integer else (2, None)
        notes = (note,) if note else ()
    if high < 1:
        raise UsageError(f"--high {high}: integer inputs are drawn from [0, high); use --high 1 or more")
    # on meta, integer inputs are drawn on the CPU first: an op that needs CPU values (lengths) can get them back
    made_on = torch.device("cpu") if device.type == "meta" else device
    tensors = []
    for text in shapes:
        shape = parse_shape(text)
        if torch_dtype == torch.bool:
            tensors.append(torch.randint(0, 2, shape, device=made_on).bool())
        elif torch_dtype.is_floating_point:
            tensors.append(torch.randn(shape, dtype=torch_dtype, device=device))
        else:
            tensors.append(torch.randint(0, high, shape, dtype=torch_dtype, device=made_on))
    return _placed(ExampleInputs(tuple(tensors), {}, "--shape", notes), device)


def _placed(inputs: ExampleInputs, device: torch.device) -> ExampleInputs:
    """``inputs`` on ``device``; on meta, the CPU values are kept in ``host`` for :func:`cpu_fallback`."""
    host = (inputs.args, inputs.kwargs) if device.type == "meta" else None
    return replace(inputs, args=to_device(inputs.args, device), kwargs=to_device(inputs.kwargs, device), host=host)


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
        raise InputError(f"--inputs '{spec}' raised {describe_exception(exc)}{user_frame(exc)}") from exc


def make_inputs(
    model: nn.Module,
    *,
    spec: str | None = None,
    shapes: list[str] | None = None,
    dtype: str = "float32",
    high: int | None = None,
    device: torch.device | None = None,
    target: str = "the model",
) -> ExampleInputs:
    """Example inputs from --inputs, else --shape, else ``model.example_input_array``."""
    device = device or torch.device("cpu")
    if spec:
        obj = load_object(spec, "--inputs")
        value = _call_inputs_factory(obj, model, spec) if callable(obj) else obj
        return _placed(to_example_inputs(value, f"--inputs '{spec}'"), device)
    if shapes:
        return _shape_inputs(model, shapes, dtype, high, device)
    try:
        value = getattr(model, "example_input_array", None)
        inner = getattr(model, "module", None)  # DistributedDataParallel keeps the user's module there
        if value is None and isinstance(inner, nn.Module):
            value = getattr(inner, "example_input_array", None)
    except Exception as exc:
        raise InputError(f"reading {target}.example_input_array raised {describe_exception(exc)}") from exc
    if value is None:
        raise InputError(
            f"no example inputs for {target}: pass --shape 8,3,32,32 (once per positional input, "
            f"--dtype int64 for token ids), --inputs module:fn (a function returning a tensor, "
            f"tuple or dict), or set model.example_input_array"
        )
    return _placed(to_example_inputs(value, "model.example_input_array"), device)


# --------------------------------------------------------------------------- when a run fails on them


def named_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Every input tensor with its name as error messages spell it (``arg0``, ``arg1[0]``, ``lengths``)."""
    out: list[tuple[str, torch.Tensor]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            out.append((path, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}['{k}']")
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    for i, a in enumerate(args):
        walk(a, f"arg{i}")
    for k, v in kwargs.items():
        walk(v, k)
    return out


def _integers(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in named_tensors(args, kwargs) if not (t.is_floating_point() or t.is_complex())]


def cpu_fallback(inputs: ExampleInputs) -> tuple[ExampleInputs, list[str]] | None:
    """On meta: the inputs with every 1-D integer tensor (lengths, indices) back on the CPU with its values, and
    their names -- for ops such as ``pack_padded_sequence`` that need them there.  None when there are none."""
    if inputs.host is None:
        return None
    host_args, host_kwargs = inputs.host
    keep = {id(t) for _, t in _integers(host_args, host_kwargs) if t.dim() <= 1 and t.dtype != torch.bool}
    if not keep:
        return None
    meta = torch.device("meta")
    names = [name for name, t in _integers(host_args, host_kwargs) if id(t) in keep]

    def place(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value if id(value) in keep else value.to(meta)
        return _map_containers(value, place)

    return replace(inputs, args=place(host_args), kwargs=place(host_kwargs), host=None), names


def needs_cpu(error_text: str) -> bool:
    """An op refused a meta tensor where it needs one on the CPU (``'lengths' argument should be a 1D CPU int64
    tensor``)."""
    if "on the meta device failed" in error_text:  # gradprobe's own meta messages say what to do already
        return False
    return "CPU" in error_text and "meta" in error_text


def run_hint(model: nn.Module, inputs: ExampleInputs, error_text: str) -> str | None:
    """One line of advice for a run that failed on its inputs: float indices into an embedding, token ids out of
    an embedding's range, or a CPU-only input on meta."""
    has_embedding = first_embedding(model) is not None
    floats = [name for name, t in named_tensors(inputs.args, inputs.kwargs) if t.is_floating_point()]
    if has_embedding and floats and ("'indices'" in error_text or "Embedding" in error_text) \
            and ("Long" in error_text or "Float" in error_text or "dtype" in error_text):
        high, _ = default_high(model)
        return (f"hint: a float input ({', '.join(floats[:3])}) reached an nn.Embedding; token ids are integers: "
                f"pass --dtype int64 (--high {high} is the default for this model)")
    if has_embedding and "index out of range" in error_text:
        found = first_embedding(model)
        size = found[1] if found else 2
        return f"hint: an integer input indexes past an nn.Embedding; draw token ids from a smaller range with " \
               f"--high N (N at most that embedding's num_embeddings, {size} for the first one)"
    if needs_cpu(error_text):
        ints = [name for name, t in _integers(inputs.args, inputs.kwargs) if t.dim() <= 1]
        named = f"input(s) {', '.join(ints[:3])}" if ints else "an input"
        return (f"hint: on --device meta an op needs {named} on the CPU with real values (e.g. "
                f"pack_padded_sequence lengths); run with --device cpu, or compute them inside forward")
    return None
