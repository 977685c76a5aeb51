"""Rich tables and trees for ``inspect``: readable at 80 columns, summarised for huge models."""

from __future__ import annotations

import fnmatch

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from gradprobe.facts import Finding, GraphTree, InspectReport, RunFacts
from gradprobe.render.units import human_bytes, human_count, seconds, shape_text

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
GRAD_STYLE = {"none": "red", "zero": "yellow", "nonzero": "green", "present": "green"}


def _flag(value: bool) -> Text:
    return Text("yes", style="green") if value else Text("no", style="dim")


def summary_table(f: RunFacts) -> Table:
    trainable = [p for p in f.parameters if p.requires_grad]
    frozen = [p for p in f.parameters if not p.requires_grad]
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("target", f.target)
    t.add_row("torch / device", f"{f.torch_version} / {f.device}")
    t.add_row("mode", f"{f.mode} + {f.grad_mode}")
    t.add_row("parameters", f"{len(f.parameters)} tensors, {human_count(sum(p.numel for p in f.parameters))} values")
    t.add_row("  require grad", f"{len(trainable)} ({human_count(sum(p.numel for p in trainable))}, "
                                 f"{human_bytes(sum(p.nbytes for p in trainable))})")
    t.add_row("  frozen", f"{len(frozen)} ({human_count(sum(p.numel for p in frozen))}, "
                           f"{human_bytes(sum(p.nbytes for p in frozen))})")
    t.add_row("modules", f"{sum(m.training for m in f.modules)} in train mode, "
                         f"{sum(not m.training for m in f.modules)} in eval mode")
    for o in f.outputs[:4]:
        t.add_row(o.path, f"{shape_text(o.shape)} {o.dtype}  requires_grad={o.requires_grad}  "
                          f"grad_fn={o.grad_fn}  is_inference={o.is_inference}")
    if len(f.outputs) > 4:
        t.add_row("", f"(+{len(f.outputs) - 4} more outputs)")
    t.add_row("loss", "-" if f.loss is None else f"{f.loss:.6g}")
    t.add_row("backward", "ran" if f.backward else f"not run: {f.backward_skipped_reason}")
    if f.forward_time_s is not None:
        t.add_row("time", f"forward {seconds(f.forward_time_s)}, backward {seconds(f.backward_time_s)}")
    for note in f.notes:
        t.add_row("note", note)
    for skip in f.skipped:
        t.add_row("skipped", skip)
    return t


def _limit(rows: list, top: int | None) -> tuple[list, int]:
    if top is None or top <= 0 or len(rows) <= top:
        return rows, 0
    return rows[:top], len(rows) - top


def _match(name: str, pattern: str | None) -> bool:
    return pattern is None or fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def parameters_table(f: RunFacts, top: int | None, pattern: str | None) -> Table:
    rows = [p for p in f.parameters if any(_match(n, pattern) for n in p.names)]
    # show the interesting ones first when cutting: missing gradients, then by size
    if top and len(rows) > top:
        rows.sort(key=lambda p: (not (p.requires_grad and p.grad in ("none", "zero")), -p.numel))
    shown, hidden = _limit(rows, top)
    t = Table(title=f"Parameters ({len(f.parameters)})", title_justify="left", expand=False)
    t.add_column("name", overflow="fold")
    t.add_column("shape", overflow="fold")
    t.add_column("dtype")
    t.add_column("req. grad")
    t.add_column("grad")
    t.add_column("module mode")
    for p in shown:
        name = p.name + ("".join(f"\n= {a}" for a in p.aliases))
        grad = "-" if p.grad is None else p.grad
        if p.grad == "nonzero" and p.grad_norm is not None:
            grad = f"nonzero ‖{p.grad_norm:.3g}‖"
        t.add_row(name, shape_text(p.shape), p.dtype, _flag(p.requires_grad),
                  Text(grad, style=GRAD_STYLE.get(p.grad or "", "")), "train" if p.module_training else "eval")
    if hidden:
        t.caption = f"{hidden} more rows (--top to change, --format json for all)"
    return t


def buffers_table(f: RunFacts, top: int | None, pattern: str | None) -> Table:
    rows = [b for b in f.buffers if _match(b.name, pattern)]
    shown, hidden = _limit(rows, top)
    t = Table(title=f"Buffers ({len(f.buffers)})", title_justify="left")
    t.add_column("name", overflow="fold")
    t.add_column("shape")
    t.add_column("dtype")
    t.add_column("changed by forward")
    for b in shown:
        changed = Text("?", style="dim") if b.changed is None else (
            Text("yes", style="yellow") if b.changed else Text("no", style="dim"))
        t.add_row(b.name, shape_text(b.shape), b.dtype, changed)
    if hidden:
        t.caption = f"{hidden} more rows"
    return t


