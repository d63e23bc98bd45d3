"""Kind ``countdown-rl`` on the page: the curriculum trainers and their random-split
control, each with the generic figures, and each curriculum run against its
control on the same axes."""

from __future__ import annotations

from pathlib import Path

from clab.plotting import figures, generic
from clab.plotting.figures import plt
from clab.plotting.registry import Figure, Section, register_page_kind
from clab.plotting.runs import RunData


def control_of(name: str, names: list[str]) -> str | None:
    """The random-split control of a curriculum run, by the naming the services use."""
    if "curriculum" in name and name.replace("curriculum", "control") in names:
        return name.replace("curriculum", "control")
    return None


def variant_of(name: str, names: list[str]) -> str | None:
    """The curriculum run that ``name`` is a variant of, ``<base>-<variant>`` (a lever
    on the same warmed model: ``benchmarks/gpu_demo.py --variant``)."""
    bases = [n for n in names if "curriculum" in n and name.startswith(n + "-")]
    return max(bases, key=len, default=None)


def related(runs: list[RunData]) -> dict[str, list[RunData]]:
    """Each curriculum run with its variants and its control, the base run first and
    the control last (the seeds' comparisons are against the first); a sweep's
    nested branches together."""
    names = list(dict.fromkeys(r.set_name for r in runs))  # seeds: their shared name
    partner = {control_of(n, names): n for n in names if control_of(n, names)}
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        key = partner.get(r.set_name) or variant_of(r.set_name, names) or r.set_name
        groups.setdefault(key, []).append(r)
    return {
        k: sorted(v, key=lambda r, k=k: ("control" in r.name, r.set_name != k))
        for k, v in groups.items()
    }


def compare(label: str, runs: list[RunData], out: Path) -> list[Section]:
    """Curriculum against control: average success after each stage and the training
    success of the group being trained, on the same axes; forgetting per group."""
    if len(runs) < 2:
        return []
    have = [r for r in runs if generic.matrix(r) is not None]
    names = " vs ".join(r.name for r in runs)
    slug = "-vs-".join(r.slug for r in runs)
    rows = 2 if have else 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.6 * rows))
    axes = list(axes) if rows > 1 else [axes]
    if have:
        score = generic.pretty(have[0].summary["score"])
        figures.compare_average(
            {
                r.name: (
                    r.summary["average_accuracy_per_stage"],
                    generic.average_cis(r),
                    figures.stage_labels(r.summary["stage_tasks"], r.summary["task_names"]),
                )
                for r in have
            },
            f"average {score}",
            f"Average {score} over groups after each stage, each run on its own groups' test "
            f"problems (n = {', '.join(generic.n_text(r) for r in have)} per group; "
            "bars: 95% Wilson interval on the pooled problems)",
            axes[0],
        )
    figures.compare_train(
        {r.name: r.train for r in runs},
        "success_rate",
        "Training success on the group being trained (rollouts), per run",
        "success rate",
        axes[-1],
    )
    fig.suptitle(names, fontsize=10)
    fig.tight_layout()
    figs = [
        Figure(
            figures.save(fig, out / "compare" / f"{slug}.png"),
            "The runs on the same axes. Top: what the evaluator measured after each stage; "
            "bottom: what the trainer saw during each stage.",
        )
    ]
    if have:
        bars = figures.forgetting_bars(
            {r.name: generic.forgetting_points(r) for r in have},
            have[0].summary["task_names"],
            f"{names}: forgetting and backward transfer per group",
            out / "compare" / f"{slug}-forgetting.png",
            generic.pretty(have[0].summary["score"]),
        )
        if bars is not None:
            figs.append(
                Figure(
                    bars,
                    "Per group and run, with 95% paired-bootstrap intervals. A control's "
                    "groups are random splits, not operator groups: compare the sizes.",
                )
            )
    return [Section("On the same axes", figs)]


register_page_kind(
    "countdown-rl",
    title="Curriculum RL on Countdown (and its random-split control)",
    run_figures=generic.run_figures,
    group_figures=compare,
    related=related,
    description=(
        "Success is the fraction of test problems answered exactly right, greedy, per "
        "operator group; stage 0 is the model before RL (after its warm-up)."
    ),
)
