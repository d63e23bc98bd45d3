"""The ``model:`` and ``lora:`` sections every training kind shares.

One naming for one concept: a run starts from a checkpoint (``name_or_path``)
or from a random ``preset: tiny`` model whose shape the same keys give in every
kind. A kind subclasses these only for what it alone has (its defaults, K-1's
feed-forward width, DPO's ``enabled``), so a key means the same thing in every
spec file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from clab.specs import SpecModel


class ModelSpec(SpecModel):
    """Where the initial model comes from, and the tiny preset's shape."""

    name_or_path: str | None = Field(
        None, description="the model to start from: a local folder or a hub id; null with preset"
    )
    preset: Literal["tiny"] | None = Field(
        None,
        description="tiny: a small random model with a tokenizer trained on the run's own text "
        "(offline tests, the demo); null with name_or_path",
    )
    hidden_size: int = Field(64, ge=16, description="preset tiny: the model's width")
    layers: int = Field(2, ge=1, description="preset tiny: transformer blocks")
    heads: int = Field(
        4, ge=1, description="preset tiny: attention heads (half as many key-value heads)"
    )
    vocab_size: int = Field(
        512, ge=300, description="preset tiny: the tokenizer's vocabulary, at most (BPE merges)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        """One of the two, the other null; a source given in the file or by --set
        replaces the class's default one (a preset over a default hub id)."""
        given = self.model_fields_set
        if self.preset is not None and self.name_or_path is not None:
            if {"preset", "name_or_path"} <= given:
                raise ValueError("give exactly one of model.name_or_path and model.preset")
            if "preset" in given:
                self.name_or_path = None
            else:
                self.preset = None
        if self.preset is None and self.name_or_path is None:
            raise ValueError("give exactly one of model.name_or_path and model.preset")
        return self


class PrecisionModelSpec(ModelSpec):
    """A model trained by transformers on a GPU: its compute dtype and memory trade."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16",
        description="compute dtype on a GPU (autocast over the float32 trained weights); CPU runs "
        "float32",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower steps"
    )


class LoraSpec(SpecModel):
    """A LoRA adapter (PEFT) trained instead of the full weights."""

    r: int = Field(8, ge=1, description="adapter rank: trainable parameters grow with it")
    alpha: int = Field(16, ge=1, description="scaling: the update is multiplied by alpha / r")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names that get an adapter, or all-linear: every linear layer but "
        "the head",
    )
