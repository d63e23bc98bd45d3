"""Kind ``k1-lm`` on the page: sparse updates, the methods of a sweep
(``<name>-k1``, ``-dense``, ``-random_k``, ``-random_share``) side by side.

Per method: its training curves. Per sweep: the perplexity matrices on one
colour scale, forgetting of the first corpus per method, the fraction of
parameters updated over steps, which parameter groups were selected, and
generated samples side by side. Samples are a reading aid only: forgetting is
judged from the perplexities.
"""

from __future__ import annotations

import html
import unicodedata
from pathlib import Path

import numpy as np

from clab.plotting import figures, generic
from clab.plotting.figures import plt
from clab.plotting.registry import Figure, Section, register_page_kind, related_by_name
from clab.plotting.runs import RunData, per_task

METHOD_SUFFIXES = ("-k1", "-dense", "-random_k", "-random_share")


def related(runs: list[RunData]) -> dict[str, list[RunData]]:
    """A sweep's methods together, in the order k1, dense, random_k, random_share."""

    def rank(r: RunData) -> int:
        return next((i for i, m in enumerate(METHOD_SUFFIXES) if r.set_name.endswith(m)), 99)

    return {k: sorted(v, key=rank) for k, v in related_by_name(runs, METHOD_SUFFIXES).items()}


def method_of(run: RunData, prefix: str) -> str:
    """The method's short name: the suffix after the sweep's name."""
    rest = run.name[len(prefix) :].lstrip("-/") if run.name.startswith(prefix) else ""
    return rest or run.name


def run_figures(run: RunData, out: Path) -> list[Section]:
    """One method's training curves (the evaluation figures are drawn per sweep)."""
    s = generic.training_section(run, out)
    return [s] if s else []


def _matrices(prefix: str, runs: list[RunData], out: Path) -> Figure | None:
    have = [r for r in runs if generic.matrix(r) is not None]
    if not have:
        return None
    score = generic.pretty(have[0].summary["score"])
    mats = [generic.matrix(r) for r in have]
    norm = figures.matrix_norm([m[0] for m in mats], score, mats[0][3])
    names = have[0].summary["task_names"]
    fig, axes = plt.subplots(
        1,
        len(have),
        figsize=(3.2 * len(have) * max(1, len(names) / 3) + 1.5, 0.6 * len(mats[0][0]) + 2.2),
        squeeze=False,
    )
    for ax, r, (R, cis, st, hib) in zip(axes[0], have, mats, strict=True):
        figures.matrix_heatmap(
            R,
            cis,
            figures.stage_labels(st, names) if ax is axes[0][0] else [""] * len(R),
            names,
            f"{method_of(r, prefix)}\n(n = {generic.n_text(r)} windows per cell)",
            Path(),
            value=score,
            higher_is_better=hib,
            stage_tasks=st,
            ax=ax,
            norm=norm,
        )
        if ax is not axes[0][0]:
            ax.set_ylabel("")
    cmap = "viridis" if mats[0][3] else "viridis_r"
    fig.colorbar(
        plt.cm.ScalarMappable(norm=norm, cmap=cmap),
        ax=list(axes[0]),
        label=f"{score} (lower is better)" if not mats[0][3] else score,
    )
    fig.suptitle(f"{prefix}: test {score} after each stage, per method (one colour scale)", y=1.04)
    path = figures.save(fig, out / "compare" / f"{_slug(prefix)}-matrices.png")
    return Figure(
        path,
        f"R[stage, corpus] per method: test {score} of every checkpoint on every corpus; each "
        f"cell shows its value and 95% {generic.interval_name(have[0])} (windows of the test "
        "split); the corpus each stage trained is outlined in red.",
    )


