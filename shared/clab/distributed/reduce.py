"""Metrics of data-parallel workers combined into one row, each by its own rule.

Averaging everything is wrong for some metrics: a maximum over workers is a
maximum, a throughput is a sum. Each metric names its reduction; the default
is the mean, right for per-worker means over equal shares of the batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def reduce_metrics(metrics: dict[str, float], how: dict[str, str]) -> dict[str, float]:
    """``how[key]`` in mean (default), sum, max, min; a no-op without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return metrics
    if dist.get_backend() == "fake":
        # rank 0 of N emulated (clab.distributed.emulate): its all-reduce leaves the
        # values as they are, so a mean would come out divided by N (a 1,024-token
        # response reported as 128); rank 0's own values are what it measures
        return metrics
    world = dist.get_world_size()
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    out = dict(metrics)
    for op in ("mean", "sum", "max", "min"):
        keys = sorted(k for k in metrics if how.get(k, "mean") == op)
        if not keys:
            continue
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=REDUCE_OPS.get(op, dist.ReduceOp.SUM))
        if op == "mean":
            t /= world
        out.update(zip(keys, t.tolist(), strict=True))
    return out
