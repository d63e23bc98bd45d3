"""The ``plot`` kind (service ``plotter``): figures per run, runs compared, one page.

For each run in ``metrics/``: ``plots/<run>/training_curves.png`` (success
rate, weight change, loss, normalized gradient, response length against the
global step, stages shaded by group), ``eval_matrix.png`` (R as a heatmap)
and ``eval_success.png`` (success per group after each stage). In
``plots/compare/``: the runs overlaid, each curriculum run beside its
random-split control. ``plots/index.html`` shows every figure and the
summary tables; it reads the PNGs by relative path, so the folder can be
opened from the volume or copied anywhere.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm import tqdm

from clab.errors import ClabError
from clab.evaluation.evaluator import read_eval, value_matrix
from clab.plotting import figures
from clab.specs import Spec
from clab.storage.atomic import write_text
from clab.tracking.metrics_log import read_rows

SUMMARY_KEYS = [
    ("average_accuracy", "average accuracy"),
    ("backward_transfer", "backward transfer"),
    ("forgetting", "forgetting"),
    ("forward_transfer", "forward transfer"),
]


class PlotSpec(Spec):
    """Spec of the plotter."""

    kind: Literal["plot"] = "plot"
    metrics: Path = Field(Path("metrics"), description="where the runs' metrics are")
    output: Path = Field(Path("plots"), description="figures and index.html")
    runs: list[str] | None = Field(None, description="runs to plot; null: every run found")

    def reads(self) -> list[Path]:
        return [self.metrics]

    def writes(self) -> list[Path]:
        return [self.output]

    def run(self) -> None:
        page = make_plots(self)
        print(f"open {page.resolve()} in a browser")


def control_of(name: str, names: list[str]) -> str | None:
    """The random-split control of a curriculum run, by the naming the services use."""
    for a, b in (("curriculum", "control"),):
        if a in name and name.replace(a, b) in names:
            return name.replace(a, b)
    return None


SWEEP_METHODS = ("-k1", "-dense", "-random_k")


def sweeps(summaries: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Runs of one sweep (``<name>-<method>``, as the k1-trainer names them) grouped."""
    out: dict[str, dict[str, dict]] = {}
    for name, s in summaries.items():
        for m in SWEEP_METHODS:
            if name.endswith(m):
                out.setdefault(name[: -len(m)], {})[name] = s
    return {p: m for p, m in out.items() if len(m) > 1}


def make_plots(spec: PlotSpec) -> Path:
    if spec.runs is not None:
        names = spec.runs
        missing = [n for n in names if not (spec.metrics / n).is_dir()]
        if missing:
            raise ClabError(f"runs: no metrics for {', '.join(missing)} under {spec.metrics}/")
    else:
        names = (
            sorted(d.name for d in spec.metrics.iterdir() if d.is_dir())
            if spec.metrics.is_dir()
            else []
        )
    names = [
        n
        for n in names
        if (spec.metrics / n / "train.jsonl").is_file()
        or (spec.metrics / n / "eval.parquet").is_file()
    ]
    if not names:
        raise ClabError(
            f"metrics: no run metrics under {spec.metrics}/: train (and evaluate) a run first"
        )
    out = spec.output
    sections, train_rows, summaries = [], {}, {}
    for name in tqdm(names, desc="plotting runs", unit="run", dynamic_ncols=True):
        figs = []
        rows = read_rows(spec.metrics / name / "train.jsonl")
        train_rows[name] = rows
        if rows:
            figs.append(
                figures.training_curves(
                    rows, f"{name}: training", out / name / "training_curves.png"
                )
            )
        if any("selected" in r for r in rows):
            figs.append(
                figures.group_selection(
                    rows, f"{name}: groups updated", out / name / "group_selection.png"
                )
            )
        eval_rows = read_eval(spec.metrics / name / "eval.parquet")
        summary_path = spec.metrics / name / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        if eval_rows:
            primary = next(r["metric"] for r in eval_rows if r["primary"])
            names_by_task = {r["task"]: r["task_name"] for r in eval_rows}
            groups = [names_by_task[j] for j in sorted(names_by_task)]
            m = value_matrix(eval_rows, primary, len(groups))
            if m is not None:
                R, _ = m
                labels = ["initial"] + [
                    next(r["stage_name"] for r in eval_rows if r["stage"] == i)
                    for i in range(1, R.shape[0])
                ]
                figs.append(
                    figures.matrix_heatmap(
                        R,
                        labels,
                        groups,
                        f"{name}: R[stage, task] ({primary})",
                        out / name / "eval_matrix.png",
                        value=primary.replace("_", " "),
                    )
                )
                figs.append(
                    figures.success_per_group(
                        R,
                        labels,
                        groups,
                        f"{name}: {primary.replace('_', ' ')} per task",
                        out / name / "eval_success.png",
                        value=primary.replace("_", " "),
                    )
                )
        if summary:
            summaries[name] = summary
        sections.append((name, figs, summary))
    compare = []
    if len(names) > 1:
        for key, label in (
            ("success_rate", "success rate"),
            ("weight_change_run", "normalized weight change"),
            ("response_length_mean", "response length"),
        ):
            have = {n: r for n, r in train_rows.items() if any(key in x for x in r)}
            if len(have) > 1:  # only what the runs log (an LM run has no success rate)
                compare.append(
                    figures.compare_curves(have, key, label, out / "compare" / f"{key}.png")
                )
        by_score: dict[str, dict] = {}
        for n, s in summaries.items():  # compare like with like: success with success
            by_score.setdefault(s["score"], {})[n] = s
        for score, group in by_score.items():
            if len(group) > 1:
                file = "average_accuracy" if score == "success_rate" else f"average_{score}"
                compare.append(
                    figures.compare_average_accuracy(group, out / "compare" / f"{file}.png")
                )
        for prefix, members in sweeps(summaries).items():
            compare.append(
                figures.first_task_by_method(
                    members,
                    f"{prefix}: the first task after each stage, by method",
                    out / "compare" / f"{prefix}-first-task.png",
                )
            )
        for name in names:
            other = control_of(name, names)
            if other:
                pair = {name: train_rows[name], other: train_rows[other]}
                compare.append(
                    figures.compare_curves(
                        pair,
                        "success_rate",
                        f"success rate, {name} vs its control",
                        out / "compare" / f"{name}-vs-{other}.png",
                    )
                )
    extra = [
        sweep_table(prefix, members, spec.metrics) for prefix, members in sweeps(summaries).items()
    ]
    page = out / "index.html"
    write_text(page, render_index(out, sections, compare, summaries, extra))
    return page


