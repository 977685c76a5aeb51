"""``inspect --format html`` under real torchrun: rank 0 writes one page holding every rank's facts, checked against
plain PyTorch run on each rank in the same job."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from dist_helpers import close

from gradprobe.units import human_bytes

pytestmark = pytest.mark.slow


class Tables(HTMLParser):
    """The text of every cell of every ``<table id=...>``, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data + " ")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _norms(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"‖([0-9.eE+-]+)‖", text)]


def test_fsdp2_html_page_holds_every_ranks_facts(reference, tmp_path):
    page = tmp_path / "report.html"
    r = reference(["dist_models:fsdp2_tower"],
                  ["inspect", "dist_models:fsdp2_tower", "--format", "html", "-o", str(page)])
    assert r.code == 0, r.err
    assert r.out == ""  # the page went to the file; rank 1 wrote nothing anywhere
    text = page.read_text(encoding="utf-8")
    assert text.count("<!doctype html>") == 1 and "Traceback" not in r.err
    tables = Tables()
    tables.feed(text)
    t = tables.tables

    # memory by rank: one row per rank; the parameters each rank holds are its own shards (plain PyTorch's .to_local())
    memory = {row[0]: row for row in t["t-rank-memory"][1:]}
    assert set(memory) == {"0", "1", "min", "max"}
    held = {ref["rank"]: 4 * sum(_numel(p["local_shape"]) for p in ref["params"].values()) for ref in r.ranks}
    assert held[0] != held[1]  # out.weight and out.bias split 2/1 rows: the ranks differ
    for rank, nbytes in held.items():
        assert memory[str(rank)][4] == human_bytes(nbytes)
    assert memory["min"][4] == human_bytes(min(held.values()))
    assert memory["max"][4] == human_bytes(max(held.values()))

    # parameters by rank: each rank's shard and the gradient it keeps, as plain PyTorch has them
    header, *rows = t["t-rank-params"]
    assert header == ["name", "global shape", "requires_grad", "rank 0", "rank 1"]
    params = {row[0]: row for row in rows}
    assert set(params) == set(r.ranks[0]["params"])
    for ref in r.ranks:
        for name, expected in ref["params"].items():
            cell = params[name][3 + ref["rank"]]
            assert params[name][1] == "×".join(map(str, expected["global_shape"]))
            assert cell.startswith(expected["grad"]), (name, cell)
            assert f"Shard(dim=0) {'×'.join(map(str, expected['local_shape']))}" in cell, (name, cell)
            if expected["grad"] == "nonzero":
                assert close(_norms(cell)[0], expected["grad_norm"], rel=1e-3), (name, cell)

    # the FSDP units, and the cross-rank/wrapper findings with the others
    units = {row[0]: row for row in t["t-units"][1:]}
    for name, unit in r.ranks[0]["fsdp2"].items():
        assert units[name or "(root)"][3] == human_bytes(unit["all_gather_bytes"]), name
    assert units["blocks.0"][2] == "mixed" and units["(root)"][2] == "no"
    assert text.count('<code>fsdp-mixed-unit</code>') == 2
    assert 'id="distributed"' in text and "world size" in text


def test_freeze_check_html_names_the_violating_rank(nproc, tmp_path):
    page = tmp_path / "freeze.html"
    r = nproc("freeze-check", "dist_models:rank_frozen", "--frozen", "stem", "--trainable", "head",
              "--trainable", "bn", "--format", "html", "-o", str(page))
    assert r.code == 1, r.err  # rank 0 trains stem (rank 1 freezes it): the freeze is broken on rank 0 only
    text = page.read_text(encoding="utf-8")
    assert text.count("<!doctype html>") == 1 and r.out == ""
    violations = text[text.index('<section id="violations">'):]
    violations = violations[:violations.index("</section>")]
    assert "stem.weight" in violations and "stem.bias" in violations
    assert "(on rank 0)" in violations and "rank 1" not in violations
    assert "every rank checked its own freeze" in text
    assert '<svg class="timeline"' in text  # rank 0's run recorded its memory event log for the page


def test_compare_modes_html_through_ddp(nproc, tmp_path):
    page = tmp_path / "compare.html"
    r = nproc("compare-modes", "dist_models:ddp_net", "--repeat", "1", "--format", "html", "-o", str(page))
    assert r.code == 0, r.err
    text = page.read_text(encoding="utf-8")
    assert text.count("<!doctype html>") == 1 and r.out == ""
    assert "distributed: 2 rank(s), wrapper: ddp" in text
    assert "module.bn" not in text and "module.stem" not in text  # the user's names, not DDP's
    assert '<svg class="timeline"' in text  # the event log was recorded for the page
