"""``clab plot-history FILES... -o out.png``: validation losses against step, any number of
runs overlaid (the replay-mixing experiment's figure).

A history file is the public experiment's JSON: ``steps``, one ``<task>_loss``
list per task, ``selection_method``, ``mix_percentage``, plus clab's ``name``.
Each task gets its own panel (so a second or third task never breaks the
figure), each file one colour with its ``name`` in the legend (or, for files
without one, its method and mix).
"""

from __future__ import annotations

import glob
from pathlib import Path

from clab.errors import ClabError
from clab.plotting.figures import GROUP_COLORS, plt, save  # figures picks the Agg backend
from clab.storage.atomic import read_json


def expand(patterns: list[str]) -> list[Path]:
    """Files and globs, in the order given, each file once."""
    out: list[Path] = []
    for p in patterns:
        hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not hits:
            raise ClabError(f"plot-history: no file matches {p}")
        out += [Path(h) for h in hits if Path(h) not in out]
    return out


def read_history(path: Path) -> dict:
    h = read_json(path)
    steps = h.get("steps")
    losses = {k: v for k, v in h.items() if k.endswith("_loss") and isinstance(v, list)}
    if not isinstance(steps, list) or not losses:
        raise ClabError(f"{path}: a history needs 'steps' and at least one '<task>_loss' list")
    for k, v in losses.items():
        if len(v) != len(steps):
            raise ClabError(f"{path}: '{k}' has {len(v)} values for {len(steps)} steps")
    label = h.get("name") or f"{h.get('selection_method', path.stem)} {h.get('mix_percentage', '')}"
    start_b = h.get("phase_b_start")
    return {"label": str(label).strip(), "steps": steps, "losses": losses, "b_start": start_b}


def plot_histories(files: list[Path], out: Path) -> Path:
    runs = [read_history(f) for f in files]
    tasks = sorted({t for r in runs for t in r["losses"]})
    # one distinct colour per file: the group palette, or tab10/tab20 for more files
    palette = GROUP_COLORS if len(runs) <= len(GROUP_COLORS) else [
        plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")(i % 20) for i in range(len(runs))
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for k, r in enumerate(runs):
            if task in r["losses"]:
                ax.plot(r["steps"], r["losses"][task], marker=".", label=r["label"],
                        color=palette[k % len(palette)])  # fmt: skip
        for s in sorted({r["b_start"] for r in runs if r.get("b_start")}):
            ax.axvline(s, color="grey", ls=":", lw=1)
            ax.annotate("task B starts", (s, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=7)  # fmt: skip
        ax.set_title(task.removesuffix("_loss").replace("_", " ") + " validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, out)
