"""``--weights``: load a state dict (``.pt``/``.pth`` with ``weights_only=True``, or ``.safetensors``) non-strictly."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from gradprobe.errors import WeightsError, describe_exception
from gradprobe.load.model import LoadedModel


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
