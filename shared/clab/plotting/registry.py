"""Experiment kinds on the page: one registration per kind.

The page (``plots/index.html``) groups runs by their kind (``run.json``'s
``kind``). What a kind shows is registered here, so a new trainer adds its
figures and headline rows without touching the page::

    from clab.plotting.registry import Figure, Section, register_page_kind

    def my_run_figures(run, out):                   # one run -> its sections
        return [Section("Validation losses", [Figure(draw(run, out / "losses.png"),
                                                     "what it shows, n, interval")])]

    def my_group_figures(label, runs, out):         # related runs -> side by side
        return [Section(f"{label}: strategies", [...])]

    register_page_kind("sft-mixing", title="Replay mixing (SFT)",
                       run_figures=my_run_figures, group_figures=my_group_figures)

Put that in a module under ``clab/plotting/`` (e.g. ``mixing.py``): the
plotter imports every module there, so the registration is all it takes. A
kind that registers nothing still appears, with the generic figures (training
curves, the annotated R matrix, per-task scores and forgetting with
intervals). ``related`` says which runs belong together (default: a sweep's
nested branches, and names that differ only by a ``-<method>`` suffix);
``group_figures`` defaults to the runs' average scores and forgetting on the
same axes; ``headline`` says which rows the headline table holds (default: the primary
score's average, backward transfer and forgetting, with intervals).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clab.plotting import generic
from clab.plotting.runs import HeadlineRow, RunData
from clab.plotting.runs import headline as default_headline
from clab.plotting.sections import Figure, Section
from clab.registry import Registry

__all__ = ["Figure", "PageKind", "Section", "page_kind", "register_page_kind", "related_by_name"]

RunFigures = Callable[[RunData, Path], list[Section]]
GroupFigures = Callable[[str, list[RunData], Path], list[Section]]
Related = Callable[[list[RunData]], dict[str, list[RunData]]]
Headline = Callable[[RunData], list[HeadlineRow]]


def related_by_name(
    runs: list[RunData], suffixes: tuple[str, ...] = ()
) -> dict[str, list[RunData]]:
    """Runs that belong together: an experiment's variants and seeds, and runs whose
    names without the seed differ only by one of ``suffixes``; every other run alone."""
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        rep = r.replicate or {}
        if rep.get("variant") is not None or "/" in r.name:
            key = r.sweep  # an experiment's variants (or an older clab's nested sweep)
        else:  # seeds share their set's name; plain and -ewc runs differ by a suffix
            n = r.set_name
            key = next((n[: -len(s)] for s in suffixes if n.endswith(s)), n)
        groups.setdefault(key, []).append(r)
    return groups


@dataclass
class PageKind:
    kind: str
    title: str
    run_figures: RunFigures
    group_figures: GroupFigures | None = None
    related: Related = related_by_name
    headline: Headline = default_headline
    description: str = ""


PAGE_KINDS: Registry[PageKind] = Registry("page kind")


def register_page_kind(
    kind: str,
    *,
    title: str,
    run_figures: RunFigures | None = None,
    group_figures: GroupFigures | None = None,
    related: Related | None = None,
    headline: Headline | None = None,
    description: str = "",
) -> PageKind:
    """Register what the page shows for runs of ``kind`` (see the module docstring)."""

    pk = PageKind(
        kind=kind,
        title=title,
        run_figures=run_figures or generic.run_figures,
        group_figures=group_figures or generic.group_figures,
        related=related or related_by_name,
        headline=headline or default_headline,
        description=description,
    )
    return PAGE_KINDS.add(kind, pk)


def page_kind(kind: str) -> PageKind:
    """The registered kind, or the generic view for a kind nobody registered."""
    load_registrations()
    if (known := PAGE_KINDS.get(kind)) is not None:
        return known

    return PageKind(
        kind=kind,
        title=f"Runs of kind {kind}",
        run_figures=generic.run_figures,
        group_figures=generic.group_figures,
        description="No page view is registered for this kind; generic figures.",
    )


_LOADED = False


def load_registrations() -> None:
    """Import every module of ``clab.plotting``, so each one's registrations run."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import clab.plotting as pkg  # here: the package's modules import this one to register

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"clab.plotting.{m.name}")