def _forgetting(prefix: str, runs: list[RunData], out: Path) -> Figure | None:
    have = [r for r in runs if generic.matrix(r) is not None and len(r.summary["matrix"]) > 2]
    if not have:
        return None
    first = have[0].summary["task_names"][0]
    score = generic.pretty(have[0].summary["score"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for k, r in enumerate(have):
        R, cis, _, _ = generic.matrix(r)
        x = np.arange(len(R)) + (k - (len(have) - 1) / 2) * 0.05
        ci = [row[0] for row in cis] if cis else None
        a.errorbar(
            x,
            R[:, 0],
            yerr=figures._yerr(list(R[:, 0]), ci),
            marker="o",
            capsize=3,
            color=figures.color(k),
            label=method_of(r, prefix),
        )
    labels = figures.stage_labels(have[0].summary["stage_tasks"], have[0].summary["task_names"])
    a.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    a.set_ylabel(f"{score} on {first}")
    a.set_title(f"{score} on the first corpus ({first}) after each stage", fontsize=9, loc="left")
    a.grid(alpha=0.3)
    figures.legend_outside(a)
    vals, errs, names = [], [], []
    for r in have:
        row = per_task(r)[0]
        if row.forgetting.value is None:
            continue
        vals.append(row.forgetting.value)
        errs.append(row.forgetting.ci)
        names.append(method_of(r, prefix))
    if vals:
        b.bar(
            range(len(vals)),
            vals,
            color=[figures.color(k) for k in range(len(vals))],
            alpha=0.75,
            yerr=figures._yerr(vals, errs),
            capsize=4,
        )
        figures.bar_labels(b, list(range(len(vals))), vals, errs)
        b.axhline(0, color="black", lw=0.8)
        b.set_xticks(range(len(vals)), names, rotation=15, ha="right", fontsize=9)
    b.set_title(
        f"forgetting of {first}: final minus best earlier {score}\n(above 0 is worse; below 0: "
        "it ended better than ever; bars: 95% paired bootstrap over windows)",
        fontsize=9,
    )
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return Figure(
        figures.save(fig, out / "compare" / f"{_slug(prefix)}-forgetting.png"),
        f"Forgetting of the first corpus ({first}) per method: left, its test {score} after "
        "every stage; right, how much worse it ended than its best after an earlier stage.",
    )


def _updates(prefix: str, runs: list[RunData], out: Path) -> list[Figure]:
    logged = [r for r in runs if any("fraction_updated" in x for x in r.train)]
    if not logged:
        return []
    fig, ax = plt.subplots(figsize=(11, 3.4))
    names = logged[0].task_names
    figures.shade_stages(ax, figures.stage_spans(logged[0].train), names, top=True)
    figures.compare_train(
        {method_of(r, prefix): r.train for r in logged},
        "fraction_updated",
        "Fraction of parameters updated at each step, per method",
        "fraction of parameters",
        ax,
    )
    ax.set_ylim(0, 1.05)
    out_figs = [
        Figure(
            figures.save(fig, out / "compare" / f"{_slug(prefix)}-fraction-updated.png"),
            "Counted in parameters, not groups: the two vocabulary-sized groups (embeddings "
            "and head) dominate it.",
        )
    ]
    sel = [r for r in logged if any(x.get("selected") for x in r.train)]
    if sel:
        groups: list[str] = []
        for r in sel:
            for g in figures.selection_counts(r.train)[0]:
                if g not in groups:
                    groups.append(g)
        fig, axes = plt.subplots(
            1, len(sel), figsize=(2.4 * len(sel) + 2.5, 0.32 * len(groups) + 2), squeeze=False
        )
        for k, (ax, r) in enumerate(zip(axes[0], sel, strict=True)):
            im = figures.selection_heatmap(r.train, names, method_of(r, prefix), ax, groups)
            if k:
                ax.set_yticks(range(len(groups)), [""] * len(groups))
        fig.colorbar(im, ax=list(axes[0]), label="share of the stage's steps")
        fig.suptitle(f"{prefix}: parameter groups updated in each stage")
        out_figs.append(
            Figure(
                figures.save(fig, out / "compare" / f"{_slug(prefix)}-group-selection.png"),
                "Per method and stage, the share of the stage's steps that updated each "
                "parameter group (1.00: every step; dense updates every group).",
            )
        )
    return out_figs


def _clean(text: str) -> str:
    """Control characters made visible, so a sample never hides or garbles the page."""
    return "".join(
        "\ufffd" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in text
    )


def samples_table(prefix: str, runs: list[RunData]) -> str:
    """Continuations of the same prompts side by side, one column per method."""
    with_samples = [r for r in runs if r.samples]
    if not with_samples:
        return ""
    names = with_samples[0].task_names
    stages = sorted({x["stage"] for r in with_samples for x in r.samples})
    st = (with_samples[0].summary or {}).get("stage_tasks") or []
    head = "".join(f"<th>{html.escape(method_of(r, prefix))}</th>" for r in with_samples)
    out = [
        f"<table class='samples'><tr><th>after stage</th><th>corpus</th><th>prompt</th>{head}</tr>"
    ]
    for stage in stages:
        label = (
            "0: initial"
            if stage == 0
            else (f"{stage}: after {names[st[stage]]}" if stage < len(st) else str(stage))
        )
        keys = []
        for r in with_samples:
            for x in r.samples:
                if x["stage"] == stage and (x.get("task"), x.get("prompt")) not in keys:
                    keys.append((x.get("task"), x.get("prompt")))
        for task, prompt in keys:
            cells = []
            for r in with_samples:
                hit = next(
                    (
                        x
                        for x in r.samples
                        if x["stage"] == stage
                        and x.get("task") == task
                        and x.get("prompt") == prompt
                    ),
                    None,
                )
                text = "" if hit is None else _clean(hit.get("response", ""))
                cells.append(f"<td class='text'>{html.escape(text)}</td>")
            corpus = names[task] if isinstance(task, int) and task < len(names) else task
            out.append(
                f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(corpus))}</td>"
                f"<td class='text prompt'>{html.escape(_clean(prompt or ''))}</td>"
                + "".join(cells)
                + "</tr>"
            )
    out.append("</table>")
    return (
        "<p class='note'>Continuations of the same prompts (the first tokens of test "
        "windows), sampled with the same seed for every method and stage. A reading aid "
        "only: forgetting is measured by the perplexities above, not judged from samples.</p>"
        + "\n".join(out)
    )


def _slug(prefix: str) -> str:
    return prefix.replace("/", "--")


def sweep_figures(prefix: str, runs: list[RunData], out: Path) -> list[Section]:
    figs = [f for f in (_matrices(prefix, runs, out), _forgetting(prefix, runs, out)) if f]
    figs += _updates(prefix, runs, out)
    title = (
        f"{prefix}: the methods on the same scales" if len(runs) > 1 else f"{prefix}: evaluation"
    )
    sections = [Section(title, figs)] if figs else []
    table = samples_table(prefix, runs)
    if table:
        sections.append(Section(f"{prefix}: generated samples side by side", [], table))
    return sections


register_page_kind(
    "k1-lm",
    title="Sparse updates (K-1) on a language model",
    run_figures=run_figures,
    group_figures=sweep_figures,
    related=related,
    description=(
        "Test perplexity per corpus (lower is better) over windows of each corpus's test "
        "split; each method is one run, a sweep's methods are compared side by side."
    ),
)
