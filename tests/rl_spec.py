"""A tiny curriculum-RL spec for tests, and a way to write variants of it."""

import json
from pathlib import Path

import yaml

TINY = {
    "kind": "countdown-rl",
    "name": "t",
    "data": {"dir": "data/continual", "max_train_rows": 32},
    "rounds": 1,
    "epochs_per_group": 1,
    "max_steps_per_stage": 3,
    "model": {"preset": "tiny", "hidden_size": 32, "vocab_size": 320},
    "rollout": {"max_prompt_length": 160, "max_response_length": 8},
    "batch": {"train": 4, "val": 4, "mini": 4, "micro": 4},
    "ppo": {"actor_lr": 1e-3, "critic_lr": 1e-3},
    "grpo": {"lr": 1e-3},
    "save_steps": 1,
    "wandb": False,
}


def write_spec(path: Path, **changes) -> Path:
    spec = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = spec
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(spec))
    return path
