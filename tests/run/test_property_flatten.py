"""Property tests: every tensor in any nested output is found once, in order, under a path that leads back to it.

Structures are random trees of tuples, lists, dicts (any keys), namedtuples, dataclasses and Hugging Face
style ``ModelOutput`` mappings, with tensors and non-tensor leaves (None, numbers, strings).  Two
independent oracles: a recursive reference walk written from the documented path rules, and a parser
that follows a path string back through the structure.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradprobe.run.flatten import flatten_tensors


class Pair(NamedTuple):
    first: Any
    second: Any


@dataclasses.dataclass
class Box:
    value: Any
    extra: Any = None


class ModelOutput(OrderedDict):
    """Stands in for transformers' ModelOutput (recognised by class name): attribute-style paths."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


tensors = st.builds(lambda n, k: torch.full((n,), float(k)), st.integers(0, 3), st.integers(-5, 5))
plain_leaves = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3),
                         st.booleans())
keys = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True), st.text(max_size=4), st.integers(-2, 9))
identifier_keys = st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.builds(Pair, children, children),
        st.builds(Box, children, children),
        st.dictionaries(identifier_keys, children, max_size=4).map(ModelOutput),
    )


structures = st.recursive(st.one_of(tensors, plain_leaves), containers, max_leaves=25)


def reference(value: Any, path: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The documented path rules, written recursively and independently of gradprobe."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, Pair):
        for name in value._fields:
            out += reference(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            out += reference(item, f"{path}[{i}]")
    elif isinstance(value, ModelOutput):
        for k, item in value.items():
            out += reference(item, f"{path}.{k}" if isinstance(k, str) and k.isidentifier() else f"{path}[{k!r}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            out += reference(item, f"{path}[{k!r}]")
    elif isinstance(value, Box):
        out += reference(value.value, f"{path}.value") + reference(value.extra, f"{path}.extra")
    return out


def follow(root: Any, path: str) -> Any:
    """Walk ``path`` (``output.a[0]['k']``) through ``root``; brackets hold Python literals."""
    assert path.startswith("output")
    rest, value = path[len("output"):], root
    while rest:
        if rest[0] == ".":
            end = len(rest)
            for sep in ".[":
                i = rest.find(sep, 1)
                if i != -1:
                    end = min(end, i)
            name, rest = rest[1:end], rest[end:]
            value = value[name] if isinstance(value, Mapping) else getattr(value, name)
        else:
            assert rest[0] == "["
            for end in range(2, len(rest) + 1):  # the shortest bracket text that is a whole literal
                if rest[end - 1] != "]":
                    continue
                try:
                    key = ast.literal_eval(rest[1:end - 1])
                except (ValueError, SyntaxError):
                    continue
                break
            else:
                raise AssertionError(f"unparsable path {path!r}")
            rest = rest[end:]
            value = value[key]
    return value


@settings(max_examples=300, deadline=None)
@given(structures)
def test_flatten_matches_reference_and_paths_lead_back(value: Any) -> None:
    found = flatten_tensors(value)
    expected = reference(value)
    assert [p for p, _ in found] == [p for p, _ in expected]
    assert all(a is b for (_, a), (_, b) in zip(found, expected, strict=True))
    paths = [p for p, _ in found]
    assert len(set(paths)) == len(paths)
    for path, tensor in found:
        assert follow(value, path) is tensor


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.sampled_from(["list", "tuple", "dict", "box"]))
def test_deep_chains_are_walked(depth: int, kind: str) -> None:
    leaf = torch.ones(1)
    value: Any = leaf
    for _ in range(depth):
        value = {"k": value} if kind == "dict" else Box(value) if kind == "box" else (
            [value] if kind == "list" else (value,))
    found = flatten_tensors(value)
    assert len(found) == 1 and found[0][1] is leaf
    assert follow(value, found[0][0]) is leaf


def test_cycles_terminate() -> None:
    a: list[Any] = [torch.ones(1)]
    a.append(a)
    d: dict[str, Any] = {"t": torch.zeros(1)}
    d["self"] = d
    assert [p for p, _ in flatten_tensors(a)] == ["output[0]"]
    assert [p for p, _ in flatten_tensors(d)] == ["output['t']"]


@given(st.lists(tensors, min_size=1, max_size=5))
def test_the_same_tensor_in_two_places_is_reported_at_both(items: list[torch.Tensor]) -> None:
    value = (items, {"again": items[0]})
    paths = [p for p, t in flatten_tensors(value) if t is items[0]]
    assert paths == ["output[0][0]", "output[1]['again']"]
