"""A local Hugging Face model folder (``config.json``, weights optional) as a target, with inputs from its config.

``gradprobe inspect ./checkpoints/my-bert`` builds the class named in ``config.json``'s ``architectures``
(``AutoModel`` when none is named), from the saved weights when the folder has them, else from the config
alone.  Nothing is downloaded (``local_files_only=True``).  Inputs come from the config: token ids in
``[0, vocab_size)`` with an attention mask (or ``pixel_values`` for a vision config), and labels for heads that
compute their own loss, which then is the default loss.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradprobe.errors import InputError, TargetError, UsageError, describe_exception
from gradprobe.load.inputs import ExampleInputs, parse_shape, to_device
from gradprobe.load.model import LoadedModel, strays_to_meta, unwrap_model
from gradprobe.load.user_code import user_frame

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_SAME_AS_INPUT = ("ForCausalLM", "ForMaskedLM", "LMHeadModel", "ForConditionalGeneration", "ForPreTraining")
_PER_SEQUENCE = ("ForSequenceClassification", "ForImageClassification", "ForMultipleChoice")
_PER_TOKEN = ("ForTokenClassification",)


def is_hf_folder(target: str) -> bool:
    """A directory holding ``config.json``."""
    path = Path(target).expanduser()
    return path.is_dir() and (path / "config.json").is_file()


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise TargetError("a Hugging Face model folder needs the transformers package: pip install transformers") \
            from exc
    return transformers


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or load warnings from transformers among gradprobe's lines (missing keys are reported)."""
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    verbosity = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def build_hf_folder(folder: str, init: dict[str, Any], device: torch.device) -> LoadedModel:
    """The model a Hugging Face folder describes, on ``device``; ``init`` overrides config values."""
    transformers = _transformers()
    path = Path(folder).expanduser()
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **init)
        except Exception as exc:
            raise TargetError(f"'{folder}/config.json' could not be read by transformers: "
                              f"{describe_exception(exc)}") from exc
        names = list(getattr(config, "architectures", None) or [])
        cls = getattr(transformers, names[0], None) if names else None
        if names and cls is None:
            raise TargetError(f"'{folder}': config.json names the class {names[0]}, which this transformers "
                              f"({transformers.__version__}) does not have; upgrade transformers")
        weights = next((name for name in WEIGHT_FILES if (path / name).is_file()), None)
        notes: list[str] = []
        missing: tuple[str, ...] = ()
        unexpected: tuple[str, ...] = ()
        try:
            if weights is not None and device.type != "meta":
                model, info = (cls or transformers.AutoModel).from_pretrained(
                    str(path), config=config, local_files_only=True, output_loading_info=True)
                missing = tuple(info.get("missing_keys", ()))
                unexpected = tuple(info.get("unexpected_keys", ()))
                notes.append(f"weights: loaded {weights} from {folder}; {len(missing)} missing, "
                             f"{len(unexpected)} unexpected key(s)")
            else:
                with torch.device(device) if device.type == "meta" else contextlib.nullcontext():
                    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
                if device.type == "meta":
                    model = strays_to_meta(model, notes)
                why = "on --device meta weights are not read" if weights else "the folder has no weights"
                notes.append(f"built {type(model).__name__} from {folder}/config.json with random weights ({why})")
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise TargetError(f"building '{folder}' with transformers raised {describe_exception(exc)}"
                              f"{user_frame(exc)}") from exc
    model = unwrap_model(model, notes)
    if device.type not in ("cpu", "meta"):
        model = model.to(device)
    return LoadedModel(model, notes, missing, unexpected)


def _sizes(config: Any) -> tuple[int | None, int]:
    """(vocabulary size, longest sequence) from a text config (nested text configs too)."""
    text = getattr(config, "text_config", None) or config
    vocab = getattr(text, "vocab_size", None)
    longest = next((int(v) for key in ("max_position_embeddings", "n_positions", "max_seq_len")
                    if isinstance(v := getattr(text, key, None), int) and v > 0), 16)
    return (int(vocab) if isinstance(vocab, int) and vocab > 0 else None), longest


