"""The keys every continual-learning run has, whatever its trainer.

A run's spec is plain data: it names its trainer's module by a string and
lists its runs (:meth:`RunSpec.members`); :func:`clab.runs.sweep.run` runs
them. So the runner never imports ``clab.training``, the spec never imports
the runner, and the package has no import circle, visible or hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from clab.specs import Spec, SpecModel
from clab.storage.layout import INITIAL_STAGE


class ResourcesSpec(SpecModel):
    num_workers: int = Field(1, ge=1, description=">1: Ray Train, one process per worker")
    use_gpu: bool = Field(False, description="train on CUDA (a GPU per worker); false: CPU")
    ray_address: str | None = Field(None, description="an existing Ray cluster; None: local")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="several workers: ddp replicates the models, fsdp shards them (larger models)",
    )
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
    seed: int = Field(
        0, ge=0, lt=2**32, description="the training seed: sampling, data order, new heads, dropout"
    )
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = Field(
        None,
        min_length=1,
        description="training seeds: one run per seed, named <name>-s<seed>, run one after "
        "another (`clab run SPEC --seeds 0,1,2`); null: `seed` alone, the run named <name>",
    )
    data_seed: int | None = Field(
        None,
        ge=0,
        lt=2**32,
        description="seeds what every training seed shares: data sets, tokenizers, the "
        "initial model (tiny weights, warm-up, first adapter), reward models; null: the "
        "first of `seeds` (or `seed`)",
    )
    experiment: str | None = Field(
        None, description="set per run by the sweep: the experiment (spec name) it belongs to"
    )
    rounds: int = Field(1, ge=1, description="passes over the whole task sequence")
    save_steps: int = Field(0, ge=0, description="intermediate checkpoint every N steps; 0: none")
    save_total_limit: int = Field(
        2, ge=1, description="intermediate checkpoints kept per stage (the newest)"
    )
    reset_optimizer: bool = Field(False, description="fresh optimizer state at each stage")
    weight_change_every: int = Field(
        50, ge=0, description="per-tensor weight change to weights.jsonl every N steps; 0: never"
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="workers, GPU, parallel strategy"
    )
    wandb: bool = Field(True, description="log to W&B (offline, under logs/wandb)")

    # The field a sweep varies besides the seed (K-1: "method", mixing: "branch").
    VARIANT: ClassVar[str | None] = None
    # Later seeds link the first seed's stage 0 (see origin).
    SHARE_INITIAL: ClassVar[bool] = True
    # The trainer's module: it has check_inputs(spec), run before anything is
    # written, and make_trainer(spec, rank, world) -> StageTrainer.
    TRAINER: ClassVar[str]
    # Fields a rerun may change without --restart: they shape no finished result.
    SAFE_CHANGES: ClassVar[frozenset[str]] = frozenset(
        {
            "wandb",
            "seeds",  # a seed added or dropped changes no other seed's run
            "save_steps",
            "save_total_limit",
            "weight_change_every",
            "resources.ray_address",
            "resources.gpu_memory_gb",
        }
    )

    # -- replicates: one sweep mechanism for seeds and the kinds' variants ----------------

    @model_validator(mode="after")
    def _distinct_seeds(self) -> RunSpec:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each at most once (got {self.seeds})")
        return self

    @property
    def shared_seed(self) -> int:
        """The seed of what the training seeds share (``data_seed``, or the first seed)."""
        if self.data_seed is not None:
            return self.data_seed
        return self.seeds[0] if self.seeds else self.seed

    @property
    def initial_seed(self) -> int:
        """The seed stage 0 is built with: the shared seed, so every training seed
        starts from the same model (a kind may let each seed build its own)."""
        return self.shared_seed

    def variants(self) -> list[str | None]:
        """The values of ``VARIANT`` this spec sweeps, in running order; [None]: none."""
        return [None]

    def member(self, variant: str | None, seed: int) -> RunSpec:
        """The run of one (variant, seed): ``<experiment>[-<variant>][-s<seed>]``, the one
        run-naming rule of every sweep. A member's members are its siblings."""
        experiment = self.experiment or self.name
        parts = [experiment, *([variant] if variant is not None else [])]
        if self.seeds is not None:
            parts.append(f"s{seed}")
        update: dict = {
            "name": "-".join(parts),
            "experiment": experiment,
            "seed": seed,
            "data_seed": self.shared_seed,
        }
        if self.VARIANT is not None:
            update[self.VARIANT] = variant
        return self.model_copy(update=update)

    def members(self) -> list[RunSpec]:
        """Every run of the experiment, seed by seed: after the first seed a comparison
        of the variants already exists."""
        seeds = self.seeds if self.seeds is not None else [self.seed]
        return [self.member(v, s) for s in seeds for v in self.variants()]

    def origin(self) -> tuple[RunSpec, list[str]] | None:
        """The sibling run whose stages this run starts from, and which stages; None:
        it builds its own stage 0. Stage 0 comes from ``shared_seed`` alone, so a
        later seed takes the first seed's (a hard link): the same for every seed by
        construction, even where a GPU's warm-up would not repeat bit for bit, and
        built once. A kind whose stage 0 writes outside ``initial/`` sets
        ``SHARE_INITIAL`` false."""
        if not self.SHARE_INITIAL or not self.seeds or self.seed == self.seeds[0]:
            return None
        if self.initial_seed != self.shared_seed:  # a stage 0 of its own
            return None
        variant = getattr(self, self.VARIANT) if self.VARIANT else None
        return self.member(variant, self.seeds[0]), [INITIAL_STAGE]

    def replicate(self) -> dict:
        """What run.json records of the run's place in its experiment."""
        return {
            "experiment": self.experiment or self.name,
            "variant_axis": self.VARIANT,
            "variant": getattr(self, self.VARIANT) if self.VARIANT else None,
            "seed": self.seed,
            "seeds": self.seeds if self.seeds is not None else [self.seed],
            "data_seed": self.shared_seed,
        }

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

    def input_digests(self) -> dict[str, str]:
        """Hashes of the inputs a resumed run must find unchanged, by spec field: the
        kinds that read a generated data set name it (run.json keeps them)."""
        return {}

    def writes(self) -> list[Path]:
        wandb = [Path("logs/wandb")] if self.wandb else []
        runs = [p for m in self.members() for p in (*m.run_dirs(), m.lock_path())]
        return [*runs, self.sweep_lock_path(), *wandb]

    def sweep_lock_path(self) -> Path:
        """Beside the runs' folders: held while the experiment's runs run."""
        return Path("checkpoints") / f".{self.experiment or self.name}.sweep.lock"
