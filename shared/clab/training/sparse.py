"""Sparse updates ("K-1"): each step only the parameter groups with the largest
gradients move, and the others do not change at all.

The public version claimed sparse updates but let one optimizer touch every
weight (AdamW's decay and moments move a weight whose gradient was masked
out). Here every group has its own optimizer, and a step calls only the
selected groups' optimizers: an unselected group keeps its weights bit for
bit, its moments, and its step counter (so Adam's bias correction stays that
of the updates it really had). The selection is a plain function of the
groups' gradient norms (K-1's rules registered by name in ``SELECTORS``), so
K-1, dense training and the ``random_k`` and ``random_share`` controls differ only
in the rule.

Groups (``granularity: block``, the public experiment's ten for a 4-layer
model): ``embed`` (token and position embeddings), ``layer<i>.attn``
(attention with the norm before it), ``layer<i>.ffn`` (feed-forward with the
norm before it), ``head`` (final norm and output head, where untied);
``module`` refines to the parent module of each tensor, ``tensor`` to single
tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, Protocol

import torch

from clab.errors import ClabError
from clab.registry import Registry

Granularity = Literal["block", "module", "tensor"]
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.(.+)$")
# a layer's feed-forward half (with its norm) by name; OPT's are fc1, fc2 and a per-layer
# final_layer_norm (the decoder's own final_layer_norm is outside the layers: head)
_FFN = ("mlp", "feed_forward", "ffn", "post_attention_layernorm", "ln_2", "norm2",
        "fc1", "fc2", "final_layer_norm")  # fmt: skip


def block_of(name: str) -> str:
    """The block a parameter belongs to, by its name in a transformers model."""
    m = _LAYER.search(name)
    if m:
        i, rest = m.groups()
        return f"layer{i}.ffn" if any(k in rest for k in _FFN) else f"layer{i}.attn"
    if "embed" in name or name.endswith(("wte.weight", "wpe.weight")):
        return "embed"
    return "head"


def parameter_groups(
    model: torch.nn.Module, granularity: Granularity = "block"
) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Trainable parameters by group, in model order; a tied weight counts once."""
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
    for name, p in model.named_parameters():  # named_parameters skips tied duplicates
        if not p.requires_grad:
            continue
        if granularity == "block":
            key = block_of(name)
        elif granularity == "module":
            key = name.rsplit(".", 1)[0]
        else:
            key = name
        groups.setdefault(key, []).append((name, p))
    return groups


def check_group_names(names: list[str], groups: dict) -> None:
    """A spec that names groups (to freeze, to always update) must name real ones."""
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise ClabError(
            f"groups: unknown group {', '.join(map(repr, unknown))} "
            f"(this model's groups: {', '.join(groups)})"
        )


@torch.no_grad()
def group_grad_norms(groups: dict[str, list[tuple[str, torch.nn.Parameter]]]) -> torch.Tensor:
    """The L2 norm of each group's gradient, all tensors in one ``_foreach_norm`` call
    (a missing gradient counts as zero)."""
    params = [p for members in groups.values() for _, p in members]
    owner = torch.tensor(
        [g for g, members in enumerate(groups.values()) for _ in members],
        device=params[0].device,
    )
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    sq = torch.stack(torch._foreach_norm(grads)).float() ** 2
    return torch.zeros(len(groups), device=sq.device).index_add_(0, owner, sq).sqrt()


# -- selection rules: norms (and group sizes) in, a boolean mask of groups out ---------------

SelectFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


class RuleSettings(Protocol):
    """What a K-1 rule may read from the spec's ``select`` section."""

    top_k: int
    fraction: float


Selector = Callable[[RuleSettings], SelectFn]
SELECTORS: Registry[Selector] = Registry("K-1 rule")


def top_k(k: int) -> SelectFn:
    """The ``k`` groups with the largest gradient norms (ties: the earlier group)."""

    def select(norms, sizes, gen):
        mask = torch.zeros_like(norms, dtype=torch.bool)
        order = torch.argsort(-norms.double(), stable=True)
        mask[order[: min(k, len(norms))]] = True
        return mask

    return select


def fraction(share: float) -> SelectFn:
    """The fewest largest-norm groups whose parameters cover ``share`` of the model."""

    def select(norms, sizes, gen):
        order = torch.argsort(-norms.double(), stable=True)
        covered = torch.cumsum(sizes[order].double(), 0) / sizes.sum()
        n = int(torch.searchsorted(covered, torch.tensor(share, dtype=torch.float64))) + 1
        mask = torch.zeros_like(norms, dtype=torch.bool)
        mask[order[: min(n, len(norms))]] = True
        return mask

    return select


def random_k(k: int) -> SelectFn:
    """``k`` groups at random (the control: as many groups as K-1, chosen blindly)."""

    def select(norms, sizes, gen):
        mask = torch.zeros(len(norms), dtype=torch.bool)
        mask[torch.randperm(len(norms), generator=gen)[:k]] = True
        return mask.to(norms.device)

    return select


