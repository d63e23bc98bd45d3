"""Which machine trained a stage, written beside the stage.

The same seed, code and kind of GPU do not give the same run twice: two leases of an
H100 parted in the second stage of one GPU-demo seed and its forgetting of group 0
went from +0.99 to +0.44 (docs/demo.md, session 22). A stage's numbers therefore
belong to the machine and software that made them; each stage's completion marker
says which, so a run resumed elsewhere shows where it changed hands.
"""

from __future__ import annotations

import platform
import socket

import torch
import transformers


def device_name(device: torch.device | str) -> str:
    """The accelerator's name as its driver gives it, or the CPU's architecture."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()})"


def machine_facts(device: torch.device | str, workers: int = 1) -> dict[str, object]:
    """What a stage's numbers depend on beyond its settings: device, worker count, host
    and the numeric software's versions."""
    return {
        "device": device_name(device),
        "workers": workers,
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }
