"""The keys every continual-learning run has, whatever its trainer.

A run's spec names its trainer's module by a string rather than importing
it, so the runner (``clab.runs``) never imports ``clab.training`` and the
package has no import circle, visible or hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from clab.specs import Spec, SpecModel


class ResourcesSpec(SpecModel):
    num_workers: int = Field(1, ge=1, description=">1: Ray Train, one process per worker")
    use_gpu: bool = False
    ray_address: str | None = Field(None, description="an existing Ray cluster; None: local")
    strategy: Literal["ddp", "fsdp"] = "ddp"
    gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory of one GPU in GiB (a '24 GB' card: 24): `clab plan` checks that "
        "the run fits it; None: unknown, the plan gives the estimate without a verdict",
    )


class RunSpec(Spec):
    """Base of every trainer's spec: name, seed, rounds, checkpoints, resources, W&B."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9._-]+$", description="the run: checkpoints/<name> etc."
    )
    seed: int = Field(0, description="seeds every random draw: heads, sampling, data order")
    rounds: int = Field(1, ge=1, description="passes over the whole task sequence")
    save_steps: int = Field(0, ge=0, description="intermediate checkpoint every N steps; 0: none")
    save_total_limit: int = Field(
        2, ge=1, description="intermediate checkpoints kept per stage (the newest)"
    )
    reset_optimizer: bool = Field(False, description="fresh optimizer state at each stage")
    weight_change_every: int = Field(
        50, ge=0, description="per-tensor weight change to weights.jsonl every N steps; 0: never"
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    wandb: bool = Field(True, description="log to W&B (offline, under logs/wandb)")

    # The trainer's module: it has check_inputs(spec), run before anything is
    # written, and make_trainer(spec, rank, world) -> StageTrainer.
    TRAINER: ClassVar[str]
    # Fields a rerun may change without --restart: they shape no finished result.
    SAFE_CHANGES: ClassVar[frozenset[str]] = frozenset(
        {
            "wandb",
            "save_steps",
            "save_total_limit",
            "weight_change_every",
            "resources.ray_address",
            "resources.gpu_memory_gb",
        }
    )

    def run_dirs(self) -> tuple[Path, Path, Path]:
        """checkpoints/<name>, metrics/<name>, logs/<name>."""
        return (
            Path("checkpoints") / self.name,
            Path("metrics") / self.name,
            Path("logs") / self.name,
        )

    def lock_path(self) -> Path:
        """Beside the run's folder, not in it: --restart moves the folder while it is held."""
        return Path("checkpoints") / f".{self.name}.lock"

    def writes(self) -> list[Path]:
        wandb = [Path("logs/wandb")] if self.wandb else []
        return [*self.run_dirs(), self.lock_path(), *wandb]

    def run(self, restart: bool = False) -> None:
        from clab.runs.runner import run_spec

        run_spec(self, restart=restart)
