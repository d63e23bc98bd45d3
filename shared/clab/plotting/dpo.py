"""Kind ``continual-dpo`` on the page: continual DPO, plain and EWC side by side.

Per run: its training curves; per score the evaluator stored (``reward_score``,
``win_rate`` against stage 0, ``implicit_accuracy``, ``implicit_margin``) the
annotated stage x task matrix and forgetting per task, each with 95% intervals
(as the evaluator stored them: Wilson where a cell's items are all 0 or 1, else a
bootstrap over items); the reward models' test accuracies
(``reward_models.json``), with a warning where one is at chance level; and a few
sampled completions per checkpoint and task (``samples.jsonl``), escaped.

Runs ``<name>`` and ``<name>-ewc`` (the demo's ``demo-dpo`` and ``demo-dpo-ewc``)
are related: their average scores and forgetting are drawn on the same axes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from clab.metrics.intervals import wilson
from clab.plotting import figures, generic
from clab.plotting.figures import plt
from clab.plotting.registry import Figure, Section, register_page_kind, related_by_name
from clab.plotting.runs import RunData
from clab.plotting.sparse import _clean

METHOD_SUFFIXES = ("-ewc",)
SCORE_ORDER = ("reward_score", "win_rate", "implicit_accuracy", "implicit_margin")
SAMPLES_SHOWN = 2  # completions per checkpoint and task on the page
REWARD_MODELS = "reward_models.json"

WHAT = {
    "reward_score": "the task's reward model's mean score of completions sampled from the "
    "checkpoint on the test prompts",
    "win_rate": "the share of test prompts where the checkpoint's completion outscores the "
    "stage-0 model's under the task's reward model (ties count one half; stage 0 is 0.5)",
    "implicit_accuracy": "DPO's implicit preference accuracy on the test pairs, "
    "log(pi / pi_0) of chosen above rejected, pi_0 the stage-0 model (stage 0 is 0.5)",
    "implicit_margin": "the mean implicit reward margin beta * (log(pi / pi_0)(chosen) - "
    "log(pi / pi_0)(rejected)) on the test pairs (stage 0 is 0)",
}


def related(runs: list[RunData]) -> dict[str, list[RunData]]:
    """``<name>`` with ``<name>-ewc``, the plain run first."""
    groups = related_by_name(runs, METHOD_SUFFIXES)
    return {k: sorted(v, key=lambda r: r.set_name.endswith("-ewc")) for k, v in groups.items()}


def scores(run: RunData) -> list[str]:
    """The scores the summary holds a matrix of, the primary first."""
    s = run.summary or {}
    have = set(s.get("scores", {})) | ({s["score"]} if "score" in s else set())
    order = [x for x in SCORE_ORDER if x in have]
    return order + sorted(have - set(order))


def _slug(text: str) -> str:
    return text.replace("/", "--")


def score_figures(run: RunData, out: Path) -> list[Figure]:
    """Per score: the annotated matrix, and forgetting per task, with intervals."""
    figs = []
    for score in scores(run):
        m = generic.matrix(run, score)
        if m is None:
            continue
        R, cis, stage_tasks, hib = m
        names, label = run.task_names, generic.pretty(score)
        how = generic.interval_name(run, score)
        figs.append(
            Figure(
                figures.matrix_heatmap(
                    R,
                    cis,
                    figures.stage_labels(stage_tasks, names),
                    names,
                    f"{run.name}: {label} after each stage (n = {generic.n_text(run)} per cell)",
                    out / f"eval_matrix-{score}.png",
                    value=label,
                    higher_is_better=hib,
                    stage_tasks=stage_tasks,
                ),
                f"{label}: {WHAT.get(score, 'as the preference scorer computes it')}, of every "
                f"checkpoint on every task; each cell shows its value and 95% {how}; the task "
                "each stage trained is outlined in red.",
            )
        )
        bars = figures.forgetting_bars(
            {run.name: generic.forgetting_points(run, score)},
            names,
            f"{run.name}: what each task lost ({label})",
            out / f"forgetting-{score}.png",
            label,
        )
        if bars is not None:
            figs.append(
                Figure(
                    bars,
                    f"{label}, per task trained before the last stage: forgetting (best earlier "
                    "minus final, above 0 is worse) and backward transfer (final minus right "
                    "after its own stage, below 0 is worse); bars: 95% paired bootstrap over "
                    "items.",
                )
            )
    return figs


# -- reward models ------------------------------------------------------------------------


def reward_models(run: RunData) -> dict[str, dict]:
    """reward_models.json's tasks, each with its interval (Wilson from accuracy and n
    when none is stored) and ``chance_level`` (the interval reaches 0.5)."""
    p = run.metrics_dir / REWARD_MODELS
    if not p.is_file():
        return {}
    try:
        tasks = json.loads(p.read_text()).get("tasks", {})
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for name, info in tasks.items():
        acc, n = info.get("accuracy"), info.get("n_test")
        if acc is None:
            continue
        iv = info.get("interval")
        if iv is None and n:
            iv = list(wilson(round(acc * n), int(n)))
        chance = bool(info.get("chance_level")) or (iv[0] <= 0.5 if iv is not None else acc <= 0.5)
        out[name] = {**info, "interval": iv, "chance_level": chance}
    return out


def reward_model_section(run: RunData, out: Path) -> Section | None:
    rms = reward_models(run)
    if not rms:
        return None
    names = list(rms)
    accs = [float(rms[t]["accuracy"]) for t in names]
    cis = [rms[t]["interval"] for t in names]
    chance = [t for t in names if rms[t]["chance_level"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) + 3), 3.6))
    colors = ["#c0392b" if t in chance else "#4c72b0" for t in names]
    xs = list(range(len(names)))
    ax.bar(xs, accs, color=colors, alpha=0.8, yerr=figures._yerr(accs, cis), capsize=4)
    figures.bar_labels(ax, xs, accs, cis)
    ax.axhline(0.5, color="black", ls="--", lw=1, label="chance (0.5)")
    for x, t in enumerate(names):
        if t in chance:
            ax.text(x, 0.04, "AT CHANCE", ha="center", color="white", fontsize=8, weight="bold")
    ns = sorted({str(rms[t].get("n_test")) for t in names})
    ax.set_xticks(xs, names, rotation=20 if len(names) > 4 else 0, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy on test pairs")
    ax.set_title(
        f"{run.name}: reward models, chosen scored above rejected (n = {', '.join(ns)} test "
        "pairs; bars: 95% Wilson)",
        fontsize=9,
        loc="left",
    )
    ax.grid(alpha=0.3, axis="y")
    figures.legend_outside(ax)
    fig.tight_layout()
    fig_ = Figure(
        figures.save(fig, out / "reward-models.png"),
        "Each task's reward model: how often it scores the chosen response of a test pair "
        "above the rejected one; red where its 95% interval reaches 0.5 (chance level).",
    )
    warning = "".join(_chance_warning(t, rms[t]) for t in chance)
    return Section("Reward models", [fig_], warning)


def _chance_warning(task: str, info: dict) -> str:
    lo, hi = info["interval"] or (float("nan"), float("nan"))
    e = html.escape
    return (
        f"<p class='missing warning' data-task='{e(task, quote=True)}'><b>WARNING: reward "
        f"model {e(task)} is at chance level</b> (accuracy {info['accuracy']:.3f}, 95% "
        f"interval [{lo:.3f}, {hi:.3f}] reaches 0.5, n = {e(str(info.get('n_test')))}): its "
        "reward score and win rate cannot show what the policy learned or forgot on this "
        "task.</p>"
    )


# -- samples ------------------------------------------------------------------------------


def samples_table(run: RunData) -> str:
    """A few completions per checkpoint and task, with the stage-0 completion of the same
    prompt and both rewards; every text escaped."""
    if not run.samples:
        return ""
    names = run.task_names
    st = (run.summary or {}).get("stage_tasks") or []
    shown: dict[tuple, int] = {}
    e = html.escape
    out = [
        "<table class='samples'><tr><th>after stage</th><th>task</th><th>prompt</th>"
        "<th>completion</th><th>reward</th><th>stage-0 completion</th><th>stage-0 reward</th></tr>"
    ]
    for x in sorted(run.samples, key=lambda x: (x.get("stage", 0), x.get("task", 0))):
        stage, task = x.get("stage"), x.get("task")
        if shown.get((stage, task), 0) >= SAMPLES_SHOWN:
            continue
        shown[stage, task] = shown.get((stage, task), 0) + 1
        if stage == 0:
            label = "0: initial"
        elif isinstance(stage, int) and stage < len(st) and st[stage] is not None:
            label = f"{stage}: after {names[st[stage]]}"
        else:
            label = str(x.get("stage_name", stage))
        tname = names[task] if isinstance(task, int) and task < len(names) else task

        def num(v) -> str:
            return "-" if v is None else f"{float(v):.3f}"

        out.append(
            f"<tr><td>{e(label)}</td><td>{e(str(tname))}</td>"
            f"<td class='text prompt'>{e(_clean(str(x.get('prompt', ''))))}</td>"
            f"<td class='text'>{e(_clean(str(x.get('response', ''))))}</td>"
            f"<td>{num(x.get('reward'))}</td>"
            f"<td class='text'>{e(_clean(str(x.get('baseline_response', ''))))}</td>"
            f"<td>{num(x.get('baseline_reward'))}</td></tr>"
        )
    out.append("</table>")
    return (
        f"<p class='note'>Up to {SAMPLES_SHOWN} completions per checkpoint and task, sampled "
        "with the same seed at every stage, beside the stage-0 model's completion of the same "
        "prompt; rewards from the task's reward model. A reading aid only: the scores above "
        "are the measure.</p>" + "\n".join(out)
    )


def run_figures(run: RunData, out: Path) -> list[Section]:
    sections = []
    t = generic.training_section(run, out)
    if t is not None:
        sections.append(t)
    figs = score_figures(run, out)
    if figs:
        sections.append(Section("Evaluation: every score after every stage", figs))
    rm = reward_model_section(run, out)
    if rm is not None:
        sections.append(rm)
    table = samples_table(run)
    if table:
        sections.append(Section("Sampled completions", [], table))
    return sections


# -- plain and EWC on the same axes ------------------------------------------------------


def group_figures(label: str, runs: list[RunData], out: Path) -> list[Section]:
    """The runs' average score after each stage (one panel per score) and, per score,
    forgetting and backward transfer per task, with 95% intervals."""
    have = [r for r in runs if generic.matrix(r) is not None]
    if len(have) < 2:
        return []
    common = [s for s in scores(have[0]) if all(s in scores(r) for r in have[1:])]
    if not common:
        return []
    slug = _slug(label)
    fig, axes = plt.subplots(len(common), 1, figsize=(11, 3.2 * len(common)), squeeze=False)
    for ax, score in zip(axes[:, 0], common, strict=True):
        runs_avg = {}
        for r in have:
            R, _, st, _ = generic.matrix(r, score)
            s = r.summary
            m = s if score == s["score"] else s["scores"][score]
            avg = m.get("average_accuracy_per_stage") or list(R.mean(axis=1))
            runs_avg[r.name] = (
                avg,
                generic.average_cis(r, score),
                figures.stage_labels(st, s["task_names"]),
            )
        figures.compare_average(
            runs_avg,
            f"average {generic.pretty(score)}",
            f"Average {generic.pretty(score)} over tasks after each stage (bars: 95% intervals)",
            ax,
        )
    fig.tight_layout()
    figs = [
        Figure(
            figures.save(fig, out / "compare" / f"{slug}-dpo-average.png"),
            "Plain DPO and EWC on the same axes: every score's average over tasks after each "
            "stage (one panel per score).",
        )
    ]
    for score in common:
        bars = figures.forgetting_bars(
            {r.name: generic.forgetting_points(r, score) for r in have},
            have[0].task_names,
            f"{label}: forgetting and backward transfer per task ({generic.pretty(score)})",
            out / "compare" / f"{slug}-forgetting-{score}.png",
            generic.pretty(score),
        )
        if bars is not None:
            figs.append(
                Figure(
                    bars,
                    f"{generic.pretty(score)}: per task and run, with 95% paired-bootstrap "
                    "intervals over items.",
                )
            )
    return [Section("Plain and EWC on the same axes", figs)]


register_page_kind(
    "continual-dpo",
    title="Continual DPO (preference tasks in order)",
    run_figures=run_figures,
    group_figures=group_figures,
    related=related,
    description=(
        "A policy trained with DPO on preference tasks in order; every checkpoint scored on "
        "every task: reward-model score (primary), win rate against stage 0, implicit "
        "preference accuracy and margin. <name> and <name>-ewc side by side."
    ),
)