def _labels(model: nn.Module, input_ids: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None:
    """Labels a head computes its own loss from, or None when the class is not a known kind of head."""
    if "labels" not in _forward_params(model):
        return None
    name = type(model).__name__
    num_labels = int(getattr(model.config, "num_labels", 2) or 2)
    if name.endswith(_SAME_AS_INPUT) and input_ids is not None:
        return input_ids.clone()
    if name.endswith(_PER_SEQUENCE):
        if num_labels == 1:  # regression head: MSE on float targets
            return torch.randn(batch)
        return torch.randint(0, num_labels, (batch,))
    if name.endswith(_PER_TOKEN):
        return torch.randint(0, num_labels, (batch, seq))
    return None


def _forward_params(model: nn.Module, *, ordered: bool = False) -> list[str] | set[str]:
    """The names ``forward`` takes: a set, or with ``ordered`` a list in signature order."""
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        names = []
    return names if ordered else set(names)


def hf_inputs(model: nn.Module, folder: str, shapes: list[str] | None, device: torch.device) -> ExampleInputs:
    """Keyword inputs made from the model's config; ``--shape B,T`` (text) or ``--shape B,C,H,W`` (vision)."""
    config = getattr(model, "config", None)
    if config is None:
        raise InputError(f"'{folder}' built a model without .config; pass --inputs module:fn")
    if shapes and len(shapes) > 1:
        raise UsageError(f"--shape: a Hugging Face folder takes one --shape (B,T for text, B,C,H,W for images), "
                         f"not {len(shapes)}; pass --inputs module:fn for other inputs")
    shape = parse_shape(shapes[0]) if shapes else None
    accepted = _forward_params(model)
    vocab, longest = _sizes(config)
    kwargs: dict[str, Any] = {}
    notes: list[str] = []
    if vocab is not None and "input_ids" in accepted:
        if shape is not None and len(shape) != 2:
            raise UsageError(f"--shape {shapes[0] if shapes else ''}: a text model's inputs are B,T "
                             f"(batch, sequence length), e.g. --shape 2,16")
        batch, seq = shape if shape is not None else (2, min(16, longest))
        kwargs["input_ids"] = torch.randint(0, vocab, (batch, seq))
        # on meta too: its values stay on the CPU beside the run (ExampleInputs.host), where transformers reads them
        if "attention_mask" in accepted:
            kwargs["attention_mask"] = torch.ones(batch, seq, dtype=torch.long)
        notes.append(f"inputs from config.json: input_ids {batch}×{seq} in [0, {vocab}) (vocab_size)"
                     + (", attention_mask of ones" if "attention_mask" in kwargs else ""))
    elif "pixel_values" in accepted and isinstance(getattr(config, "image_size", None), int):
        size, channels = int(config.image_size), int(getattr(config, "num_channels", 3))
        dims = shape if shape is not None else (2, channels, size, size)
        batch, seq = dims[0], 0
        kwargs["pixel_values"] = torch.randn(dims)
        notes.append(f"inputs from config.json: pixel_values {'×'.join(map(str, dims))}")
    else:
        takes = [n for n in _forward_params(model, ordered=True) if n not in ("self", "args", "kwargs")][:3]
        raise InputError(f"cannot make inputs for {type(model).__name__} from '{folder}/config.json': gradprobe makes "
                         f"input_ids (from vocab_size) or pixel_values (from image_size), and its forward takes "
                         f"{', '.join(takes) or 'neither'}{', ...' if takes else ''}; pass --inputs module:fn "
                         f"returning a dict of keyword inputs")
    labels = _labels(model, kwargs.get("input_ids"), batch, seq)
    if labels is not None:
        kwargs["labels"] = labels
        notes.append("labels passed, so the default loss is the model's own (outputs.loss); --loss sum adds up "
                     "every float output instead")
    host = ((), kwargs) if device.type == "meta" else None
    return ExampleInputs((), to_device(kwargs, device), f"{folder}/config.json", tuple(notes), host)

