"""Online EWC (Schwarz et al. 2018) for a sequence of tasks, on trainable parameters only.

After task k the diagonal Fisher F_k is estimated at the task's final
weights from squared per-example gradients of the training loss (here DPO's:
the log-likelihood of the preference under the Bradley-Terry model, so it
is the empirical Fisher of what the stage optimised), and accumulated:
F <- gamma * F + F_k, anchor theta* <- theta_k. While training task k+1 the
loss gains lambda/2 * sum F (theta - theta*)^2.

What the public continual-DPO code got wrong, and this does not: its Fisher
was overwritten at each task (only the last task protected: here it is a
sum over every earlier task, ``tasks`` says which); it made every parameter
trainable, the base model's included, to compute it (here only the
parameters the optimizer updates, e.g. the LoRA adapter, are in F, the
anchor and the penalty); and the squared gradient of a mean over a batch is
not the Fisher (here one example per gradient).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

FILE = "ewc.safetensors"


class OnlineEWC:
    def __init__(self, model: torch.nn.Module, lam: float, gamma: float = 1.0):
        self.lam, self.gamma = lam, gamma
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.tasks: list[int] = []

    @property
    def active(self) -> bool:
        return self.lam > 0 and bool(self.fisher)

    def penalty(self) -> torch.Tensor:
        """lambda/2 * sum F (theta - theta*)^2; zero at the anchor, with a gradient."""
        terms = [
            (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
            for n, p in self.named
            if n in self.fisher
        ]
        if not terms:
            return torch.zeros(())
        return 0.5 * self.lam * torch.stack(terms).sum()

    def consolidate(self, task: int, fisher: dict[str, torch.Tensor]) -> None:
        """Add task ``task``'s Fisher and take the current weights as the anchor."""
        for n, p in self.named:
            f = fisher[n].detach().to(p.device, torch.float32)
            self.fisher[n] = self.gamma * self.fisher[n] + f if n in self.fisher else f
            self.anchor[n] = p.detach().clone()
        self.tasks.append(task)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if not self.fisher:
            return
        tensors = {f"fisher.{n}": t.contiguous().cpu() for n, t in self.fisher.items()}
        tensors.update({f"anchor.{n}": t.contiguous().cpu() for n, t in self.anchor.items()})
        save_file(tensors, str(folder / FILE), metadata={"tasks": json.dumps(self.tasks)})

    def load(self, folder: Path) -> None:
        """The state saved with a stage checkpoint (none before the first task)."""
        from safetensors import safe_open

        path = folder / FILE
        self.fisher, self.anchor, self.tasks = {}, {}, []
        if not path.is_file():
            return
        devices = {n: p.device for n, p in self.named}
        with safe_open(str(path), framework="pt") as f:
            self.tasks = json.loads(f.metadata()["tasks"])
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                kind, name = key.split(".", 1)
                getattr(self, kind)[name] = f.get_tensor(key).to(devices.get(name, "cpu"))


def empirical_fisher(
    params: list[tuple[str, torch.nn.Parameter]],
    examples: Iterable,
    loss_of: Callable[[object], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Mean over examples of the squared gradient of ``loss_of(example)`` (one example each)."""
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    tensors = [p for _, p in params]
    count = 0
    for ex in examples:
        grads = torch.autograd.grad(loss_of(ex), tensors, allow_unused=True)
        for (n, _), g in zip(params, grads, strict=True):
            if g is not None:
                fisher[n] += g.detach().float() ** 2
        count += 1
    return {n: f / max(count, 1) for n, f in fisher.items()}
