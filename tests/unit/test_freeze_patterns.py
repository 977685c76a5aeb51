"""Property tests for freeze patterns: literal names, bare module names, globs, and tied parameters.

The oracle for a pattern without glob characters is the documented rule written out directly: it matches
a name equal to it or any name under it as a module (``backbone`` matches ``backbone.0.weight`` but never
``backbone2.weight``).  A tied parameter has several names; what is expected of it follows from all of them.
"""

from __future__ import annotations

import fnmatch

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradprobe.judges.freeze_spec import FreezeSpec, pattern_matches

parts = st.sampled_from(["layer", "layer1", "layer10", "0", "1", "12", "attn", "attn_out", "head", "emb", "wte",
                         "weight", "bias", "lm_head", "norm"])
names = st.lists(parts, min_size=1, max_size=5).map(".".join)
GLOB = set("*?[")


def literal_rule(pattern: str, name: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


@settings(max_examples=400, deadline=None)
@given(names, names)
def test_literal_patterns_follow_the_module_rule(pattern: str, name: str) -> None:
    assert pattern_matches(pattern, name) == literal_rule(pattern, name)


@given(names, st.data())
def test_every_module_prefix_matches_and_near_misses_do_not(name: str, data: st.DataObject) -> None:
    pieces = name.split(".")
    for k in range(1, len(pieces) + 1):
        assert pattern_matches(".".join(pieces[:k]), name)
    # a prefix that stops inside a part ("layer1" of "layer10.weight") is another module
    cut = data.draw(st.integers(1, len(name)))
    prefix = name[:cut]
    if cut < len(name) and name[cut] != "." and not prefix.endswith("."):
        assert not pattern_matches(prefix, name)


@given(names)
def test_globs(name: str) -> None:
    assert pattern_matches("*", name)
    assert pattern_matches("*." + name.rsplit(".", 1)[-1], name) or "." not in name
    assert pattern_matches(name.split(".")[0] + "*", name)
    assert pattern_matches(name.replace(".", "?"), name) == fnmatch.fnmatchcase(name, name.replace(".", "?"))


@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=1, max_size=3, unique=True), st.lists(names, max_size=3),
       st.lists(names, max_size=3), st.randoms())
def test_tied_parameter_classification(tied: list[str], frozen: list[str], trainable: list[str], rnd) -> None:
    """A parameter with several names is frozen if any name is matched by a frozen pattern, and so on."""
    assume(frozen or trainable)
    spec = FreezeSpec.make(frozen, trainable)
    hit_frozen = any(literal_rule(p, n) for p in frozen for n in tied)
    hit_trainable = any(literal_rule(p, n) for p in trainable for n in tied)
    result = spec.classify(tied)
    assert result.conflict == (hit_frozen and hit_trainable)
    expected = "frozen" if hit_frozen and not hit_trainable else (
        "trainable" if hit_trainable and not hit_frozen else "unlisted")
    assert result.expected == expected
    # every claim names a pattern of the spec and one of the parameter's names that it really matches
    for pattern, name in (*result.frozen_by, *result.trainable_by):
        assert name in tied and literal_rule(pattern, name)
    assert {p for p, _ in result.frozen_by} == {p for p in frozen if any(literal_rule(p, n) for n in tied)}
    # the order in which the names are listed does not matter
    shuffled = list(tied)
    rnd.shuffle(shuffled)
    again = spec.classify(shuffled)
    assert (again.expected, again.conflict) == (result.expected, result.conflict)


@given(st.lists(names, min_size=2, max_size=3, unique=True))
def test_freezing_one_name_of_a_tied_weight_and_training_another_is_a_conflict(tied: list[str]) -> None:
    assume(not any(literal_rule(a, b) for a in tied for b in tied if a != b))
    spec = FreezeSpec.make(frozen=[tied[0]], trainable=[tied[1]])
    assert spec.classify(tied).conflict
    assert spec.classify(tied[:1]).expected == "frozen"
    assert spec.classify(tied[1:2]).expected == "trainable"
