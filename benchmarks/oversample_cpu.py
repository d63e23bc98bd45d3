"""grpo.oversample in miniature, on the CPU: does keeping the groups whose scores vary
make GRPO learn a sparse reward in fewer optimizer steps, over seeds?

A tiny random model (the tiny preset) and a reward it can learn: 1 for a response
at least ``--threshold`` digits, else 0. At the start few responses pass, so most
groups of responses all score 0 (flat): plain GRPO learns from the few others.
Each seed trains GRPO twice from the same start, ``oversample`` 1 and ``--oversample``,
for the same optimizer steps, and a third time with ``oversample`` 1 for
``--oversample`` times the steps, so generating as many responses as the
over-draw did (the compute-matched arm). The table gives the success of the
drawn responses over the last steps, the share of trained groups that were flat,
and paired differences with their Student-t intervals over seeds.

    uv run python benchmarks/oversample_cpu.py /tmp/oversample [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from clab.cli import main as clab
from clab.metrics.replicates import mean_interval, paired_difference
from clab.rewards.countdown import Reason, RewardResult
from clab.tracking.metrics_log import read_rows

REPO = Path(__file__).resolve().parent.parent


class DigitsReward:
    """1 for a response of at least ``threshold`` digits (as a share of its
    characters), else 0: sparse for an untrained model, learnable by a tiny one."""

    __name__ = "digits"
    threshold = 0.3

    def __init__(self, *_):
        pass

    def score(self, completions, *_):
        return [
            RewardResult(float(s >= self.threshold), s >= self.threshold, Reason.WRONG_VALUE)
            for s in (sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions)
        ]

    def __call__(self, prompts, completions, **_):
        return [r.score for r in self.score(completions)]


def spec(name: str, seed: int, oversample: int, steps: int) -> dict:
    return {
        "kind": "countdown-rl",
        "name": name,
        "algorithm": "grpo",
        "seed": seed,
        "data": {"dir": "data/continual", "groups": [0], "max_train_rows": 64},
        "rounds": 1,
        "epochs_per_group": 1000,
        "max_steps_per_stage": steps,
        "model": {"preset": "tiny", "hidden_size": 32, "vocab_size": 320},
        "rollout": {"max_prompt_length": 160, "max_response_length": 8,
                    "responses_per_prompt": 4},
        "batch": {"train": 8, "val": 4, "mini": 32, "micro": 32},
        "grpo": {"lr": 1e-2, "beta": 0.0, "oversample": oversample},
        "save_steps": 0,
        "wandb": False,
    }  # fmt: skip


def _ci(e, fmt: str = ".2f") -> str:
    if e.low is None:
        return f"{e.mean:{fmt}}"
    return f"{e.mean:{fmt}} [{e.low:{fmt}}, {e.high:{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--oversample", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--last", type=int, default=10, help="steps the success is averaged over")
    ap.add_argument("--threshold", type=float, default=0.3)
    args = ap.parse_args()
    import clab.training.countdown_rl as rl

    DigitsReward.threshold = args.threshold
    rl.CountdownReward = DigitsReward
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)
    if not Path("data/continual").is_dir():
        gen = [str(REPO / "services/data-generator.yaml"), "--set", "train_size=64",
               "--set", "test_size=8", "--set", "output=data/continual"]  # fmt: skip
        assert clab(["run", *gen]) == 0
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    o = args.oversample
    arms = {"1": (1, args.steps), str(o): (o, args.steps), f"1, {o}x steps": (1, o * args.steps)}
    results: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in seeds:
        for arm, (factor, steps) in arms.items():
            name = f"o{factor}-n{steps}-s{seed}"
            Path(f"{name}.yaml").write_text(yaml.safe_dump(spec(name, seed, factor, steps)))
            if not Path(f"metrics/{name}/train.jsonl").is_file():
                assert clab(["run", f"{name}.yaml"]) == 0
            rows = read_rows(f"metrics/{name}/train.jsonl")[-args.last :]
            kept = [r.get("flat_groups_kept", r["flat_groups"]) for r in rows]
            results[arm][seed] = {
                "success": sum(r["reward_mean"] for r in rows) / len(rows),  # 0 or 1 each
                "flat_kept": sum(kept) / len(kept),
                "first_flat": read_rows(f"metrics/{name}/train.jsonl")[0]["flat_groups"],
            }
    print(f"\n{len(seeds)} seeds, {args.steps} GRPO steps each, 8 prompts x 4 responses a step, "
          f"reward: digits >= {args.threshold}; {time.time() - started:.0f} s\n")  # fmt: skip
    print("| oversample | success, last steps | flat trained groups | each seed's success |")
    print("|---|---|---|---|")
    for arm, per in results.items():
        s = mean_interval({k: v["success"] for k, v in per.items()})
        f = mean_interval({k: v["flat_kept"] for k, v in per.items()})
        each = ", ".join(f"{per[k]['success']:.2f}" for k in seeds)
        print(f"| {arm} | {_ci(s)} | {_ci(f)} | {each} |")
    print()
    for a, b in ((str(o), "1"), (str(o), f"1, {o}x steps")):
        d = paired_difference(
            {k: v["success"] for k, v in results[b].items()},
            {k: v["success"] for k, v in results[a].items()},
        )
        verdict = "beyond the seed spread" if d.beyond_spread else "within the seed spread"
        print(f"success, oversample {a} minus {b}, paired: {_ci(d, '+.2f')}  {verdict}")
    first = mean_interval({k: v["first_flat"] for k, v in results["1"].items()})
    print(f"flat groups at the first step: {first.mean:.2f}")
    Path("summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
