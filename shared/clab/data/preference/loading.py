"""A continual-DPO spec's preference tasks, read from its data source.

Apart from the trainer (``clab.training.dpo``, which imports torch and TRL)
so that ``clab plan`` counts a DPO run's steps from the very pairs the
trainer would read, in well under a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clab.data.preference.builtin import style_tasks
from clab.data.preference.tasks import PreferenceTask, check_tasks, read_aif_gen, read_rows
from clab.errors import ClabError

if TYPE_CHECKING:
    from clab.training.dpo_spec import ContinualDPOSpec

# where a run's stage 0 records each task's pairs: initial/<PAIRS_DIR>/<task>/{train,test}.jsonl
PAIRS_DIR = "preference"


def load_tasks(spec: ContinualDPOSpec) -> list[PreferenceTask]:
    """The spec's tasks from their source, checked (exit 2 naming task and field)."""
    d = spec.data
    if d.datasets is not None:
        tasks = [
            PreferenceTask(
                x.name, read_rows(x.train), read_rows(x.test), {"train": x.train, "test": x.test}
            )
            for x in d.datasets
        ]
    elif d.source.startswith("builtin:"):
        if d.source != "builtin:styles":
            raise ClabError(f"data.source: {d.source!r} is not built in (builtin:styles is)")
        tasks = style_tasks(d.tasks, d.builtin_train_size, d.builtin_test_size, spec.shared_seed)
    else:
        if d.tasks is not None:
            raise ClabError("data.tasks: only for builtin:styles")
        tasks = read_aif_gen(d.source)
    tasks = check_tasks(tasks)  # before the cut: a bad or leaked row anywhere is named
    for t in tasks:
        t.train = t.train[: d.max_train_rows] if d.max_train_rows else t.train
        t.test = t.test[: d.max_test_rows] if d.max_test_rows else t.test
    return tasks
