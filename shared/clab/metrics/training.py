"""What the curriculum experiment tracks about the weights during training.

normalized weight change = ||theta - theta_ref|| / ||theta_ref||, with
theta_ref the run's start (theta_0) or the current stage's start;
normalized gradient = ||g|| / ||theta||. Norms are over all parameters
together (the global 2-norm), computed on the parameters' device with a
single host sync; the reference weights are copied once per run and once
per stage, never per step.

Under FSDP every worker holds a shard of each tensor: the tracker keeps
only its shard of the reference weights, sums squares over its shard, and
adds the workers' sums in one all-reduce per measurement (every worker must
measure; the numbers are those of the full tensors).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

FP32 = torch.float32


ZERO_START = 1e-6  # a starting norm below this is zero: no relative change is defined
ABSOLUTE = " (absolute)"


def change_norms(
    params: list[torch.Tensor],
    refs: list[list[torch.Tensor]],
    chunk_elements: int = 1 << 26,
) -> torch.Tensor:
    """[||params||, ||params - refs[0]||, ||params - refs[1]||, ...] as one fp32 tensor."""
    return change_squares(params, refs, chunk_elements).sqrt()


def change_squares(
    params: list[torch.Tensor],
    refs: list[list[torch.Tensor]],
    chunk_elements: int = 1 << 26,
) -> torch.Tensor:
    """The squares of :func:`change_norms`, which shards' sums add up to.

    One pass of multi-tensor kernels over chunks of at most ``chunk_elements``
    elements: a handful of kernel launches for many small tensors (LoRA's dozens
    of matrices cost ~2 ms a step when each had its own), and never the whole
    difference of a large model in memory at once.
    """
    for ref in refs:
        if len(ref) != len(params):
            raise ValueError(f"{len(params)} tensors against {len(ref)} references")
    sq = torch.zeros(1 + len(refs), dtype=FP32, device=params[0].device if params else "cpu")
    start = 0
    while start < len(params):
        end, size = start, 0
        while end < len(params) and (end == start or size + params[end].numel() <= chunk_elements):
            size += params[end].numel()
            end += 1
        chunk = [p.detach() for p in params[start:end]]
        parts = [chunk] + [torch._foreach_sub(chunk, ref[start:end]) for ref in refs]
        flat = [t for part in parts for t in part]
        norms = torch.stack(torch._foreach_norm(flat, 2, dtype=FP32)).view(len(parts), -1)
        sq += norms.square().sum(dim=1)
        start = end
    return sq


def distance(
    params: list[torch.Tensor], ref: list[torch.Tensor], chunk_elements: int = 1 << 26
) -> torch.Tensor:
    """||params - ref||, through :func:`change_norms`."""
    return change_norms(params, [ref], chunk_elements)[1]


def _local(p: torch.Tensor) -> torch.Tensor:
    """This worker's values of a parameter: its shard under FSDP, else all of it."""
    p = p.detach()
    return p.to_local() if isinstance(p, DTensor) else p


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
            self.theta_0_norm = self._norm(self.theta_0)
            self.stage_start = [t.clone() for t in self.theta_0]
            self.stage_norm = self.theta_0_norm

    def _sum(self, squares: torch.Tensor) -> torch.Tensor:
        """Sums of squares over every worker's shard (a collective under FSDP)."""
        if self.sharded:
            dist.all_reduce(squares)
        return squares

    def _locals(self) -> list[torch.Tensor]:
        return [_local(p) for p in self.params]

    def _norm(self, tensors: list[torch.Tensor]) -> float:
        return self._sum(change_squares(tensors, [])).sqrt().item()

    def start_stage(self, weights: list[torch.Tensor] | None = None) -> None:
        """Take the stage's reference: the current weights, or ``weights`` on a resume."""
        with torch.no_grad():
            src = weights if weights is not None else self._locals()
            torch._foreach_copy_(self.stage_start, src)
            self.stage_norm = self._norm(self.stage_start)

    @torch.no_grad()
    def per_tensor(self) -> dict[str, float]:
        """||W - W_0|| / ||W_0|| for each named tensor, against the run's start: where
        in the network the change happened (one host sync for all tensors). A tensor
        that starts at zero (a fresh Qwen2's attention biases) has no relative change:
        its absolute change ||W - W_0|| is reported instead, as ``"<name> (absolute)"``,
        so that one key never reads 1e10 on a plot of relative changes."""
        now = self._locals()
        sq = torch.stack(
            [
                torch.stack(
                    [
                        torch.linalg.vector_norm((a - b).float()) ** 2
                        for a, b in zip(now, self.theta_0, strict=True)
                    ]
                ),
                torch.stack([torch.linalg.vector_norm(t.float()) ** 2 for t in self.theta_0]),
            ]
        )
        sq = self._sum(sq)
        change, start = sq[0].sqrt().tolist(), sq[1].sqrt().tolist()
        return {
            (name if s >= ZERO_START else f"{name}{ABSOLUTE}"): (c / s if s >= ZERO_START else c)
            for name, c, s in zip(self.names, change, start, strict=True)
        }

    @torch.no_grad()
    def launch(self) -> torch.Tensor:
        """[||theta||, ||theta - theta_0||, ||theta - stage start||], queued on the device
        (under FSDP the workers' sums are added by an all-reduce queued with them)."""
        sq = change_squares(self._locals(), [self.theta_0, self.stage_start])
        return self._sum(sq).sqrt()

    def read(self, norms: torch.Tensor, grad_norm: float | None = None) -> dict[str, float]:
        """The row's fields from :meth:`launch`'s tensor (the host sync happens here)."""
        n = norms.tolist()
        values = [
            n[0],
            n[1] / max(self.theta_0_norm, 1e-12),
            n[2] / max(self.stage_norm, 1e-12),
        ]
        out = {
            "param_norm": values[0],
            "weight_change_run": values[1],
            "weight_change_stage": values[2],
        }
        if grad_norm is not None:
            out["normalized_grad"] = grad_norm / max(values[0], 1e-12)
        return out

    def measure(self, grad_norm: float | None = None) -> dict[str, float]:
        """Normalized weight change and gradient now (one host sync)."""
        return self.read(self.launch(), grad_norm)


def success_rate(correct: list[bool]) -> float:
    """The fraction exactly correct: not the mean reward, which includes format credit."""
    return sum(bool(c) for c in correct) / max(len(correct), 1)
