"""What the curriculum experiment tracks about the weights during training.

normalized weight change = ||theta - theta_ref|| / ||theta_ref||, with
theta_ref the run's start (theta_0) or the current stage's start;
normalized gradient = ||g|| / ||theta||. Norms are over all parameters
together (the global 2-norm), computed on the parameters' device with a
single host sync and one tensor's difference at a time; the reference
weights are copied once per run and once per stage, never per step.

Under FSDP every worker holds a shard of each tensor: the tracker keeps
only its shard of the reference weights, sums squares over its shard, and
adds the workers' sums in one all-reduce per measurement (every worker must
measure; the numbers are those of the full tensors).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _local(p: torch.Tensor) -> torch.Tensor:
    """This worker's values of a parameter: its shard under FSDP, else all of it."""
    p = p.detach()
    return p.to_local() if isinstance(p, DTensor) else p


def _squares(tensors: list[torch.Tensor], minus: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Each tensor's sum of squares (fp32), of ``tensors - minus`` when given, stacked;
    one difference at a time, never the whole model's at once."""
    if minus is None:
        return torch.stack([torch.linalg.vector_norm(t.float()) ** 2 for t in tensors])
    return torch.stack(
        [
            torch.linalg.vector_norm((t - m).float()) ** 2
            for t, m in zip(tensors, minus, strict=True)
        ]
    )


class WeightTracker:
    """Normalized weight change against the run's and the stage's start.

    ``theta_0``, when given, holds this worker's values of each parameter (its
    shard under FSDP: :func:`clab.distributed.fsdp.local_shard`).
    """

    def __init__(self, model: torch.nn.Module, theta_0: list[torch.Tensor] | None = None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sharded = any(isinstance(p, DTensor) for p in self.params)
        with torch.no_grad():
            self.theta_0 = theta_0 or [_local(p).clone() for p in self.params]
            self.stage_start = [t.clone() for t in self.theta_0]
            self.theta_0_norm = self.stage_norm = self._sum(_squares(self.theta_0)).sum().sqrt()

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sums of squares over every worker's shard (a collective under FSDP)."""
        if self.sharded:
            dist.all_reduce(x)
        return x

    def _locals(self) -> list[torch.Tensor]:
        return [_local(p) for p in self.params]

    def start_stage(self, weights: list[torch.Tensor] | None = None) -> None:
        """Take the stage's reference: the current weights, or ``weights`` on a resume."""
        with torch.no_grad():
            src = weights if weights is not None else self._locals()
            torch._foreach_copy_(self.stage_start, src)
            self.stage_norm = self._sum(_squares(self.stage_start)).sum().sqrt()

    @torch.no_grad()
    def per_tensor(self) -> dict[str, float]:
        """||W - W_0|| / ||W_0|| for each named tensor, against the run's start: where
        in the network the change happened (one host sync for all tensors)."""
        now = self._locals()
        sq = self._sum(torch.stack([_squares(now, self.theta_0), _squares(self.theta_0)]))
        ratio = sq[0].sqrt() / sq[1].sqrt().clamp(min=1e-12)
        return dict(zip(self.names, ratio.tolist(), strict=True))

    @torch.no_grad()
    def measure(self, grad_norm: float | None = None) -> dict[str, float]:
        now = self._locals()
        sq = torch.stack(
            [
                _squares(now).sum(),
                _squares(now, self.theta_0).sum(),
                _squares(now, self.stage_start).sum(),
            ]
        )
        param_norm, run, stage = self._sum(sq).sqrt()
        run, stage = run / self.theta_0_norm, stage / self.stage_norm
        values = torch.stack([param_norm, run, stage]).tolist()
        out = {
            "param_norm": values[0],
            "weight_change_run": values[1],
            "weight_change_stage": values[2],
        }
        if grad_norm is not None:
            out["normalized_grad"] = grad_norm / max(values[0], 1e-12)
        return out


def success_rate(correct: list[bool]) -> float:
    """The fraction exactly correct: not the mean reward, which includes format credit."""
    return sum(bool(c) for c in correct) / max(len(correct), 1)
