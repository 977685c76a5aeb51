"""The state every compare-modes run starts from, put back cheaply before each run."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradprobe.run.state import fsdp2_modules, restore_tensor, seed_generators, table_get, version_of


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
        # [container dict, key, tensor, copy, version, is a buffer, is an inference tensor]
        self.tensors: list[list[Any]] = []
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
                    self.tensors.append([store, key, t, copy, version_of(t), buffer, t.is_inference()])
        # what reset() checks, laid out so that the checks run in C (map/all) rather than a Python loop per
        # tensor: every tensor's registration by table, then the versions of the tensors with a copy (issue 16)
        tables: dict[int, tuple[Any, list[str], list[torch.Tensor]]] = {}
        self._scripted: list[list[Any]] = []  # entries in TorchScript tables (no .get): checked one by one
        for entry in self.tensors:
            store = entry[0]
            if isinstance(store, dict):
                tables.setdefault(id(store), (store, [], []))[1].append(entry[1])
                tables[id(store)][2].append(entry[2])
            else:
                self._scripted.append(entry)
        self._tables = list(tables.values())
        self._fsdp2 = fsdp2_modules(model)  # resharded before the registrations are checked (a forward without
        # backward leaves FSDP2's root unit unsharded; putting the sharded parameters back behind its back breaks
        # its next forward)
        # an inference tensor has no version counter: it is copied back before every run (rare: a buffer or
        # parameter made under torch.inference_mode)
        self._always = [e for e in self.tensors if e[3] is not None and e[6]]
        self._copied = [e for e in self.tensors if e[3] is not None and not e[6]]
        self._copied_tensors = [e[2] for e in self._copied]
        self._versions = [e[4] for e in self._copied]
        self._buffers = [e for e in self._copied if e[5]]
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
        for mod in self._fsdp2:
            mod.reshard()  # type: ignore[operator]
        for store, keys, tensors in self._tables:
            if not all(map(operator.is_, map(store.get, keys), tensors)):
                for key, t in zip(keys, tensors, strict=True):
                    if store.get(key) is not t:
                        store[key] = t
        for store, key, t, *_ in self._scripted:
            if table_get(store, key) is not t:  # TorchScript's parameter/buffer tables have no .get
                store[key] = t
        versions = list(map(_VERSION, self._copied_tensors))
        if buffers:
            moved = self._buffers + [e for e, v in zip(self._copied, versions, strict=True) if v != e[4] and not e[5]]
        elif versions != self._versions:
            moved = [e for e, v in zip(self._copied, versions, strict=True) if v != e[4]]
        else:
            moved = []
        if self._always:
            moved = moved + self._always
        if moved:
            _copy_back(moved)
            self._versions = [e[4] for e in self._copied]
        torch.random.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


_VERSION = operator.attrgetter("_version")


def _copy_back(moved: list[list[Any]]) -> None:
    """Copy each moved tensor's starting value back and note its new version: one fused copy for the usual
    case (a train-mode row moves every BatchNorm statistic, ~8 µs of Python each one by one), else one by one."""
    fused = [e for e in moved if not e[6]] if len(moved) > 1 else []
    try:
        if len(fused) > 1:
            with torch.no_grad():
                torch._foreach_copy_([e[2] for e in fused], [e[3] for e in fused])
        else:
            fused = []
    except (RuntimeError, NotImplementedError, TypeError):  # a layout or subclass the fused copy refuses
        fused = []
    for entry in (moved if not fused else [e for e in moved if e[6]]):
        restore_tensor(entry[2], entry[3])
    for entry in moved:
        entry[4] = version_of(entry[2])


def syncer(device: torch.device) -> Callable[[], None]:
    """Timing on an asynchronous device must wait for its queue."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None
