"""gradprobe's cost and accuracy, measured: ``python benchmarks/run.py`` (``--quick`` for a short run).

One process drives everything.  Timed variants of the same model run *alternately* (plain forward,
plain forward+backward, inspect's run, ...) so that load from other processes on a shared machine hits
all of them alike, and each figure is the median of ``--repeats`` runs (at least 5 unless ``--quick``).
Sections:

* overhead   in-process: plain forward, plain forward+backward, ``gradprobe.api.probe`` (every tracker on),
             ``gradprobe.api.compare_modes`` and ``torchinfo.summary`` when available (torchinfo's forward
             runs under no_grad, so it is compared with the plain forward)
* process    the whole ``gradprobe inspect`` command against a plain script doing the same imports,
             build, forward and backward (fresh processes)
* meta       the meta-device estimate against the CPU measurement (forward peak, saved, backward peak)
* large      billion-parameter models on meta through the real CLI: wall time and peak RSS per process
* guard      inspect's run with the parameter write guard (copy-on-first-write) on and off, on the plain model
             and on the same model with a forward pre-hook that writes into every parameter (the worst case)
* graph      the grad_fn walk over a 1,000,000-node graph: time, memory growth and the size of the fact
* help       ``gradprobe --help`` (must not import torch)
* breakdown  (``--breakdown``) where inspect's extra time goes, per model: each component of the run timed in
             the same process (gradprobe.run.timing), the tracked forward/backward against plain ones

Prints a table per section and writes everything as JSON (``--json``, default benchmarks/results.json,
which git ignores: results are machine-specific; the README quotes one real run).  Torch runs with
``--threads`` intra-op threads (default 1: on a shared machine a second thread makes timings erratic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from gradprobe.api import probe  # noqa: E402
from tests.fixtures import zoo  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 150)  # piped output: wide enough for every column
MARKDOWN: list[str] = []  # the same tables as Markdown, for --markdown
MIB = 2**20

# name -> (factory, kwargs): the models of the overhead section (repo-written, see tests/fixtures/zoo.py)
OVERHEAD_MODELS: dict[str, tuple[Callable[..., torch.nn.Module], dict[str, int]]] = {
    "mlp": (zoo.mlp, {}),
    "resnet_small": (zoo.resnet_small, {}),
    "tiny_gpt": (zoo.tiny_gpt, {}),
    "resnet50": (zoo.resnet50, {}),  # batch 2, 128x128 images
    # the same network at ImageNet's 224x224: 3x the compute per op, the same number of ops (gradprobe's cost is per op)
    "resnet50_224": (zoo.resnet50, {"image": 224}),
    "gpt2_small": (zoo.gpt2_small, {}),  # batch 1, 128 tokens
    # 2-layer GPT-2 at d=128 with the full 50k vocabulary, 2x64 tokens: dominated by the logits
    "gpt2_2layer": (zoo.tiny_gpt, {"batch": 2, "seq": 64, "vocab_size": 50257, "n_layer": 2, "n_embd": 128}),
}
META_MODELS = {
    "mlp": (zoo.mlp, {}), "resnet_small": (zoo.resnet_small, {}), "resnet50": (zoo.resnet50, {"image": 64}),
    "tiny_gpt": (zoo.tiny_gpt, {}), "gpt2_small": (zoo.gpt2_small, {"seq": 64}), "tiny_llama": (zoo.tiny_llama, {}),
}
LARGE_TARGETS = ["tests.fixtures.zoo:llama_7b", "tests.fixtures.zoo:gpt2_xl", "tests.fixtures.zoo:hf_llama_7b"]


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def alternate(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant ``warmup`` times, then ``repeats`` rounds of one run each, in turn."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def round_ratios(probed: list[float], plain: list[float]) -> dict[str, float]:
    """The ratio of each round's two runs (run next to each other), as median, min and max: on a shared machine
    the spread says how far one ratio of medians can be trusted."""
    ratios = sorted(a / b for a, b in zip(probed, plain, strict=True))
    return {"median": round(statistics.median(ratios), 3), "min": round(ratios[0], 3), "max": round(ratios[-1], 3)}


def _spread(row: dict[str, Any], key: str) -> str:
    found = row.get(key)
    return "-" if not found else f"{found['median']:.2f}x ({found['min']:.2f}-{found['max']:.2f})"


# ------------------------------------------------------------------------------------------ overhead


def overhead_variants(model: torch.nn.Module, x: Any) -> dict[str, Callable[[], Any]]:
    """The timed variants for one model: plain runs, inspect's run, and the alternatives when installed."""

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model(x).float().sum().backward()
        for p in model.parameters():
            p.grad = None

    variants: dict[str, Callable[[], Any]] = {
        "forward": forward,
        "forward+backward": forward_backward,
        "inspect run": lambda: probe(model, x),
    }
    try:
        from gradprobe.api import compare_modes

        def modes_plain() -> None:
            """The 36 forwards compare-modes runs (6 modes x (1 measured + 5 timed)), without gradprobe."""
            for training in (True, False):
                model.train(training)
                for grad_ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
                    for _ in range(6):
                        with grad_ctx():
                            model(x)
            model.train()

        variants["36 plain forwards"] = modes_plain
        variants["compare-modes"] = lambda: compare_modes(model, x)
    except ImportError:
        pass
    try:
        import torchinfo

        variants["torchinfo.summary"] = lambda: torchinfo.summary(model, input_data=[x], verbose=0, device="cpu")
    except ImportError:
        pass
    return variants


def bench_overhead(names: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        factory, kwargs = OVERHEAD_MODELS[name]
        torch.manual_seed(0)
        model = factory(**kwargs)
        times = alternate(overhead_variants(model, model.example_input_array), repeats)
        row: dict[str, Any] = {"model": name, "params": sum(p.numel() for p in model.parameters())}
        row.update({f"{k}_ms": median_ms(v) for k, v in times.items()})
        fb = statistics.median(times["forward+backward"])
        fwd = statistics.median(times["forward"])
        row["inspect_ratio"] = round(statistics.median(times["inspect run"]) / fb, 3)
        row["inspect_round_ratios"] = round_ratios(times["inspect run"], times["forward+backward"])
        if "compare-modes" in times:
            row["compare_modes_ratio"] = round(
                statistics.median(times["compare-modes"]) / statistics.median(times["36 plain forwards"]), 3)
            row["compare_modes_round_ratios"] = round_ratios(times["compare-modes"], times["36 plain forwards"])
        if "torchinfo.summary" in times:
            row["torchinfo_ratio_vs_forward"] = round(statistics.median(times["torchinfo.summary"]) / fwd, 3)
        rows.append(row)
        console.print(f"  overhead {name}: inspect/plain = {row['inspect_ratio']}x", style="dim")
    return rows


# ----------------------------------------------------------------------------------------- breakdown

# component -> how to read it from the medians of the laps (ms); "plain" is the plain forward/backward
BREAKDOWN = [
    ("non-finite check of the outputs", lambda m: m["nonfinite"]),
    ("dispatch mode + hooks, forward", lambda m: m["forward"] - m["plain_forward"]),
    ("same, backward", lambda m: m["backward"] - m["plain_backward"]),
    ("gradient-state classification", lambda m: m["grad_states"]),
    ("setup, snapshot, API entry, judges", lambda m: m["outside"] + m["setup"]),
    ("graph walk + display tree", lambda m: m["graph"]),
    ("fact building", lambda m: m["facts"] - m["grad_states"] - m["nonfinite"]),
    # inspect's restore frees the run's gradients, as plain's ``p.grad = None`` does (0.5 GB on GPT-2 124M)
    ("restore + release (less plain's freeing of its gradients)", lambda m: m["restore"] - m["plain_release"]),
    ("loss (default sum; plain's .sum() is in its forward)", lambda m: m["loss"] - m["graph"]),
]


def _breakdown_laps(model: torch.nn.Module, x: Any, repeats: int) -> dict[str, float]:
    """Medians (ms) of inspect's components on one model, alternating with a plain forward and backward."""
    from gradprobe.run import timing

    laps: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        laps.setdefault(key, []).append(value)

    def plain() -> None:
        t0 = time.perf_counter()
        loss = model(x).float().sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        for p in model.parameters():
            p.grad = None
        add("plain_forward", t1 - t0)
        add("plain_backward", t2 - t1)
        add("plain_release", time.perf_counter() - t2)

    def inspected() -> None:
        with timing.recording() as got:
            t0 = time.perf_counter()
            probe(model, x)
            total = time.perf_counter() - t0
        add("total", total)
        engine = sum(got.get(k, 0.0) for k in ("setup", "forward", "loss", "backward", "facts", "restore"))
        add("outside", total - engine)  # API entry, judges: per run, so the noise of the rest cancels
        for key in ("setup", "forward", "loss", "graph", "backward", "grad_states", "nonfinite", "facts", "restore"):
            add(key, got.get(key, 0.0))

    alternate({"plain": plain, "inspect": inspected}, 1)  # warm-up, discarded
    laps.clear()
    alternate({"plain": plain, "inspect": inspected}, repeats, warmup=0)
    return {k: statistics.median(v) * 1000 for k, v in laps.items()}


def bench_breakdown(names: list[str], repeats: int) -> list[dict[str, Any]]:
    """Per model: where inspect's extra time over a plain forward+backward goes."""
    rows = []
    for name in names:
        factory, kwargs = OVERHEAD_MODELS[name]
        torch.manual_seed(0)
        model = factory(**kwargs)
        med = _breakdown_laps(model, model.example_input_array, repeats)
        plain_ms = med["plain_forward"] + med["plain_backward"] + med["plain_release"]
        extra = med["total"] - plain_ms
        row: dict[str, Any] = {"model": name, "plain_ms": round(plain_ms, 2), "inspect_ms": round(med["total"], 2),
                               "ratio": round(med["total"] / plain_ms, 3), "extra_ms": round(extra, 2)}
        row["components_ms"] = {label: round(read(med), 3) for label, read in BREAKDOWN}
        rows.append(row)
        console.print(f"  breakdown {name}: inspect/plain = {row['ratio']}x", style="dim")
    return rows


def show_breakdown(rows: list[dict[str, Any]]) -> None:
    """One table: a row per component, a column per model (ms and share of inspect's extra time)."""
    if not rows:
        return
    columns: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [("component", lambda r: r["component"])]
    table_rows: list[dict[str, Any]] = []
    for label, _ in BREAKDOWN:
        table_rows.append({"component": label, **{r["model"]: r["components_ms"][label] for r in rows}})
    table_rows.append({"component": "plain fwd+bwd ms / inspect ms / ratio",
                       **{r["model"]: f"{r['plain_ms']} / {r['inspect_ms']} / {r['ratio']:.2f}x" for r in rows}})
    extra = {r["model"]: r["extra_ms"] for r in rows}
    for r in rows:
        model = r["model"]

        def cell(row: dict[str, Any], m: str = model) -> str:
            value = row[m]
            if isinstance(value, str):
                return value
            return f"{value:.2f} ms ({100 * value / extra[m]:.0f}%)" if extra[m] > 0 else f"{value:.2f} ms"

        columns.append((model, cell))
    show("Where inspect's extra time goes (ms, % of inspect minus plain fwd+bwd; medians)", table_rows, columns)


# ------------------------------------------------------------------------------------------- process

PLAIN_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from tests.fixtures import zoo
    model = getattr(zoo, sys.argv[1])()
    model(model.example_input_array).float().sum().backward()
""")


def _child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "COLUMNS": "120",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _gradprobe() -> list[str]:
    script = Path(sys.executable).with_name("gradprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradprobe"]


def _run_process(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    return elapsed


def bench_process(names: list[str], repeats: int, threads: int) -> list[dict[str, Any]]:
    env = _child_env(threads)
    rows = []
    for name in names:
        variants = {
            "plain script": lambda n=name: _run_process([sys.executable, "-c", PLAIN_SCRIPT, n], env),
            "gradprobe inspect": lambda n=name: _run_process(
                [*_gradprobe(), "inspect", f"tests.fixtures.zoo:{n}"], env),
        }
        times = alternate(variants, repeats, warmup=1)
        plain, full = statistics.median(times["plain script"]), statistics.median(times["gradprobe inspect"])
        rows.append({"model": name, "plain_script_s": round(plain, 3), "gradprobe_inspect_s": round(full, 3),
                     "ratio": round(full / plain, 3)})
        console.print(f"  process {name}: {rows[-1]['ratio']}x", style="dim")
    return rows


# ---------------------------------------------------------------------------------------------- meta


def bench_meta(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, (factory, kwargs) in META_MODELS.items():
        torch.manual_seed(0)
        cpu_model = factory(**kwargs)
        with torch.device("meta"):
            meta_model = factory(**kwargs)
        times = alternate({"cpu": lambda m=cpu_model: probe(m), "meta": lambda m=meta_model: probe(m)},
                          max(1, repeats // 2))
        cpu, meta = probe(cpu_model).facts.memory, probe(meta_model).facts.memory
        row: dict[str, Any] = {"model": name, "cpu_run_ms": median_ms(times["cpu"]),
                               "meta_run_ms": median_ms(times["meta"])}
        for key in ("forward_peak_bytes", "saved_for_backward_bytes", "backward_peak_bytes"):
            measured, estimate = getattr(cpu, key), getattr(meta, key)
            row[f"cpu_{key}"] = measured
            row[f"meta_{key}"] = estimate
            row[f"{key}_error_pct"] = round(100 * (estimate - measured) / measured, 3) if measured else None
        rows.append(row)
    return rows


LARGE_SCRIPT = textwrap.dedent("""
    import resource, subprocess, sys, time
    start = time.perf_counter()
    proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    print(proc.returncode, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    sys.stderr.write(proc.stderr[-400:])
""")

PLAIN_META_SCRIPT = textwrap.dedent("""
    import sys, time
    start = time.perf_counter()
    import torch
    from tests.fixtures import zoo
    imported = time.perf_counter()
    with torch.device("meta"):
        model = getattr(zoo, sys.argv[1])()
    built = time.perf_counter()
    model(model.example_input_array).float().sum().backward()
    done = time.perf_counter()
    print(imported - start, built - imported, done - built)
""")


def bench_large(targets: list[str], repeats: int, threads: int) -> list[dict[str, Any]]:
    env = _child_env(threads)
    rows = []
    for target in targets:
        if "hf_" in target:
            try:
                import transformers  # noqa: F401
            except ImportError:
                continue
        walls, rss = [], []
        plain: list[list[float]] = []
        for _ in range(repeats):
            cmd = [sys.executable, "-c", LARGE_SCRIPT, *_gradprobe(), "inspect", target, "--device", "meta"]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            code, wall, peak = out.stdout.split()
            if code != "0":
                raise RuntimeError(f"{target} on meta failed: {out.stderr}")
            walls.append(float(wall))
            rss.append(int(peak))
            if "hf_" not in target:
                res = subprocess.run([sys.executable, "-c", PLAIN_META_SCRIPT, target.split(":")[1]],
                                     capture_output=True, text=True, env=env, check=True)
                plain.append([float(v) for v in res.stdout.split()])
        row: dict[str, Any] = {"target": target, "wall_s": round(statistics.median(walls), 2),
                               "max_wall_s": round(max(walls), 2), "peak_rss_mib": round(max(rss) / MIB)}
        if plain:
            row["plain_import_s"] = round(statistics.median(p[0] for p in plain), 2)
            row["plain_build_s"] = round(statistics.median(p[1] for p in plain), 2)
            row["plain_fwd_bwd_s"] = round(statistics.median(p[2] for p in plain), 2)
        # in-process breakdown of gradprobe's own run, once
        from gradprobe.api import load

        try:
            start = time.perf_counter()
            loaded, example = load(target, device="meta")
            built = time.perf_counter()
            report = probe(loaded.model, example)
            done = time.perf_counter()
            row.update({"load_s": round(built - start, 2), "probe_s": round(done - built, 2),
                        "forward_s": round(report.facts.forward_time_s or 0, 2),
                        "backward_s": round(report.facts.backward_time_s or 0, 2)})
        except Exception as exc:  # a missing optional package: the CLI figures above still stand
            row["breakdown_error"] = str(exc)
        rows.append(row)
        console.print(f"  large {target}: {row['wall_s']} s, {row['peak_rss_mib']} MiB", style="dim")
    return rows


# --------------------------------------------------------------------------------------------- guard


@contextlib.contextmanager
def _guard_off() -> Iterator[None]:
    """Runs without the parameter write guard (gradprobe.run.trackers.writes): for comparison only."""
    from gradprobe.run.trackers.writes import ParamWriteGuard

    saved = ParamWriteGuard.watching
    ParamWriteGuard.watching = property(lambda self: False)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        ParamWriteGuard.watching = saved  # type: ignore[method-assign]


def _write_every_parameter(module: torch.nn.Module, args: Any) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.0)


def _guard_times(model: torch.nn.Module, x: Any, repeats: int) -> dict[str, list[float]]:
    def off() -> None:
        with _guard_off():
            probe(model, x)

    return alternate({"on": lambda: probe(model, x), "off": off}, repeats)


def bench_guard(names: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        factory, kwargs = OVERHEAD_MODELS[name]
        torch.manual_seed(0)
        model = factory(**kwargs)
        times = _guard_times(model, model.example_input_array, repeats)
        handle = model.register_forward_pre_hook(_write_every_parameter)
        try:
            writes = _guard_times(model, model.example_input_array, repeats)
        finally:
            handle.remove()
        row = {"model": name, "on_ms": median_ms(times["on"]), "off_ms": median_ms(times["off"]),
               "writes_on_ms": median_ms(writes["on"]), "writes_off_ms": median_ms(writes["off"])}
        row["ratio"] = round(row["on_ms"] / row["off_ms"], 3)
        row["writes_ratio"] = round(row["writes_on_ms"] / row["writes_off_ms"], 3)
        rows.append(row)
        console.print(f"  guard {name}: {row['ratio']}x, writing every parameter {row['writes_ratio']}x", style="dim")
    return rows


# --------------------------------------------------------------------------------------------- graph

WALK_SCRIPT = textwrap.dedent("""
    import json, pickle, sys, time, tracemalloc, torch
    from gradprobe.run.trackers.graph import walk_graph
    from gradprobe.run.trackers.release import release_on_big_stack

    def chain(n):
        w = torch.ones(1, requires_grad=True)
        x = w
        for _ in range(n):
            x = x.view(1)
        return w, x.sum()

    w, loss = chain(int(sys.argv[1]))
    start = time.perf_counter()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})
    seconds = time.perf_counter() - start
    fact_bytes = len(pickle.dumps(fact))
    held = [w, loss]
    del w, loss
    release_on_big_stack(held)  # a walked million-deep graph would overflow the main thread's stack when freed
    w, loss = chain(100_000)  # memory on a smaller chain: tracemalloc slows the walk ~10x
    tracemalloc.start()
    walk_graph([loss.grad_fn], {id(w): "w"})
    peak = tracemalloc.get_traced_memory()[1]
    held = [w, loss]
    del w, loss
    release_on_big_stack(held)
    print(json.dumps({"nodes": fact.nodes, "seconds": seconds, "bytes_per_node": peak / 100_002,
                      "fact_bytes_per_node": fact_bytes / fact.nodes}))
