"""What ``inspect --grads`` costs, next to ``torch.autograd.detect_anomaly``, and what each names.

``python benchmarks/grad_health.py`` (``--quick``: small models, 3 repeats).  Two sections:

* cost    in process, alternating runs (median of ``--repeats``; process CPU time, which load from other
          processes on a shared machine disturbs less than wall time; both in the JSON): plain forward+backward,
          the same under ``torch.autograd.detect_anomaly()``, gradprobe's run as ``inspect`` does it (every
          default tracker), the same with ``--grads``, and ``--no-memory --no-tensors`` with and without
          ``--grads`` (the gradient-health tracker's own share), each as a ratio to the plain forward+backward;
          ``inspect --grads`` also as a ratio to ``detect_anomaly`` (below 1: cheaper than detect_anomaly), in
          CPU time and in wall time
* names   planted faults (tests/fixtures/grad_models.py): what detect_anomaly reports (the exception's first
          line, or nothing) and what ``--grads`` reports (finding code, module, op or node)

Torch runs with ``--threads`` intra-op threads (default 1, as benchmarks/run.py).  Results go to
``--json`` (default benchmarks/results_grad_health.json, git-ignored) and, with ``--markdown PATH``, as tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

from gradprobe.api import probe  # noqa: E402
from tests.fixtures import grad_models, zoo  # noqa: E402

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "mlp": zoo.mlp, "tiny_gpt": zoo.tiny_gpt, "resnet50": zoo.resnet50, "gpt2_small": zoo.gpt2_small,
}
PLANTED: dict[str, Callable[[], torch.nn.Module]] = {
    "forward NaN (log of a negative)": grad_models.forward_log_nan,
    "backward NaN (sqrt at 0)": grad_models.backward_sqrt_nan,
    "fp16 overflow (autocast matmul)": grad_models.fp16_overflow,
}


def _clear(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def variants(model: torch.nn.Module, x: Any) -> dict[str, Callable[[], Any]]:
    def plain() -> None:
        model(x).float().sum().backward()
        _clear(model)

    def anomaly() -> None:
        with torch.autograd.detect_anomaly():
            model(x).float().sum().backward()
        _clear(model)

    return {
        "forward+backward": plain,
        "detect_anomaly": anomaly,
        "inspect": lambda: probe(model, x),
        "inspect --grads": lambda: probe(model, x, grads=True),
        "--grads --no-memory --no-tensors": lambda: probe(model, x, grads=True, memory=False, tensors=False),
        "--no-memory --no-tensors": lambda: probe(model, x, memory=False, tensors=False),
    }


def bench_cost(names: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = MODELS[name]()
        runs = variants(model, model.example_input_array)
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for key, fn in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                cpu[key].append(time.process_time() - start_cpu)
                times[key].append(time.perf_counter() - start)
        base = statistics.median(cpu["forward+backward"])
        base_wall = statistics.median(times["forward+backward"])
        row: dict[str, Any] = {"model": name, "params": sum(p.numel() for p in model.parameters())}
        for key in runs:
            row[f"{key} ms"] = round(statistics.median(cpu[key]) * 1000, 1)
            row[f"{key} wall ms"] = round(statistics.median(times[key]) * 1000, 1)
            row[f"{key} ratio"] = round(statistics.median(cpu[key]) / base, 3)
            row[f"{key} wall ratio"] = round(statistics.median(times[key]) / base_wall, 3)
        grads, anomaly = "inspect --grads", "detect_anomaly"
        row["--grads vs detect_anomaly"] = round(statistics.median(cpu[grads]) / statistics.median(cpu[anomaly]), 3)
        row["--grads vs detect_anomaly wall"] = round(statistics.median(times[grads])
                                                      / statistics.median(times[anomaly]), 3)
        rows.append(row)
        print(f"  {name} (CPU time): " + ", ".join(f"{k} {row[f'{k} ratio']}x" for k in runs), flush=True)
        print(f"  {name}: inspect --grads {row[f'{grads} ratio']}x forward+backward "
              f"(wall {row[f'{grads} wall ratio']}x), {row['--grads vs detect_anomaly']}x detect_anomaly "
              f"(wall {row['--grads vs detect_anomaly wall']}x)", flush=True)
    return rows


def what_anomaly_names(model: torch.nn.Module) -> str:
    x = model.example_input_array
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autograd.detect_anomaly():
                model(x).float().sum().backward()
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0]
    finally:
        _clear(model)
    return "nothing (no exception: the backward produced no NaN)"


def what_grads_names(model: torch.nn.Module) -> str:
    report = probe(model, grads=True)
    found = [f for f in report.findings if f.code in ("nonfinite-forward", "nonfinite-backward")]
    if not found:
        return "nothing"
    f = found[0]
    gh = report.facts.grad_health
    origin = gh.forward_origin if gh is not None else None
    op = f", op {origin.op}" if origin is not None and origin.op else ""
    node = f", node {gh.backward_nodes[0].kind}" if gh is not None and gh.backward_nodes else ""
    return f"{f.code}: module '{f.subject}'{op}{node}"


def bench_names() -> list[dict[str, str]]:
    rows = []
    for title, factory in PLANTED.items():
        torch.manual_seed(0)
        model = factory()
        rows.append({"fault": title, "detect_anomaly": what_anomaly_names(model),
                     "inspect --grads": what_grads_names(model)})
        print(f"  {title}: {rows[-1]}", flush=True)
    return rows


def markdown(cost: list[dict[str, Any]], names: list[dict[str, str]], header: str) -> str:
    keys = ["forward+backward", "detect_anomaly", "inspect", "inspect --grads", "--no-memory --no-tensors",
            "--grads --no-memory --no-tensors"]
    out = [header, "", "| model | " + " | ".join(keys) + " | `--grads` / `detect_anomaly` |",
           "|---|" + "---:|" * (len(keys) + 1)]
    for row in cost:
        cells = [f"{row[f'{k} ms']} ms ({row[f'{k} ratio']}x)" for k in keys]
        cells.append(f"{row['--grads vs detect_anomaly']}x")
        out.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    out += ["", "| planted fault | detect_anomaly reports | inspect --grads reports |", "|---|---|---|"]
    out += [f"| {r['fault']} | {r['detect_anomaly'].replace('|', '/')} | {r['inspect --grads']} |" for r in names]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=None, help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results_grad_health.json")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else (["mlp", "tiny_gpt"] if args.quick else ["resnet50",
                                                                                                  "gpt2_small"])
    repeats = args.repeats or (3 if args.quick else 7)
    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, {args.threads} thread(s), medians of {repeats} alternating runs.")
    print(header)
    cost = bench_cost(names, repeats)
    named = bench_names()
    args.json.write_text(json.dumps({"header": header, "cost": cost, "names": named}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(cost, named, header))
    print(markdown(cost, named, header))


if __name__ == "__main__":
    main()
