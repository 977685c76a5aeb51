"""``grad-vanishing`` / ``grad-exploding``: the gradient's scale across the model's blocks."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from gradprobe.facts.grad_health import GradHealthFacts
from gradprobe.facts.run import Finding
from gradprobe.judges.grad_health.words import label, sig3


@dataclass(frozen=True)
class ScaleProfile:
    """The gradient's scale across the model's blocks (RMS per element, backward from the last block)."""

    blocks: tuple[int, ...]  # call indices, forward order
    start_rms: float  # at the input of the first block (or its output when its input got no gradient)
    end_rms: float  # at the output of the last block
    worst: int  # the block with the largest change in the direction of the total
    worst_gain: float  # its input RMS / output RMS
    # parameter-free calls whose input and output differ in size (pooling, upsampling): (call, gain). Their RMS
    # gain only spreads the same gradient over more or fewer elements (average pooling over k: 1/k per element),
    # which the weight gradients upstream sum back up; it is not counted as vanishing or exploding
    spreading: tuple[tuple[int, float], ...] = ()

    @property
    def ratio(self) -> float:
        """Input of the first block over output of the last, without the spreading calls' gains: < 1 vanishing,
        > 1 exploding."""
        spread = math.prod(g for _, g in self.spreading)
        return self.start_rms / self.end_rms / spread


def blocks(gh: GradHealthFacts) -> list[int]:
    """The model's blocks: among the direct child calls of the call with the most children that received a
    gradient, the span from the first to the last call of the most repeated type (a transformer's layers
    without the embeddings and head around them, a ResNet's stages, a Sequential's layers); all of them when
    no type repeats three times."""
    children: dict[int, list[int]] = {}
    for i, c in enumerate(gh.calls):
        if c.parent is not None and c.grad_out_rms is not None:
            children.setdefault(c.parent, []).append(i)
    if not children:
        return []
    parent = max(children, key=lambda p: (len(children[p]), -p))
    found = children[parent]
    counts: dict[str, int] = {}
    for i in found:
        counts[gh.calls[i].type] = counts.get(gh.calls[i].type, 0) + 1
    common = max(counts, key=lambda t: counts[t])  # ties: the type seen first (dicts keep insertion order)
    if counts[common] < 3:
        return found
    at = [k for k, i in enumerate(found) if gh.calls[i].type == common]
    end = at[-1]
    steps = {b - a for a, b in itertools.pairwise(at)}
    if len(steps) == 1:  # a periodic stack (Linear, Sigmoid, Linear, ...): the last period belongs to it
        period = steps.pop()
        types = [gh.calls[i].type for i in found]
        tail = types[end + 1:end + period]
        if len(tail) == period - 1 and tail == types[at[0] + 1:at[0] + period]:
            end += period - 1
    return found[at[0]:end + 1]


def scale_profile(gh: GradHealthFacts) -> ScaleProfile | None:
    found = blocks(gh)
    if len(found) < 3:
        return None
    gains: list[tuple[int, float]] = []
    spreading: list[tuple[int, float]] = []
    owners = {p.name.rpartition(".")[0] for p in gh.parameters}
    previous: float | None = None
    for i in found:
        c = gh.calls[i]
        into = c.grad_in_rms if c.grad_in_rms is not None else previous
        out = c.grad_out_rms
        if into is not None and out is not None and into > 0 and out > 0 and math.isfinite(into * out):
            spreads = (c.grad_in_rms is not None and c.grad_in_numel != c.grad_out_numel
                       and not any(o == c.module or o.startswith(c.module + ".") for o in owners))
            (spreading if spreads else gains).append((i, into / out))
        previous = out
    first, last = gh.calls[found[0]], gh.calls[found[-1]]
    start = first.grad_in_rms if first.grad_in_rms else first.grad_out_rms
    end = last.grad_out_rms
    if not start or not end or not gains or not math.isfinite(start) or not math.isfinite(end):
        return None
    falling = start / end / math.prod(g for _, g in spreading) < 1
    worst, gain = min(gains, key=lambda x: x[1]) if falling else max(gains, key=lambda x: x[1])
    return ScaleProfile(tuple(found), start, end, worst, gain, tuple(spreading))


def scale_findings(gh: GradHealthFacts) -> list[Finding]:
    profile = scale_profile(gh)
    if profile is None or gh.forward_origin is not None:
        return []
    factor = gh.thresholds.factor
    ratio = profile.ratio
    if 1 / factor <= ratio <= factor:
        return []
    first = gh.calls[profile.blocks[0]]
    worst = gh.calls[profile.worst]
    total_log = math.log10(ratio)
    share = math.log10(profile.worst_gain) / total_log if total_log else 0.0
    vanishing = ratio < 1
    where = (f"from {sig3(profile.end_rms)} at the output of {label(gh, profile.blocks[-1])} to "
             f"{sig3(profile.start_rms)} at the {'input' if first.grad_in_rms else 'output'} of "
             f"{label(gh, profile.blocks[0])}")
    if profile.spreading:
        where += ", not counting " + ", ".join(
            f"the {sig3(1 / g if g < 1 else g)}x of {label(gh, i)}, which only spreads the gradient over "
            f"{'more' if g < 1 else 'fewer'} elements (no parameters)" for i, g in profile.spreading)
    message = (f"the gradient's root-mean-square per element {'falls' if vanishing else 'rises'} by a factor of "
               f"{sig3(1 / ratio if vanishing else ratio)} across {len(profile.blocks)} blocks ({where}; threshold "
               f"{factor:g}, --grad-factor); "
               f"{'it is spread over the blocks: ' if share < 0.25 else ''}the largest step is "
               f"{label(gh, profile.worst)}, which {'shrinks' if vanishing else 'grows'} it "
               f"{sig3(1 / profile.worst_gain if vanishing else profile.worst_gain)}x ({share:.0%} of the total on a "
               f"log scale)")
    if vanishing:
        return [Finding("grad-vanishing", "warning", worst.module or "(model)", message,
                        "the early blocks barely learn: try ReLU/GELU instead of sigmoid/tanh, normalisation "
                        "(LayerNorm/BatchNorm), residual connections, or kaiming/xavier initialisation")]
    return [Finding("grad-exploding", "warning", worst.module or "(model)", message,
                    "clip gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, add normalisation, "
                    "or scale the initialisation down")]
