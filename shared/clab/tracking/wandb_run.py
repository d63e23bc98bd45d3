"""W&B in offline mode: runs land in logs/wandb and can be uploaded later with `wandb sync`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class WandbRun:
    def __init__(
        self,
        enabled: bool,
        project: str,
        name: str,
        config: dict[str, Any],
        group: str | None = None,
    ):
        """``group``: the experiment, so W&B shows its seeds (and variants) together."""
        self.run = None
        if not enabled:
            return
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_dir = Path(os.environ.get("WANDB_DIR", "logs/wandb"))
        wandb_dir.mkdir(parents=True, exist_ok=True)
        import wandb

        self.run = wandb.init(
            project=project,
            name=name,
            id=name,
            group=group,
            resume="allow",
            dir=str(wandb_dir),
            config=config,
        )

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
