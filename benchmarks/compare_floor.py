"""compare-modes against its 36 plain forwards, and the floor of its design (issue 16).

The floor is what any compare-modes whose six tracked runs go through a Python ``TorchDispatchMode`` must pay:
the 30 timed plain forwards, 6 forwards under an *empty* dispatch mode (one per mode), and the extra plain
forwards the Comparison needs (the check from another RNG state: 1; the attribution when train and eval differ:
capture + check = 2; its single-module replays left out).  In one process, alternating, 1 torch thread, medians
of process CPU time (the machine this runs on may be shared).

    python benchmarks/compare_floor.py --models mlp,resnet_small,tiny_gpt,gpt2_2layer --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks.run import OVERHEAD_MODELS  # noqa: E402
from gradprobe.api import compare_modes  # noqa: E402

_GRAD_MODES = (torch.enable_grad, torch.no_grad, torch.inference_mode)


class _Empty(TorchDispatchMode):
    """Sees every op and does nothing else: the per-op cost no dispatch-mode tracker can go below."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def _variants(model: torch.nn.Module, x: Any, attributed: bool) -> dict[str, Callable[[], None]]:
    def plain() -> None:  # benchmarks/run.py's "36 plain forwards"
        for training in (True, False):
            model.train(training)
            for ctx in _GRAD_MODES:
                for _ in range(6):
                    with ctx():
                        model(x)
        model.train()

    def floor() -> None:
        for training in (True, False):
            model.train(training)
            for ctx in _GRAD_MODES:
                with ctx(), _Empty():
                    model(x)
                for _ in range(5):
                    with ctx():
                        model(x)
        model.train(False)
        for _ in range(1 + 2 * attributed):
            with torch.no_grad():
                model(x)
        model.train()

    return {"plain": plain, "floor": floor, "compare": lambda: compare_modes(model, x)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet_small,tiny_gpt,gpt2_2layer")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.models.split(","):
        factory, kwargs = OVERHEAD_MODELS[name]
        torch.manual_seed(0)
        model = factory(**kwargs)
        x = model.example_input_array
        attributed = compare_modes(model, x).comparison.attribution is not None
        variants = _variants(model, x, attributed)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for key, fn in variants.items():
                start = time.process_time()
                fn()
                times[key].append(time.process_time() - start)
        ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"{name}: 36 plain {ms['plain']:.1f} ms | floor {ms['floor'] / ms['plain']:.3f}x | compare-modes "
              f"{ms['compare'] / ms['plain']:.3f}x (attribution: {attributed}; CPU, medians of {args.repeats})",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