def sweep_table(prefix: str, members: dict[str, dict], metrics: Path) -> str:
    """The methods of one sweep side by side: the first task after each stage and its
    forgetting, then one seeded sample per stage on the first task, per method."""
    first = next(iter(members.values()))
    tasks, score = first["task_names"], first["score"].replace("_", " ")
    head = "".join(f"<th>after {html.escape(t)}</th>" for t in tasks[: len(first["matrix"]) - 1])
    rows = [
        f"<h2>{html.escape(prefix)}: methods side by side</h2>",
        f"<table><tr><th>method</th><th>initial</th>{head}"
        f"<th>forgetting of {html.escape(tasks[0])}</th><th>final average</th></tr>",
    ]
    for name, s in members.items():
        cells = "".join(f"<td>{row[0]:.1f}</td>" for row in s["matrix"])
        forgot = s.get("forgetting_per_task", {}).get("0")
        rows.append(
            f"<tr><td>{html.escape(name)}</td>{cells}<td>{_fmt(forgot)}</td>"
            f"<td>{_fmt(s.get('average_accuracy'))}</td></tr>"
        )
    rows.append(f"</table><p>{score} on {html.escape(tasks[0])} (lower is better).</p>")
    samples = {n: read_rows(metrics / n / "samples.jsonl") for n in members}
    stages = sorted({r["stage"] for rs in samples.values() for r in rs if r.get("task") == 0})
    if stages:
        rows.append(
            f"<h3>Samples on {html.escape(tasks[0])} (the same prompt and seed)</h3>"
            "<table><tr><th>stage</th>"
            + "".join(f"<th>{html.escape(n)}</th>" for n in members)
            + "</tr>"
        )
        for st in stages:
            cells = []
            for n in members:
                hit = next((r for r in samples[n] if r["stage"] == st and r.get("task") == 0), None)
                text = "" if hit is None else (hit.get("prompt", "") + " | " + hit["response"])
                cells.append(f"<td style='text-align:left'>{html.escape(text[:160])}</td>")
            rows.append(f"<tr><td>{st}</td>{''.join(cells)}</tr>")
        rows.append("</table>")
    return "\n".join(rows)


def _fmt(v) -> str:
    return (
        "-"
        if v is None
        else f"{v:+.3f}"
        if isinstance(v, float) and v < 0
        else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))
    )


def render_index(out: Path, sections, compare, summaries: dict, extra=()) -> str:
    def img(p: Path) -> str:
        rel = p.relative_to(out).as_posix()
        return f'<figure><img src="{html.escape(rel)}" alt="{html.escape(rel)}"></figure>'

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>clab plots</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}</style></head><body>",
        "<h1>clab: what the models learned and forgot</h1>",
    ]
    if summaries:
        parts.append(
            "<h2>Summary (the primary score after the last stage)</h2><table><tr><th>run</th>"
            "<th>score</th>" + "".join(f"<th>{label}</th>" for _, label in SUMMARY_KEYS) + "</tr>"
        )
        for name, s in summaries.items():
            parts.append(
                f"<tr><td><a href='#{html.escape(name)}'>{html.escape(name)}</a></td>"
                f"<td>{html.escape(s.get('score', ''))}</td>"
                + "".join(f"<td>{_fmt(s.get(k))}</td>" for k, _ in SUMMARY_KEYS)
                + "</tr>"
            )
        parts.append(
            "</table><p>Backward transfer below 0 and forgetting above 0 mean the "
            "model lost ground on earlier groups; see docs/metrics.md.</p>"
        )
    if compare:
        parts.append("<h2>Runs compared</h2>" + "".join(img(p) for p in compare))
    parts.extend(extra)
    for name, figs, summary in sections:
        parts.append(f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2>")
        if summary:
            per_task = summary.get("forgetting_per_task", {})
            if per_task:
                parts.append(
                    "<p>forgetting per task: "
                    + ", ".join(
                        f"{html.escape(summary['task_names'][int(k)])}: {v:.3f}"
                        if "task_names" in summary and k.isdigit()
                        else f"{html.escape(k)}: {v:.3f}"
                        for k, v in per_task.items()
                    )
                    + "</p>"
                )
        parts.extend(img(p) for p in figs)
        if not figs:
            parts.append("<p>no figures yet: no training metrics or evaluations.</p>")
    parts.append(
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
        "document.body.dataset.images=ok+'/'+i.length;});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
