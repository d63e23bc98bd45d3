"""``plots/index.html``: every run in the volumes, grouped by experiment kind.

Per kind: the headline table (each run's average, backward transfer and
forgetting after its last stage, with 95% intervals), then related runs side
by side, each run with its per-task table and figures. The page is plain
HTML with inline CSS and relative image paths: it opens from the file system
or a copied folder, with no network. Every table cell holding a number also
carries it exactly (``data-value``), so a test can check the page against
summary.json.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from clab.plotting.registry import PageKind, Section
from clab.plotting.runs import HEADLINE_COLUMNS, Estimate, HeadlineRow, RunData, per_task
from clab.plotting.seeds import SeedView, aggregate_html, comparison_html

CSS = """
body{font-family:system-ui,sans-serif;max-width:1500px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.6em}code{background:#f3f3f3;padding:0 .3em}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 9px;text-align:right;vertical-align:top}
.headline td[data-key]{white-space:nowrap}
.scroll{overflow-x:auto}.run table{font-size:12px}
th{background:#f5f5f5}th:first-child,td:first-child{text-align:left}
td.text{text-align:left;white-space:pre-wrap;font-family:monospace;font-size:12px;max-width:30em}
td.prompt{color:#666}
figure{margin:.8em 0}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:13px;color:#444;max-width:1100px}
.cols{display:grid;gap:1.2em;align-items:start}.run h3{overflow-wrap:anywhere}
.note,.meta{font-size:13px;color:#555}nav ul{margin:.2em 0}
.missing{color:#a00}
"""


MAX_COLUMNS = 3


@dataclass
class RunBlock:
    run: RunData
    sections: list[Section]


@dataclass
class GroupBlock:
    label: str
    runs: list[RunBlock]
    sections: list[Section] = field(default_factory=list)
    seeds: SeedView = field(default_factory=SeedView)


@dataclass
class KindBlock:
    kind: PageKind
    headline: list[HeadlineRow]
    runs: list[RunData]
    groups: list[GroupBlock]


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num_cell(est: Estimate, key: str, signed: bool = False) -> str:
    if est.value is None or not math.isfinite(est.value):
        return f"<td data-key='{key}'>-</td>"
    attrs = f"data-key='{key}' data-value='{est.value!r}'"
    if est.ci is not None:
        attrs += f" data-low='{est.ci[0]!r}' data-high='{est.ci[1]!r}'"
    return f"<td {attrs}>{_e(est.text(signed))}</td>"


def headline_table(rows: list[HeadlineRow], runs: list[RunData], kind: str) -> str:
    """The kind's headline table; runs not evaluated yet get a row that says so."""
    head = "".join(f"<th>{_e(label)}</th>" for _, label in HEADLINE_COLUMNS)
    out = [
        f"<table class='headline' data-kind='{_e(kind)}'><thead><tr><th>run</th><th>score</th>"
        f"<th>n per task</th><th>stages</th>{head}<th>intervals over</th></tr></thead><tbody>"
    ]
    seen = set()
    for r in rows:
        seen.add(r.run)
        for run in runs:  # an aggregate row stands for its seeds' runs
            if run.set_name == r.run and run.summary:
                seen.add(run.name)
        arrow = "higher is better" if r.higher_is_better else "lower is better"
        cells = "".join(
            _num_cell(r.cells[k], k, signed=k == "backward_transfer") for k, _ in HEADLINE_COLUMNS
        )
        slug = r.run.replace("/", "--")
        seeds = r.over != HeadlineRow.over
        anchor = f"seeds-{slug}" if seeds else f"run-{slug}"
        out.append(
            f"<tr data-run='{_e(r.run)}' data-score='{_e(r.score)}' "
            f"data-over='{'seeds' if seeds else 'items'}'>"
            f"<td><a href='#{_e(anchor)}'>{_e(r.run)}</a></td>"
            f"<td>{_e(r.score.replace('_', ' '))} ({arrow})</td><td>{_e(r.n)}</td>"
            f"<td>{r.stages}</td>{cells}<td class='over'>{_e(r.over)}</td></tr>"
        )
    for run in runs:
        if run.name not in seen:
            out.append(
                f"<tr data-run='{_e(run.name)}'><td><a href='#run-{_e(run.slug)}'>"
                f"{_e(run.name)}</a></td><td colspan='{4 + len(HEADLINE_COLUMNS)}' "
                "class='missing'>not evaluated yet: run the evaluator</td></tr>"
            )
    out.append("</tbody></table>")
    return "".join(out)


def task_table(run: RunData) -> str:
    """Per task: right after its own stage, at the end, forgetting, backward transfer."""
    rows = per_task(run)
    if not rows:
        return ""
    score = run.summary["score"].replace("_", " ")
    out = [
        f"<table class='tasks' data-run='{_e(run.name)}'><thead><tr><th>task</th><th>n</th>"
        f"<th>{_e(score)} after its own stage</th><th>at the end</th><th>forgetting</th>"
        "<th>backward transfer</th></tr></thead><tbody>"
    ]
    for t in rows:
        out.append(
            f"<tr data-task='{_e(t.task)}'><td>{_e(t.task)}</td><td>{_e(t.n or '-')}</td>"
            + _num_cell(t.after_own, "after_own")
            + _num_cell(t.final, "final")
            + _num_cell(t.forgetting, "forgetting")
            + _num_cell(t.backward_transfer, "backward_transfer", signed=True)
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _figures(out: Path, sections: list[Section], level: str = "h4") -> str:
    parts = []
    for s in sections:
        parts.append(f"<{level}>{_e(s.title)}</{level}>")
        for f in s.figures:
            rel = _e(f.path.relative_to(out).as_posix())
            parts.append(
                f"<figure><a href='{rel}'><img src='{rel}' alt='{_e(f.caption)}'></a>"
                f"<figcaption>{_e(f.caption)}</figcaption></figure>"
            )
        if s.html:
            parts.append(s.html)
    return "\n".join(parts)


def _run_block(out: Path, b: RunBlock) -> str:
    r = b.run
    s = r.summary or {}
    meta = f"kind <code>{_e(r.kind)}</code>, metrics/{_e(r.name)}/"
    if s.get("stages") is not None:
        meta += f", {s['stages']} stages evaluated"
    parts = [
        f"<div class='run' id='run-{_e(r.slug)}'><h3>{_e(r.name)}</h3>",
        f"<p class='meta'>{meta}</p>",
        f"<div class='scroll'>{task_table(r)}</div>",
        _figures(out, b.sections),
    ]
    if not b.sections and not s:
        parts.append("<p class='missing'>no figures yet: no training metrics or evaluation.</p>")
    parts.append("</div>")
    return "\n".join(parts)


def _seeds_block(out: Path, g: GroupBlock) -> str:
    """A group's experiments over seeds: each aggregate, then the paired comparisons."""
    v = g.seeds
    if not v.aggregates:
        return ""
    parts = []
    for a in v.aggregates:
        slug = a["name"].replace("/", "--")
        parts.append(
            f"<div class='seeds' id='seeds-{_e(slug)}'><h3>{_e(a['name'])}: "
            f"{a['n_seeds']} training seeds</h3><p class='note'>Mean over seeds, with a 95% "
            "Student-t interval over seeds (not over test items), and each seed's value.</p>"
            f"<div class='scroll'>{aggregate_html(a)}</div></div>"
        )
    for c in v.comparisons:
        parts.append(f"<div class='scroll'>{comparison_html(c)}</div>")
    if v.comparisons:
        parts.append(
            "<p class='note'>A difference is beyond the seed spread when its paired interval "
            "over the shared seeds excludes 0; otherwise these seeds cannot tell the two "
            "apart.</p>"
        )
    return "\n".join(parts)


def render(out: Path, kinds: list[KindBlock], source: str) -> str:
    n_runs = sum(len(k.runs) for k in kinds)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'><title>clab: what the models learned and forgot</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>clab: what the models learned and forgot</h1>",
        f"<p class='meta'>{n_runs} runs under {_e(source)}, grouped by experiment kind; "
        f"written {time.strftime('%Y-%m-%d %H:%M')} by the plotter. Numbers are the primary "
        "score after each run's last stage. An experiment run with several training seeds "
        "is one row: its mean over seeds with a 95% Student-t interval over seeds. A run "
        "of one seed shows a 95% interval over the test items of that one training run "
        "(Wilson for a success rate, a paired bootstrap for everything computed from "
        "several cells), which says nothing of how another seed would do; the last column "
        "says which interval a row has. Backward transfer below 0 and forgetting above 0 "
        "mean the model got worse on earlier tasks (signs follow each score's direction; "
        "docs/metrics.md).</p>",
        "<nav><ul>",
    ]
    for k in kinds:
        runs = ", ".join(f"<a href='#run-{_e(r.slug)}'>{_e(r.name)}</a>" for r in k.runs)
        parts.append(f"<li><a href='#kind-{_e(k.kind.kind)}'>{_e(k.kind.title)}</a>: {runs}</li>")
    parts.append("</ul></nav>")
    for k in kinds:
        parts.append(
            f"<section class='kind' id='kind-{_e(k.kind.kind)}'>"
            f"<h2>{_e(k.kind.title)} <code>{_e(k.kind.kind)}</code></h2>"
        )
        if k.kind.description:
            parts.append(f"<p class='note'>{_e(k.kind.description)}</p>")
        parts.append(f"<div class='scroll'>{headline_table(k.headline, k.runs, k.kind.kind)}</div>")
        for g in k.groups:
            if len(g.runs) > 1:
                names = ", ".join(dict.fromkeys(b.run.set_name for b in g.runs))
                parts.append(f"<div class='group'><h3>Side by side: {_e(names)}</h3>")
                parts.append(_seeds_block(out, g))
                parts.append(_figures(out, g.sections))
                # at most MAX_COLUMNS abreast: a sweep's eight branches in one row were
                # too narrow to read; more wrap onto further rows
                parts.append(
                    "<div class='cols' style='grid-template-columns:"
                    f"repeat({min(len(g.runs), MAX_COLUMNS)},minmax(0,1fr))'>"
                )
                parts += [_run_block(out, b) for b in g.runs if b.run.name not in g.seeds.multi]
                parts.append("</div>")
                seeded = [b for b in g.runs if b.run.name in g.seeds.multi]
                if seeded:  # every seed's own run, folded: the aggregate above speaks for them
                    parts.append(
                        f"<details class='seed-runs'><summary>each seed's run ({len(seeded)})"
                        "</summary><div class='cols' style='grid-template-columns:"
                        f"repeat({min(len(seeded), MAX_COLUMNS)},minmax(0,1fr))'>"
                    )
                    parts += [_run_block(out, b) for b in seeded]
                    parts.append("</div></details>")
                parts.append("</div>")
            else:
                parts += [_run_block(out, b) for b in g.runs]
                parts.append(_figures(out, g.sections))
        parts.append("</section>")
    parts.append(
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
        "document.body.dataset.images=ok+'/'+i.length;});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
