"""One self-contained HTML page: inline CSS and a little inline JavaScript (sortable, filterable tables), no
network fetch of any kind, so a report opens offline and can be attached to a CI run as it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from gradprobe.facts.run import Finding

CSS = """
:root{--fg:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--card:#fff;--accent:#4f46e5;
--err:#dc2626;--warn:#d97706;--info:#0284c7;--ok:#16a34a}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
background:var(--bg)}
header{background:linear-gradient(120deg,#312e81,#4f46e5 60%,#0ea5e9);color:#fff;padding:22px 32px 18px}
header h1{margin:0;font-size:21px;font-weight:650;letter-spacing:.2px}
header h1 code{background:rgba(255,255,255,.16);padding:1px 7px;border-radius:6px;font-size:19px}
header p{margin:6px 0 0;opacity:.88}
nav{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.94);backdrop-filter:blur(6px);
border-bottom:1px solid var(--line);padding:8px 32px;display:flex;gap:18px;flex-wrap:wrap}
nav a{color:var(--muted);text-decoration:none;font-weight:550;font-size:13px}
nav a:hover{color:var(--accent)}
main{max-width:1280px;margin:0 auto;padding:20px 32px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 22px;margin:0 0 18px;
box-shadow:0 1px 2px rgba(15,23,42,.04)}
section h2{margin:0 0 12px;font-size:16px;font-weight:650}
section h3{margin:16px 0 8px;font-size:14px;font-weight:650}
.muted{color:var(--muted)}.small{font-size:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:10px;padding:10px 14px;background:#fcfdff}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:18px;font-weight:650;margin-top:2px}
.card .s{color:var(--muted);font-size:12px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:12px 0 0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;
border:1px solid transparent;white-space:nowrap}
.pill.error{background:#fee2e2;color:var(--err)}.pill.warning{background:#fef3c7;color:#b45309}
.pill.info{background:#e0f2fe;color:#0369a1}.pill.ok{background:#dcfce7;color:#15803d}
.pill.frozen{background:#f1f5f9;color:#475569;border-color:#cbd5e1}.pill.unused{background:#fee2e2;color:#b91c1c}
.pill.trainable{background:#dcfce7;color:#15803d}
.finding{border-left:4px solid var(--info);padding:8px 12px;margin:8px 0;background:#f8fafc;border-radius:0 8px 8px 0}
.finding.error{border-color:var(--err)}.finding.warning{border-color:var(--warn)}
.finding .head{display:flex;gap:10px;align-items:center;flex-wrap:wrap}.finding code{font-size:12.5px}
.finding .fix{color:var(--muted);margin-top:3px}
.tools{display:flex;gap:10px;align-items:center;margin:4px 0 8px}
.tools input{border:1px solid var(--line);border-radius:8px;padding:6px 10px;min-width:260px;font:inherit}
.tools .count{color:var(--muted);font-size:12px}
.scroll{overflow:auto;max-height:560px;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f1f5f9;position:sticky;top:0;font-weight:600;white-space:nowrap;z-index:1}
th.sortable{cursor:pointer;user-select:none}th.sortable:after{content:" ↕";color:#94a3b8;font-size:11px}
th.asc:after{content:" ↑";color:var(--accent)}th.desc:after{content:" ↓";color:var(--accent)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:hover td{background:#f8fafc}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.bar{display:flex;height:22px;border-radius:6px;overflow:hidden;border:1px solid var(--line);margin:6px 0 4px}
.bar span{display:block;height:100%}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:var(--muted)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:5px;vertical-align:-1px}
.peaks{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:18px}
.graph{overflow:auto;max-height:760px;border:1px solid var(--line);border-radius:8px;background:#fff;padding:8px}
.graph svg{max-width:none;width:100%;height:auto;display:block;margin:0 auto}
.zoom{display:flex;gap:6px;margin:0 0 8px}.zoom button{border:1px solid var(--line);background:#fff;
border-radius:6px;padding:2px 10px;cursor:pointer;font:inherit}
svg.timeline{width:100%;height:auto;display:block}
svg.timeline .grid{stroke:#e2e8f0;stroke-width:1}svg.timeline .axis{fill:#64748b;font-size:11px}
svg.timeline .axisline{stroke:#94a3b8}svg.timeline .phase{fill:#475569;font-size:12px;font-weight:600}
svg.timeline .area.forward{fill:rgba(79,70,229,.28);stroke:#4f46e5;stroke-width:1.2}
svg.timeline .area.backward{fill:rgba(14,165,233,.26);stroke:#0284c7;stroke-width:1.2}
svg.timeline .hit{fill:transparent}svg.timeline .hit:hover{fill:rgba(15,23,42,.08)}
svg.timeline .boundary{stroke:#0f172a;stroke-dasharray:4 3}
svg.timeline .peak circle{fill:#dc2626;stroke:#fff;stroke-width:1.5}
svg.timeline .peak text{fill:#b91c1c;font-size:12px;font-weight:650}
.modes th:first-child,.modes td:first-child{position:sticky;left:0;background:#fff;z-index:2}
.modes th:first-child{background:#f1f5f9;z-index:3}
.modes td.diff{background:#fff7ed}
.verdict li{margin:4px 0}
.multiples{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:14px}
.multiple{border:1px solid var(--line);border-radius:10px;padding:6px 10px}.multiple h3{margin:4px 0 2px}
.gradflow{width:100%;height:auto;display:block}.gradflow .axis{fill:#64748b;font-size:11px}
.gradflow .grid{stroke:#e2e8f0}.gradflow .head{fill:#0f172a;font-size:12.5px;font-weight:650}
.gradflow .axis.nan{fill:#b91c1c;font-weight:650}
.gradflow .name{fill:#0f172a;font:12px ui-monospace,Menlo,Consolas,monospace}
.gradflow .act{fill:#0ea5e9}.gradflow .par{fill:#c026d3}.gradflow .bad{fill:#dc2626}
.gradflow .mark{fill:#b45309;font-size:11.5px}.gradflow .mark.nan{fill:#b91c1c;font-weight:650}
.gradflow .hit{fill:transparent}.gradflow .hit:hover{fill:rgba(15,23,42,.06)}
td.bad{color:var(--err);font-weight:650}
.callout{border:1px solid #fecaca;background:#fef2f2;border-radius:10px;padding:10px 14px;margin:8px 0}
footer{color:var(--muted);font-size:12px;text-align:center;padding:8px 0 24px}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.classList.add('sortable');
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){ h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      rows.sort(function(a, b){
        var x = a.cells[col], y = b.cells[col];
        var p = x.getAttribute('data-sort'), q = y.getAttribute('data-sort');
        var u = p !== null ? parseFloat(p) : x.textContent.trim();
        var v = q !== null ? parseFloat(q) : y.textContent.trim();
        var r = (typeof u === 'number' && typeof v === 'number') ? u - v
          : String(u).localeCompare(String(v), undefined, {numeric: true});
        return asc ? r : -r;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll('input[data-filter]').forEach(function(input){
  var table = document.getElementById(input.getAttribute('data-filter'));
  var count = input.parentNode.querySelector('.count');
  function apply(){
    var needle = input.value.trim().toLowerCase(), shown = 0, rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var hit = !needle || rows[i].textContent.toLowerCase().indexOf(needle) >= 0;
      rows[i].style.display = hit ? '' : 'none'; if (hit) shown++;
    }
    if (count) count.textContent = shown + ' of ' + rows.length + ' rows';
  }
  input.addEventListener('input', apply); apply();
});
document.querySelectorAll('.zoom').forEach(function(bar){
  var box = document.getElementById(bar.getAttribute('data-for')), svg = box.querySelector('svg');
  if (!svg) return;
  var scale = 1;
  function set(s){ scale = Math.max(0.2, Math.min(s, 12)); svg.style.width = (100 * scale) + '%'; }
  bar.querySelector('[data-z=in]').addEventListener('click', function(){ set(scale * 1.25); });
  bar.querySelector('[data-z=out]').addEventListener('click', function(){ set(scale / 1.25); });
  bar.querySelector('[data-z=fit]').addEventListener('click', function(){ set(1); });
});
"""


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str  # HTML


@dataclass(frozen=True)
class Cell:
    text: str  # HTML-escaped by the table unless ``html``
    sort: float | None = None
    cls: str = ""
    html: bool = False


def cell(value: object, sort: float | None = None, cls: str = "", html: bool = False) -> Cell:
    return Cell("" if value is None else str(value), sort, cls, html)


def table(table_id: str, header: Sequence[str | tuple[str, str]], rows: Sequence[Sequence[Cell]],
          *, filter_: bool = True, sortable: bool = True, placeholder: str = "filter rows…",
          extra_class: str = "") -> str:
    """A table; ``header`` items are a title or (title, css class); with a filter box and sortable columns."""
    table_id = f"t-{table_id}"  # never the id of a section
    heads = []
    for h in header:
        title, cls = (h, "") if isinstance(h, str) else h
        heads.append(f'<th class="{cls}">{escape(title)}</th>')
    body = []
    for row in rows:
        cells = []
        for c in row:
            attrs = f' data-sort="{c.sort}"' if c.sort is not None else ""
            attrs += f' class="{c.cls}"' if c.cls else ""
            cells.append(f"<td{attrs}>{c.text if c.html else escape(c.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    tools = (f'<div class="tools"><input type="search" placeholder="{escape(placeholder)}" data-filter="{table_id}">'
             f'<span class="count"></span></div>') if filter_ and len(rows) > 5 else ""
    classes = " ".join(x for x in ("sortable" if sortable else "", extra_class) if x)
    return (f'{tools}<div class="scroll"><table id="{table_id}" class="{classes}"><thead><tr>{"".join(heads)}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def findings_html(findings: Sequence[Finding], empty: str = "No findings.") -> str:
    if not findings:
        return f'<p><span class="pill ok">clean</span> {escape(empty)}</p>'
    out = []
    for f in findings:
        subject = f" <code>{escape(f.subject)}</code>" if f.subject else ""
        fix = f'<div class="fix">fix: {escape(f.hint)}</div>' if f.hint else ""
        out.append(f'<div class="finding {escape(f.severity)}"><div class="head"><span class="pill '
                   f'{escape(f.severity)}">{escape(f.severity)}</span><code>{escape(f.code)}</code>{subject}</div>'
                   f'<div>{escape(f.message)}</div>{fix}</div>')
    return "".join(out)


def cards(items: Sequence[tuple[str, str, str]]) -> str:
    """Key figures as cards: (label, value, small print)."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
        f'<div class="s">{escape(s)}</div></div>' for k, v, s in items) + "</div>"


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in pairs) + "</dl>"


def zoomable(box_id: str, svg: str) -> str:
    return (f'<div class="zoom" data-for="{box_id}"><button type="button" data-z="out">−</button>'
            f'<button type="button" data-z="fit">fit</button><button type="button" data-z="in">+</button></div>'
            f'<div class="graph" id="{box_id}">{svg}</div>')


def page(title: str, subtitle: str, sections: Sequence[Section], footer: str = "") -> str:
    """The whole document."""
    nav = "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{title_html(title)}</h1><p>{escape(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main><footer>{escape(footer)}</footer><script>{JS}</script></body></html>\n")


def title_html(title: str) -> str:
    """``gradprobe inspect `target``` with the target as code."""
    if "`" in title:
        head, _, rest = title.partition("`")
        target, _, tail = rest.partition("`")
        return f"{escape(head)}<code>{escape(target)}</code>{escape(tail)}"
    return escape(title)