""")


def bench_graph(repeats: int, nodes: int = 1_000_000) -> dict[str, Any]:
    env = _child_env(1)
    results = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", WALK_SCRIPT, str(nodes)], capture_output=True, text=True,
                             env=env, check=True)
        results.append(json.loads(out.stdout))
    per_node = max(r["bytes_per_node"] for r in results)
    return {"nodes": results[0]["nodes"], "walk_s": round(statistics.median(r["seconds"] for r in results), 3),
            "bytes_per_node": round(per_node), "peak_mib": round(per_node * results[0]["nodes"] / MIB, 1),
            "fact_bytes_per_node": round(results[0]["fact_bytes_per_node"], 1)}


def bench_help(repeats: int) -> dict[str, Any]:
    probe_script = "import sys; from gradprobe.cli.app import main; code = main(['--help']); " \
                   "assert 'torch' not in sys.modules, 'torch imported'"
    times = [_run_process([sys.executable, "-c", probe_script], _child_env(1)) for _ in range(repeats)]
    return {"help_s": round(statistics.median(times), 3), "imports_torch": False}


# ---------------------------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def show(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, Callable[[dict[str, Any]], Any]]]) -> None:
    """A compact table of ``rows``: each column is a header and how to read it from a row."""
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("model", "target") else "right")
    MARKDOWN.extend([f"**{title}**", "", "| " + " | ".join(h for h, _ in columns) + " |",
                     "|" + "|".join("---" if h in ("model", "target") else "---:" for h, _ in columns) + "|"])
    for row in rows:
        cells = []
        for _, read in columns:
            try:
                value = read(row)
            except (KeyError, TypeError, ZeroDivisionError):
                value = "-"
            cells.append("-" if value is None else str(value))
        table.add_row(*cells)
        MARKDOWN.append("| " + " | ".join(cells) + " |")
    MARKDOWN.append("")
    console.print(table)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:,.2f}"


def _pair(row: dict[str, Any], key: str) -> str:
    return f"{_mib(row[f'cpu_{key}'])} / {_mib(row[f'meta_{key}'])} ({row[f'{key}_error_pct']:+.2f}%)"


OVERHEAD_COLUMNS = [
    ("model", lambda r: r["model"]), ("params", lambda r: f"{r['params']:,}"),
    ("fwd ms", lambda r: r["forward_ms"]), ("fwd+bwd ms", lambda r: r["forward+backward_ms"]),
    ("inspect ms", lambda r: r["inspect run_ms"]), ("inspect / fwd+bwd", lambda r: f"{r['inspect_ratio']:.2f}x"),
    ("per round: median (min-max)", lambda r: _spread(r, "inspect_round_ratios")),
    ("compare-modes ms", lambda r: r.get("compare-modes_ms")),
    ("compare / its 36 plain fwds",
     lambda r: f"{r['compare_modes_ratio']:.2f}x" if "compare_modes_ratio" in r else "-"),
    ("per round: median (min-max) ", lambda r: _spread(r, "compare_modes_round_ratios")),
    ("torchinfo ms", lambda r: r.get("torchinfo.summary_ms")),
    ("torchinfo / fwd",
     lambda r: f"{r['torchinfo_ratio_vs_forward']:.2f}x" if "torchinfo_ratio_vs_forward" in r else "-"),
]
PROCESS_COLUMNS = [
    ("model", lambda r: r["model"]), ("plain script s", lambda r: r["plain_script_s"]),
    ("gradprobe inspect s", lambda r: r["gradprobe_inspect_s"]), ("ratio", lambda r: f"{r['ratio']:.2f}x"),
]
META_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("forward peak MiB cpu / meta", lambda r: _pair(r, "forward_peak_bytes")),
    ("saved MiB cpu / meta", lambda r: _pair(r, "saved_for_backward_bytes")),
    ("backward peak MiB cpu / meta", lambda r: _pair(r, "backward_peak_bytes")),
    ("run ms cpu / meta", lambda r: f"{r['cpu_run_ms']} / {r['meta_run_ms']}"),
]
GUARD_COLUMNS = [
    ("model", lambda r: r["model"]), ("inspect ms guard on / off", lambda r: f"{r['on_ms']} / {r['off_ms']}"),
    ("ratio", lambda r: f"{r['ratio']:.2f}x"),
    ("forward writing every parameter: on / off ms", lambda r: f"{r['writes_on_ms']} / {r['writes_off_ms']}"),
    ("ratio ", lambda r: f"{r['writes_ratio']:.2f}x"),
]
LARGE_COLUMNS = [
    ("target", lambda r: r["target"].split(":")[1]), ("process s", lambda r: r["wall_s"]),
    ("peak RSS MiB", lambda r: r["peak_rss_mib"]),
    ("plain torch: import / build / fwd+bwd s",
     lambda r: f"{r['plain_import_s']} / {r['plain_build_s']} / {r['plain_fwd_bwd_s']}"),
    ("gradprobe in-process: load / probe (fwd, bwd) s",
     lambda r: f"{r['load_s']} / {r['probe_s']} ({r['forward_s']}, {r['backward_s']})"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 3 repeats, skip the slow sections")
    parser.add_argument("--repeats", type=int, default=None, help="runs per variant (median; default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--only", default="overhead,process,meta,large,guard,graph,help",
                        help="comma-separated sections to run")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results.json"), help="where to write results")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each component of inspect's run per model (same as adding breakdown to --only)")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="also write the tables as Markdown")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)
    sections = set(args.only.split(","))
    if args.breakdown:
        sections.add("breakdown")
    results: dict[str, Any] = {"machine": machine(), "repeats": repeats, "threads": args.threads,
                               "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    small = ["mlp", "resnet_small", "tiny_gpt"]
    if "overhead" in sections:
        results["overhead"] = bench_overhead(small if args.quick else list(OVERHEAD_MODELS), repeats)
        show("In-process: plain runs vs inspect's run (medians)", results["overhead"], OVERHEAD_COLUMNS)
    if "breakdown" in sections:
        models = [*small, "gpt2_2layer"] if args.quick else list(OVERHEAD_MODELS)
        results["breakdown"] = bench_breakdown(models, max(repeats, 7))
        show_breakdown(results["breakdown"])
    if "process" in sections:
        results["process"] = bench_process(["mlp"] if args.quick else ["resnet50", "gpt2_small"], repeats,
                                           args.threads)
        show("Whole process: gradprobe inspect vs a plain script (medians)", results["process"], PROCESS_COLUMNS)
    if "meta" in sections:
        results["meta"] = bench_meta(repeats)
        show("Meta estimate vs CPU measurement", results["meta"], META_COLUMNS)
    if "large" in sections:
        results["large"] = bench_large(LARGE_TARGETS[:1] if args.quick else LARGE_TARGETS,
                                       1 if args.quick else repeats, args.threads)
        show("Billion-parameter models on meta (whole CLI process, medians)", results["large"], LARGE_COLUMNS)
    if "guard" in sections:
        results["guard"] = bench_guard(["mlp", "tiny_gpt"] if args.quick else ["mlp", "tiny_gpt", "resnet50"],
                                       repeats)
        show("Parameter write guard: inspect's run with it on and off (medians)", results["guard"], GUARD_COLUMNS)
    if "graph" in sections:
        results["graph"] = bench_graph(1 if args.quick else repeats, 100_000 if args.quick else 1_000_000)
        show("grad_fn walk", [results["graph"]], [("nodes", lambda r: f"{r['nodes']:,}"),
                                                  ("walk s", lambda r: r["walk_s"]),
                                                  ("Python heap per node (B)", lambda r: r["bytes_per_node"]),
                                                  ("peak MiB at this size", lambda r: r["peak_mib"]),
                                                  ("fact B/node", lambda r: r["fact_bytes_per_node"])])
    if "help" in sections:
        results["help"] = bench_help(repeats)
        show("gradprobe --help", [results["help"]], [("process s", lambda r: r["help_s"]),
                                                     ("imports torch", lambda r: r["imports_torch"])])
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    if args.markdown:
        m = results["machine"]
        head = (f"Measured {results['started']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
                f"torch {m['torch']}, {args.threads} torch thread(s), medians of {repeats} alternating runs.")
        Path(args.markdown).write_text(head + "\n\n" + "\n".join(MARKDOWN))
        console.print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