def same_count_at_random(rule: SelectFn) -> SelectFn:
    """The ``random_k`` control for any K-1 rule: as many groups as ``rule`` picks
    from these norms (``fraction`` and smoothing pick a varying number), chosen
    at random, so the control separates "which groups" from "how many"."""

    def select(norms, sizes, gen):
        n = int(rule(norms, sizes, gen).sum())
        mask = torch.zeros(len(norms), dtype=torch.bool)
        mask[torch.randperm(len(norms), generator=gen)[:n]] = True
        return mask.to(norms.device)

    return select


def same_share_at_random(rule: SelectFn) -> SelectFn:
    """The control that matches the share of parameters ``rule`` updates, not its
    count of groups. Gradient norms favour the vocabulary-sized groups, so
    ``random_k`` (as many groups) updates fewer parameters than K-1 (0.34 against
    0.44 of them a step in the CPU demo), and a difference between the two mixes
    "which groups" with "how much of the model".

    Each step: the groups in a random order, and of that order the prefix whose
    share is just below or just above the share ``rule`` picks from these norms,
    the longer one with the probability that makes the expected share equal to
    ``rule``'s. Taking always the longer one would update more than K-1 on
    average, by up to a whole group (a vocabulary-sized group is 0.4 of a small
    model)."""

    def select(norms, sizes, gen):
        total = float(sizes.sum())
        share = float(sizes[rule(norms, sizes, gen).to(sizes.device)].sum()) / total
        order = torch.randperm(len(norms), generator=gen)
        u = float(torch.rand((), generator=gen))
        covered = torch.cumsum(sizes.cpu()[order].double(), 0) / total
        above = int(torch.searchsorted(covered, torch.tensor(share - 1e-12, dtype=torch.float64)))
        above = min(above, len(norms) - 1)  # covered[above] >= share: above + 1 groups
        hi = float(covered[above])
        lo = float(covered[above - 1]) if above else 0.0
        p_short = (hi - share) / (hi - lo) if hi > share else 0.0
        n = above if u < p_short else above + 1
        mask = torch.zeros(len(norms), dtype=torch.bool)
        mask[order[:n]] = True
        return mask.to(norms.device)

    return select


def among(rule: SelectFn, live: torch.Tensor) -> SelectFn:
    """``rule`` applied to the ``live`` groups only: a frozen group is never a
    candidate, so it does not take the place of one that could move (every
    method then updates as many trainable groups as it asks for)."""

    def select(norms, sizes, gen):
        on = live.to(norms.device)
        mask = torch.zeros(len(norms), dtype=torch.bool, device=norms.device)
        mask[on] = rule(norms[on], sizes[live], gen).to(norms.device)
        return mask

    return select


def dense() -> SelectFn:
    """Every group: dense training through the same optimizer code as K-1."""

    def select(norms, sizes, gen):
        return torch.ones_like(norms, dtype=torch.bool)

    return select


SELECTORS.add("top_k", lambda s: top_k(s.top_k))
SELECTORS.add("fraction", lambda s: fraction(s.fraction))


class Smoothed:
    """The public experiment's smoothing: an exponential moving average of the
    0/1 selection, a group updating while its average is above ``threshold``."""

    def __init__(self, rule: SelectFn, decay: float = 0.9, threshold: float = 0.5):
        self.rule, self.decay, self.threshold = rule, decay, threshold
        self.average: torch.Tensor | None = None

    def __call__(self, norms, sizes, gen):
        raw = self.rule(norms, sizes, gen).float()
        if self.average is None:
            self.average = raw
        else:
            self.average = self.decay * self.average + (1 - self.decay) * raw
        return self.average > self.threshold


# -- the optimizer ---------------------------------------------------------------------------


class SparseOptimizer:
    """One optimizer per group; :meth:`step` steps only the selected ones.

    Gradients of unselected groups are dropped, so nothing of theirs changes:
    weights, moments, step counters. Dense training is the rule that selects
    every group, through the same code, so the comparison differs in nothing
    else.
    """

    def __init__(
        self,
        groups: dict[str, list[tuple[str, torch.nn.Parameter]]],
        make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    ):
        self.names = list(groups)
        self.groups = groups
        self.optimizers = [make([p for _, p in groups[n]]) for n in self.names]
        self.sizes = torch.tensor([sum(p.numel() for _, p in groups[n]) for n in self.names])

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, selected: torch.Tensor) -> dict[str, float]:
        """Step the selected groups; return what a log row needs."""
        chosen = selected.tolist()
        for opt, on in zip(self.optimizers, chosen, strict=True):
            if on:
                opt.step()
        self.zero_grad()
        updated = sum(int(s) for s, on in zip(self.sizes.tolist(), chosen, strict=True) if on)
        return {
            "groups_selected": sum(chosen),
            "fraction_updated": updated / int(self.sizes.sum()),
        }

    def state_dict(self) -> dict:
        return {n: opt.state_dict() for n, opt in zip(self.names, self.optimizers, strict=True)}

    def load_state_dict(self, state: dict) -> None:
        for n, opt in zip(self.names, self.optimizers, strict=True):
            opt.load_state_dict(state[n])


def make_optimizer(
    name: Literal["adamw", "sgd"], lr: float, weight_decay: float, momentum: float = 0.0
) -> Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]:
    """The same optimizer for every group and every method (AdamW by default)."""

    def make(params):
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)

    return make
