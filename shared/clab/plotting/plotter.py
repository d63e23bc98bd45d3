"""The ``plot`` kind (service ``plotter``): figures per run, related runs side by side,
one page for all of them.

Reads every run under ``metrics/`` (nested sweeps too: ``metrics/<sweep>/<branch>/``)
and its kind from ``checkpoints/<run>/run.json``; what each kind draws is
registered in ``clab.plotting.registry`` (``curriculum.py``, ``sparse.py``, any
module a new trainer adds). Writes ``plots/<run>/*.png``,
``plots/compare/*.png`` and ``plots/index.html``, each atomically, so a
browser open on the page never sees half a file; the page reads the PNGs by
relative path, so the folder can be opened from the volume or copied anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm import tqdm

from clab.errors import ClabError
from clab.plotting.page import GroupBlock, KindBlock, RunBlock, render
from clab.plotting.registry import PAGE_KINDS, page_kind
from clab.plotting.runs import RunData, find_run_names, is_run_dir, load_run
from clab.plotting.seeds import headline_rows as seeds_headline
from clab.plotting.seeds import seed_figures, seed_view
from clab.specs import KIND_HELP, Spec
from clab.storage.atomic import write_text


class PlotSpec(Spec):
    """Spec of the plotter."""

    kind: Literal["plot"] = Field("plot", description=KIND_HELP)
    metrics: Path = Field(Path("metrics"), description="where the runs' metrics are")
    checkpoints: Path = Field(
        Path("checkpoints"), description="where run.json says each run's kind (read only)"
    )
    output: Path = Field(Path("plots"), description="figures and index.html")
    runs: list[str] | None = Field(
        None, description="runs (or sweep folders) to plot; null: every run found"
    )

    def reads(self) -> list[Path]:
        return [self.metrics, self.checkpoints]

    def writes(self) -> list[Path]:
        return [self.output]

    def run(self) -> None:
        page = make_plots(self)
        print(f"open {page.resolve()} in a browser")


def resolve_runs(metrics: Path, names: list[str] | None) -> list[str]:
    """Run names: every run found, or the named ones (a sweep folder: its branches)."""
    if names is None:
        return find_run_names(metrics)
    out, missing = [], []
    for n in names:
        d = metrics / n
        if d.is_dir() and is_run_dir(d):
            out.append(n)
        elif d.is_dir() and (
            kids := [f"{n}/{c.name}" for c in sorted(d.iterdir()) if c.is_dir() and is_run_dir(c)]
        ):
            out += kids
        else:
            missing.append(n)
    if missing:
        raise ClabError(f"runs: no metrics for {', '.join(missing)} under {metrics}/")
    return out


def kind_order(kinds: set[str]) -> list[str]:
    """Registered kinds in registration order, then the others by name."""
    known = [k for k in PAGE_KINDS if k in kinds]
    return known + sorted(kinds - set(known))


def make_plots(spec: PlotSpec) -> Path:
    """Draw every run's figures and write index.html; returns the page's path."""
    names = resolve_runs(spec.metrics, spec.runs)
    if not names:
        raise ClabError(
            f"metrics: no run metrics under {spec.metrics}/: train (and evaluate) a run first"
        )
    runs = [load_run(spec.metrics, n, spec.checkpoints) for n in names]
    out = spec.output
    page_kind("")  # loads every registration
    by_kind: dict[str, list[RunData]] = {}
    for r in runs:
        by_kind.setdefault(r.kind, []).append(r)
    blocks = []
    bar = tqdm(total=len(runs), desc="plotting runs", unit="run", dynamic_ncols=True)
    for kind in kind_order(set(by_kind)):
        pk = page_kind(kind)
        mine = by_kind[kind]
        groups = []
        for label, members in pk.related(mine).items():
            run_blocks = []
            for r in members:
                run_blocks.append(RunBlock(r, pk.run_figures(r, out / r.slug)))
                bar.update()
            view = seed_view(members, spec.metrics)
            sections = seed_figures(label, view, out)
            sections += pk.group_figures(label, members, out) if pk.group_figures else []
            groups.append(GroupBlock(label, run_blocks, sections, view))
        ordered = [b.run for g in groups for b in g.runs]  # related runs next to each other
        headline = []  # an experiment of several seeds is one row: its mean over seeds
        for g in groups:
            headline += [row for a in g.seeds.aggregates for row in seeds_headline(a)]
            aggregated = {r for a in g.seeds.aggregates for r in a["runs"].values()}
            headline += [
                row for b in g.runs if b.run.name not in aggregated for row in pk.headline(b.run)
            ]
        blocks.append(KindBlock(pk, headline, ordered, groups))
    bar.close()
    page = out / "index.html"
    write_text(page, render(out, blocks, f"{spec.metrics}/"))
    return page
