"""Spec of the sparse-update language-model trainer (kind ``k1-lm``, service ``k1-trainer``).

One spec runs every method of ``methods`` as its own run, ``<name>-<method>``
(``<name>-<method>-s<seed>`` with ``seeds``: :mod:`clab.runs.sweep`), from
the same initial weights, through the same corpora in the same order
with the same optimizer and data order: the methods differ only in which
parameter groups each step updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from clab.models.spec import ModelSpec
from clab.runs.spec import RunSpec
from clab.specs import KIND_HELP, SpecModel


class CorpusSpec(SpecModel):
    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9._-]+$", description="the corpus' name in metrics and plots"
    )
    source: str = Field(
        ...,
        description="stdlib:prose | stdlib:prose-rot13 | stdlib:code | stdlib:docstrings | "
        "a .txt/.parquet/.jsonl "
        "file | a hub id (name or name:config)",
    )
    field: str = Field("text", description="the text column of a data set")
    max_chars: int = Field(
        2_000_000, ge=1000, description="characters read from the source, at most"
    )


class K1ModelSpec(ModelSpec):
    """The tiny preset here is the public experiment's: untied head, a feed-forward width
    of its own."""

    preset: Literal["tiny"] | None = Field(
        "tiny",
        description="tiny: a small random Qwen2 with an untied head and a tokenizer trained on "
        "the corpora; null with name_or_path",
    )
    hidden_size: int = Field(128, ge=16, description="preset tiny: the model's width")
    layers: int = Field(4, ge=1, description="preset tiny: transformer blocks")
    vocab_size: int = Field(
        2000, ge=300, description="preset tiny: the tokenizer's vocabulary, at most (BPE merges)"
    )
    ffn_size: int = Field(
        256, ge=16, description="preset tiny: the feed-forward layer's inner width"
    )


class SelectSpec(SpecModel):
    rule: Literal["top_k", "fraction"] = Field(
        "top_k",
        description="top_k: the k groups of largest gradient norm; fraction: the fewest largest "
        "groups that cover a share of the parameters",
    )
    top_k: int = Field(5, ge=1, description="rule top_k: groups updated per step")
    fraction: float = Field(0.5, gt=0, le=1, description="rule fraction: share of parameters")
    smoothing: bool = Field(False, description="EMA 0.9 of the selection, on above 0.5")
    # random_k takes, each step, as many groups as this rule (smoothing included)
    # takes from its gradients, random_share as large a share of the parameters;
    # frozen groups are never candidates, for any method.


class GroupsSpec(SpecModel):
    granularity: Literal["block", "module", "tensor"] = Field(
        "block",
        description="block: embed, each layer's attn and ffn, head; module: each parameter's "
        "parent module; tensor: each parameter tensor",
    )
    frozen: list[str] = Field([], description="groups never updated, by any method")


class OptimSpec(SpecModel):
    name: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(
        0.01, ge=0, description="decoupled weight decay (adamw) or L2 (sgd)"
    )
    momentum: float = Field(0.0, ge=0, description="sgd only")


class K1Spec(RunSpec):
    """Sparse (K-1) against dense training and two random controls, on corpora in
    sequence."""

    kind: Literal["k1-lm"] = Field("k1-lm", description=KIND_HELP)
    # a method added or dropped changes no other method's run (as seeds)
    SAFE_CHANGES: ClassVar[frozenset[str]] = RunSpec.SAFE_CHANGES | {"methods"}
    TRAINER: ClassVar[str] = "clab.training.k1_lm"
    VARIANT: ClassVar[str | None] = "method"
    methods: list[Literal["k1", "dense", "random_k", "random_share"]] = Field(
        ["k1", "dense", "random_k", "random_share"],
        min_length=1,
        description="the methods compared, one run each: k1 (sparse updates), dense, random_k "
        "(as many groups as k1, at random), random_share (as large a share of the parameters "
        "as k1, at random)",
    )
    method: Literal["k1", "dense", "random_k", "random_share"] = Field(
        "k1", description="set per run by the sweep; the spec file lists methods"
    )
    corpora: list[CorpusSpec] = Field(
        default_factory=lambda: [
            CorpusSpec(name="prose", source="stdlib:prose"),
            CorpusSpec(name="code", source="stdlib:code"),
            CorpusSpec(name="docstrings", source="stdlib:docstrings"),
        ],
        description="the text corpora, in training order (at least two)",
    )
    seq_len: int = Field(64, ge=4, description="tokens per training window")
    batch_size: int = Field(16, ge=1, description="windows per optimizer step")
    steps_per_corpus: int = Field(
        500, ge=1, description="optimizer steps on each corpus (one stage)"
    )
    val_windows: int = Field(64, ge=1, description="validation windows per corpus at each stage")
    model: K1ModelSpec = Field(
        default_factory=K1ModelSpec, description="the language model to start from"
    )
    optim: OptimSpec = Field(
        default_factory=OptimSpec, description="the optimizer, the same for every method"
    )
    select: SelectSpec = Field(
        default_factory=SelectSpec, description="which parameter groups k1 updates each step"
    )
    groups: GroupsSpec = Field(
        default_factory=GroupsSpec, description="how parameters are grouped for the selection"
    )

    @model_validator(mode="after")
    def _check(self) -> K1Spec:
        if len(self.corpora) < 2:
            raise ValueError("corpora: at least two, in training order")
        if len({c.name for c in self.corpora}) != len(self.corpora):
            raise ValueError("corpora: names must differ")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: each at most once (got {self.methods})")
        if self.resources.num_workers != 1:
            raise ValueError("resources.num_workers: k1-lm runs on one worker")
        return self

    def variants(self) -> list[str | None]:
        return list(self.methods)

    def reads(self) -> list[Path]:
        return [Path(c.source) for c in self.corpora if not c.source.startswith("stdlib:")]
