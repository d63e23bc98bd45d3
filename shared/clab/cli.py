"""The ``clab`` command: the same line runs a service in Compose or by hand.

Each command imports what it runs inside its own branch, so ``clab --help`` and
``clab validate`` start without torch, the trainers or the plotter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clab import __version__
from clab.errors import EXIT_USER_ERROR, ClabError
from clab.specs import KINDS, load_spec, read_spec_data, validate_spec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clab",
        description="clab: continual-learning experiments on language models. "
        "Each service is a YAML spec under services/; run it with `clab run`.",
        epilog="Known spec kinds: " + ", ".join(sorted(KINDS)),
    )
    p.add_argument("--version", action="version", version=f"clab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("run", "validate a spec, then run it"),
        ("validate", "check a spec and print it with every default filled in"),
    ):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("spec", help="path to a spec YAML file, e.g. services/data-generator.yaml")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec field (dotted keys, YAML values); repeatable",
        )
        if name == "run":
            sp.add_argument(
                "--seeds",
                metavar="S,S,...",
                help="training seeds, e.g. 0,1,2: one run per seed, named <name>-s<seed> "
                "(the spec's `seeds`)",
            )
            sp.add_argument(
                "--restart",
                action="store_true",
                help="a training run that exists already is moved aside (renamed, never "
                "deleted) and started again",
            )
    pl = sub.add_parser(
        "plan",
        help="a training spec's schedule and wall time, and its memory per GPU",
        description="Prints the spec's schedule (steps a stage and in all, per seed, from the "
        "data sets' sizes), the tokens a step, and the wall time from a throughput given or "
        "measured; for kind countdown-rl also the estimated memory of each part on one GPU "
        "(weights, gradients, optimizer state, activations, logits, KV cache or vLLM engine), "
        "the peak and whether it fits resources.gpu_memory_gb. Nothing is loaded or launched "
        "unless --measure is given. Exit 0 whether or not it fits; 2 on a bad spec.",
    )
    pl.add_argument(
        "spec", help="path to a training spec, e.g. services/curriculum-trainer-1.5b.yaml"
    )
    pl.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field as `clab run` does, e.g. resources.strategy=fsdp",
    )
    speed = pl.add_mutually_exclusive_group()
    speed.add_argument(
        "--tokens-per-s",
        type=float,
        metavar="N",
        help="one GPU's (one worker's) tokens/s at the spec's shapes, prompt + response, as "
        "benchmarks/bench_gpu_ppo.py prints it; times the workers for the run (a run's "
        "train.jsonl tokens_per_s is already summed over the workers: divide it by them)",
    )
    speed.add_argument(
        "--step-seconds",
        type=float,
        metavar="S",
        help="seconds one step of the whole run takes (train.jsonl's step_time, or an "
        "emulated benchmark's step)",
    )
    speed.add_argument(
        "--measure",
        action="store_true",
        help="time a few steps of the spec's own shapes on this machine (PPO: one worker's "
        "share of a step; random weights when the model folder is not here)",
    )
    pl.add_argument(
        "--measure-steps",
        type=int,
        default=3,
        metavar="K",
        help="--measure: steps timed after the warm-up (default 3; their median is the step)",
    )
    ph = sub.add_parser(
        "plot-history",
        help="overlay validation-loss histories (replay mixing) in one figure",
        description="Overlays any number of history JSON files (steps, <task>_loss lists, "
        "name): one panel per task, one line per file.",
    )
    ph.add_argument("files", nargs="+", help="history files or globs")
    ph.add_argument("-o", "--output", required=True, help="the PNG to write")
    pr = sub.add_parser(
        "report",
        help="print runs' headline numbers (average, BWT, forgetting, 95%% intervals)",
        description="The numbers of plots/index.html in the terminal. An experiment's name "
        "(demo-k1: its methods and seeds) prints, for several seeds, the mean over seeds with "
        "a Student-t interval over seeds and each seed's value, and the paired differences "
        "between related runs; then each run's headline and per-task tables with intervals "
        "over test items.",
    )
    pr.add_argument(
        "runs",
        nargs="+",
        metavar="NAME",
        help="runs or experiments under --metrics (an experiment: all its seeds and variants)",
    )
    pr.add_argument(
        "--json", action="store_true", help="the same numbers as JSON, per-seed values included"
    )
    pr.add_argument("--metrics", default="metrics", help="the metrics volume (default: metrics)")
    pr.add_argument(
        "--checkpoints", default="checkpoints", help="where run.json says each run's kind"
    )
    sd = sub.add_parser(
        "specs",
        help="the reference of every spec kind's keys, as markdown (docs/specs.md)",
        description="Every key of every kind: type, default, bounds and description, "
        "written from the spec models `clab validate` checks against.",
    )
    sd.add_argument("-o", "--output", help="write the page here (e.g. docs/specs.md), not stdout")
    sub.add_parser(
        "demo",
        help="the whole stack at tiny scale on this machine (CPU)",
        description="Runs every service's spec with tiny-scale overrides: data, "
        "the curriculum trainer and its control, evaluator, plotter.",
    )
    return p


def _seed_list(text: str) -> str:
    try:
        return ", ".join(str(int(x)) for x in text.split(","))
    except ValueError:
        raise ClabError(
            f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2"
        ) from None


def _plan(args: argparse.Namespace) -> str:
    """Memory (countdown-rl) and schedule, as ``clab plan`` prints them."""
    from clab.training import schedule as sc
    from clab.training.memory_plan import estimate, render

    spec = validate_spec(args.spec, read_spec_data(args.spec, args.overrides))
    sched = sc.schedule(spec, args.spec)  # refuses kinds that do not train
    if args.measure_steps < 1:
        raise ClabError(f"--measure-steps: at least 1 (got {args.measure_steps})")
    step = None
    if args.tokens_per_s is not None:
        step = sc.from_tokens_per_s(sched, args.tokens_per_s)
    elif args.step_seconds is not None:
        step = sc.from_step_seconds(args.step_seconds)
    elif args.measure:
        from clab.training.measure import measure

        step = measure(spec, steps=args.measure_steps)
    title = f"clab plan {args.spec}" + "".join(f" --set {o}" for o in args.overrides)
    if spec.kind == "countdown-rl":
        memory = render(estimate(spec), title)
    else:
        memory = f"{title}\nmemory    not modelled for kind {spec.kind} (countdown-rl only)"
    return memory + "\n\n" + sc.render(sched, step)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "plot-history":
            from pathlib import Path

            from clab.plotting.history import expand, plot_histories

            print(plot_histories(expand(args.files), Path(args.output)))
            return 0
        if args.command == "report":
            from pathlib import Path

            from clab.plotting.report import report, report_json

            show = report_json if args.json else report
            print(show(args.runs, Path(args.metrics), Path(args.checkpoints)))
            return 0
        if args.command == "plan":
            print(_plan(args))
            return 0
        if args.command == "specs":
            from clab.spec_docs import render

            if args.output:
                from pathlib import Path

                Path(args.output).write_text(render())
            else:
                print(render(), end="")
            return 0
        if args.command == "demo":
            from clab.demo import run_demo

            run_demo()
            return 0
        spec = load_spec(args.spec, args.overrides)
        if getattr(args, "seeds", None) is not None:  # "" too: an empty list is an error
            if "seeds" not in type(spec).model_fields:
                raise ClabError(f"--seeds: {args.spec} is not a training run (kind {spec.kind})")
            seeds = f"seeds=[{_seed_list(args.seeds)}]"
            spec = load_spec(args.spec, [*args.overrides, seeds])
        if args.command == "validate":
            import yaml

            print(f"# {args.spec}: valid")
            members = getattr(spec, "members", None)
            if members is not None:  # a training spec: the runs `clab run` will make
                print("# runs: " + ", ".join(m.name for m in members()))
            print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), end="")
            return 0
        from clab.runs.spec import RunSpec
        from clab.runs.sweep import run

        if args.restart and not isinstance(spec, RunSpec):
            raise ClabError(f"--restart: {args.spec} is not a training run (kind {spec.kind})")
        run(spec, restart=args.restart)
    except ClabError as e:
        print(f"clab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as e:
        # a path given (or a volume) that is a folder where a file goes, a file where a
        # folder goes, or not ours to write: the user's to fix, named with the path
        print(f"clab: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            "clab: interrupted; files already written are complete, nothing is half-written",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
