"""The state every compare-modes run starts from, put back cheaply before each run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradprobe.run.state import restore_tensor, seed_generators, table_get


def set_training(mod: nn.Module, flag: bool) -> None:
    """One module's own ``training`` flag, through the module's own setter where it has one.

    A scripted module keeps its flag in the compiled object: ``object.__setattr__`` would only shadow it
    with a Python attribute the scripted code never reads (its BatchNorm would keep the old mode).
    Plain modules skip ``nn.Module.__setattr__``'s parameter/buffer bookkeeping, which costs per call.
    """
    if isinstance(mod, torch.jit.ScriptModule):
        mod.training = flag
    else:
        object.__setattr__(mod, "training", flag)


class StartState:
    """Buffers, parameter values and the RNG every run starts from, and the flags of train() and eval().

    Only tensors whose version counter moved (or that were replaced) are copied back, so a model whose
    forward changes nothing pays almost nothing per run.  Writes through ``.data`` bypass the version
    counter and are not seen; ``requires_grad``/``.grad``/flags are the job of :class:`ModelState`.
    """

    def __init__(self, model: nn.Module, device: torch.device, seed: int | None) -> None:
        self.device = device
        self.tensors: list[list[Any]] = []  # [container dict, key, tensor, copy, version, is a buffer]
        seen: set[int] = set()
        for mod in model.modules():
            for store, buffer in ((mod._parameters, False), (mod._buffers, True)):
                for key, t in store.items():
                    if t is None:
                        continue
                    copy = None
                    if id(t) not in seen and t.device.type != "meta":
                        copy = t.detach().clone()
                    seen.add(id(t))
                    self.tensors.append([store, key, t, copy, t._version, buffer])
        # model.train()/eval() may be overridden (a frozen backbone kept in eval): ask them once, then set
        # the flags they produce directly, which is cheaper than a recursive train() call per run
        model.train(True)
        self.train_flags = [(m, m.training) for m in model.modules()]
        model.train(False)
        self.eval_flags = [(m, m.training) for m in model.modules()]
        if seed is not None:
            seed_generators(seed, device)  # the CPU generator only on CPU (issue 16)
        self.cpu_rng = torch.random.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def flags(self, mode: str) -> list[tuple[nn.Module, bool]]:
        """Every module's flag as ``model.train()`` (mode "train") or ``model.eval()`` sets it."""
        return self.train_flags if mode == "train" else self.eval_flags

    def set_mode(self, mode: str) -> None:
        """The training flags ``model.train()`` (mode "train") or ``model.eval()`` set."""
        for mod, flag in self.flags(mode):
            set_training(mod, flag)

    def reset(self, buffers: bool = False) -> None:
        """Back to the starting values and RNG state, before every run.

        ``buffers``: every buffer copied back whatever its version: BatchNorm's kernel updates its running
        statistics without bumping their version counter (torch 2.13 CPU), so after a train-mode run only a
        full copy puts them back.  A train-mode forward does not read them; a tracked run's buffer facts do.
        """
        moved = []
        for entry in self.tensors:
            store, key, t, copy, version = entry[:5]
            if table_get(store, key) is not t:  # TorchScript's parameter/buffer tables have no .get
                store[key] = t
            if copy is not None and (t._version != version or (buffers and entry[5])):
                moved.append(entry)
        if moved:
            _copy_back(moved)
        torch.random.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


def _copy_back(moved: list[list[Any]]) -> None:
    """Copy each moved tensor's starting value back and note its new version: one fused copy for the usual
    case (a train-mode row moves every BatchNorm statistic, ~8 µs of Python each one by one), else one by one."""
    fused = [e for e in moved if not e[2].is_inference()] if len(moved) > 1 else []
    try:
        if len(fused) > 1:
            with torch.no_grad():
                torch._foreach_copy_([e[2] for e in fused], [e[3] for e in fused])
        else:
            fused = []
    except (RuntimeError, NotImplementedError, TypeError):  # a layout or subclass the fused copy refuses
        fused = []
    done = {id(e) for e in fused}
    for entry in moved:
        if id(entry) not in done:
            restore_tensor(entry[2], entry[3])
        entry[4] = entry[2]._version


def syncer(device: torch.device) -> Callable[[], None]:
    """Timing on an asynchronous device must wait for its queue."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None
