"""The CPU demo's replay-mixing, continual-DPO and sparse-update experiments over
training seeds.

`clab demo` runs one seed of each (it must stay within 10 minutes); this runs the
same specs with the demo's overrides over several seeds (the mixing sweep: phase A
per seed, every strategy; DPO plain and with online EWC; K-1 against dense,
random_k and random_share), evaluates every run and prints `seed_numbers.py`'s tables: the numbers
docs/demo.md quotes.

    uv run python benchmarks/demo_seeds.py WORK_DIR [--seeds 0,1,2] [--kinds mixing,dpo,k1]
        [--set data_seed=1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from clab.demo import _DPO, _DPO_EWC, _MIXING, SERVICE_OVERRIDES
from clab.runs.sweep import run
from clab.specs import load_spec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from seed_numbers import main as print_numbers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kinds", default="mixing,dpo,k1", help="which experiments, comma-separated")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every spec after the demo's own, e.g. data_seed=1 (the draw "
        "of the data the training seeds share)",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "services").exists():
        (args.work / "services").symlink_to(REPO / "services")
    os.chdir(args.work)
    seeds = f"seeds=[{args.seeds}]"
    first = args.seeds.split(",")[0]
    ewc = [  # EWC from the plain run's stage 0 (its first seed's: the same for all)
        o if not o.startswith("model.name_or_path=") else
        f"model.name_or_path=checkpoints/demo-dpo-s{first}/initial"
        for o in _DPO_EWC
    ]  # fmt: skip
    kinds = args.kinds.split(",")
    plan = {
        "mixing": [("services/mixing-trainer.yaml", [*_MIXING, seeds])],
        "dpo": [
            ("services/dpo-trainer.yaml", [*_DPO, seeds]),
            ("services/dpo-trainer.yaml", [*ewc, seeds]),
        ],
        "k1": [
            (
                "services/k1-trainer.yaml",
                [*SERVICE_OVERRIDES["k1-trainer"], "wandb=false", seeds],
            )
        ],
    }
    plan = [(path, [*overrides, *args.set]) for kind in kinds for path, overrides in plan[kind]]
    start = time.perf_counter()
    names = []
    for path, overrides in plan:
        print(f"=== {path} at {time.perf_counter() - start:.0f} s", flush=True)
        spec = load_spec(path, overrides)
        names += [m.name for m in spec.members()]
        run(spec)
    ev = load_spec(
        "services/evaluator.yaml", ["test_size=100", "use_gpu=false", f"runs=[{','.join(names)}]"]
    )
    run(ev)
    print(f"=== done in {time.perf_counter() - start:.0f} s\n", flush=True)
    prefixes = {"mixing": "demo-mix", "dpo": "demo-dpo", "k1": "demo-k1"}
    print_numbers(["--metrics", "metrics", *(prefixes[k] for k in kinds)])


if __name__ == "__main__":
    main()