def tensors_table(f: RunFacts, top: int | None, pattern: str | None) -> Table:
    rows = [x for x in f.tensors if _match(x.module, pattern)]
    shown, hidden = _limit(rows, top)
    t = Table(title=f"Tensors ({len(f.tensors)} from module calls and outputs)", title_justify="left")
    t.add_column("module (call)", overflow="fold")
    t.add_column("path")
    t.add_column("shape", overflow="fold")
    t.add_column("req. grad")
    t.add_column("grad_fn", overflow="fold")
    t.add_column("leaf")
    t.add_column("infer.")
    for x in shown:
        module = (x.module or "(model)") + (f" #{x.call}" if x.call else "")
        t.add_row(module, x.path.removeprefix("output") or "-", f"{shape_text(x.shape)} {x.dtype}",
                  _flag(x.requires_grad), x.grad_fn or Text("None", style="dim"), _flag(x.is_leaf),
                  _flag(x.is_inference))
    if hidden:
        t.caption = f"{hidden} more rows (--top to change, --filter GLOB, --format json for all)"
    return t


def graph_tree(f: RunFacts) -> RenderableType | None:
    g = f.graph
    if g is None:
        return None
    title = f"grad_fn graph: {g.nodes} nodes, depth {g.depth}"
    if g.tree is None:
        return Text(title)
    root = Tree(Text(title, style="bold"))
    stack: list[tuple[Tree, GraphTree]] = [(root, g.tree)]
    while stack:
        parent, node = stack.pop()
        label = Text(node.label, style="magenta" if node.label.startswith("AccumulateGrad") else "")
        if node.repeat > 1:
            label.append(f" × {node.repeat}", style="bold")
        if node.shared:
            label.append("  (shared, shown above)", style="dim")
        if node.truncated:
            label.append(f"  (+{node.truncated} not shown)", style="dim")
        branch = parent.add(label)
        for child in reversed(node.children):
            stack.append((branch, child))
    return root


def memory_table(f: RunFacts, top: int | None) -> RenderableType | None:
    m = f.memory
    if m is None:
        return None
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("forward peak", human_bytes(m.forward_peak_bytes))
    t.add_row("backward peak", human_bytes(m.backward_peak_bytes))
    t.add_row("saved for backward", human_bytes(m.saved_for_backward_bytes))
    t.add_row("parameters", human_bytes(m.parameter_bytes))
    t.add_row("gradients", human_bytes(m.gradient_bytes))
    if m.cuda_max_allocated_bytes is not None:
        t.add_row("cuda max allocated", human_bytes(m.cuda_max_allocated_bytes))
    parts: list[RenderableType] = [Text("Memory", style="bold italic"), t, Text(m.method, style="dim")]
    saved = [x for x in m.by_module if x.saved_for_backward_bytes]
    if saved:
        shown, hidden = _limit(saved, top or 10)
        bt = Table(title="Saved for backward, by module call (innermost module)", title_justify="left")
        bt.add_column("module (call)", overflow="fold")
        bt.add_column("saved", justify="right")
        bt.add_column("output", justify="right")
        for x in shown:
            bt.add_row((x.module or "(model)") + (f" #{x.call}" if x.call else ""),
                       human_bytes(x.saved_for_backward_bytes), human_bytes(x.output_bytes))
        if hidden:
            bt.caption = f"{hidden} more module calls"
        parts.append(bt)
    return Group(*parts)


def findings_table(findings: tuple[Finding, ...] | list[Finding]) -> RenderableType:
    if not findings:
        return Text("No findings: autograd sees what a training run expects.", style="green")
    t = Table(title=f"Findings ({len(findings)})", title_justify="left", show_lines=True)
    t.add_column("severity")
    t.add_column("code")
    t.add_column("subject", overflow="fold")
    t.add_column("message", overflow="fold", ratio=1)
    for x in findings:
        msg = Text(x.message)
        if x.hint:
            msg.append(f"\nfix: {x.hint}", style="dim")
        t.add_row(Text(x.severity, style=SEVERITY_STYLE[x.severity]), x.code, x.subject or "-", msg)
    return t


def render_inspect(report: InspectReport, console: Console, *, top: int | None = 40,
                   pattern: str | None = None, sections: set[str] | None = None) -> None:
    """Print the whole inspect report: summary, tables, graph tree, memory, findings."""
    f = report.facts
    want = sections or {"summary", "parameters", "buffers", "tensors", "graph", "memory", "findings"}
    if "summary" in want:
        console.print(Panel(summary_table(f), title="gradprobe inspect", title_align="left", expand=False))
    if "parameters" in want and f.parameters:
        console.print(parameters_table(f, top, pattern))
    if "buffers" in want and f.buffers:
        console.print(buffers_table(f, top, pattern))
    if "tensors" in want and f.tensors:
        console.print(tensors_table(f, top, pattern))
    if "graph" in want:
        tree = graph_tree(f)
        if tree is not None:
            console.print(tree)
    if "memory" in want:
        mem = memory_table(f, top)
        if mem is not None:
            console.print(mem)
    if "findings" in want:
        console.print(findings_table(report.findings))
