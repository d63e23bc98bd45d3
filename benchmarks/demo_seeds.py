"""The CPU demo's replay-mixing and continual-DPO experiments over training seeds.

`clab demo` runs one seed of each (it must stay within 10 minutes); this runs the
same specs with the demo's overrides over several seeds (the mixing sweep: phase A
per seed, every strategy; DPO plain and with online EWC), evaluates every run and
prints `seed_numbers.py`'s tables: the numbers docs/demo.md quotes.

    uv run python benchmarks/demo_seeds.py WORK_DIR [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from clab.demo import _DPO, _DPO_EWC, _MIXING
from clab.runs.sweep import run
from clab.specs import load_spec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from seed_numbers import main as print_numbers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
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
    plan = [
        ("services/mixing-trainer.yaml", [*_MIXING, seeds]),
        ("services/dpo-trainer.yaml", [*_DPO, seeds]),
        ("services/dpo-trainer.yaml", [*ewc, seeds]),
    ]
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
    print_numbers(["--metrics", "metrics", "demo-mix", "demo-dpo"])


if __name__ == "__main__":
    main()
