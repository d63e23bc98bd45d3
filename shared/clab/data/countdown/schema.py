"""The Parquet row schema of Countdown data: TinyZero's (veRL's), extended.

TinyZero and veRL trainers read our files unchanged: ``data_source``,
``prompt`` (one user message), ``ability``, ``reward_model`` with the ground
truth, ``extra_info``, and the raw ``target`` and ``nums``. ``extra_info``
adds what the curriculum needs: the group, its allowed operators and the
reference solution (null where the source had none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from clab.data.countdown.prompts import Template, render_prompt

SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        (
            "reward_model",
            pa.struct(
                [
                    ("style", pa.string()),
                    (
                        "ground_truth",
                        pa.struct([("target", pa.int64()), ("numbers", pa.list_(pa.int64()))]),
                    ),
                ]
            ),
        ),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("group", pa.int64()),
                    ("allowed_ops", pa.list_(pa.string())),
                    ("solution", pa.string()),
                ]
            ),
        ),
        ("target", pa.int64()),
        ("nums", pa.list_(pa.int64())),
    ]
)

TINYZERO_REQUIRED = ("target", "nums")
"""Columns a TinyZero-format pool must have for us to rebuild rows from it."""


def _int_lists(lists: Sequence[Sequence[int]]) -> pa.ListArray:
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    flat = pa.array([v for x in lists for v in x], type=pa.int64())
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def build_table(
    numbers: Sequence[Sequence[int]],
    targets: Sequence[int],
    solutions: Sequence[str | None],
    *,
    split: str,
    group: int | None,
    ops: Sequence[str],
    template: Template,
) -> pa.Table:
    """Rows of one (group, split) in :data:`SCHEMA`, built column-wise for speed.

    ``group`` is None for a pool that belongs to no group yet.
    """
    n = len(targets)
    prompts = [render_prompt(nm, t, ops, template) for nm, t in zip(numbers, targets, strict=True)]
    user = pa.StructArray.from_arrays(
        [pa.array(["user"] * n), pa.array(prompts, type=pa.string())], names=["role", "content"]
    )
    prompt = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), user)
    nums = _int_lists(numbers)
    target = pa.array(targets, type=pa.int64())
    ops_list = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * len(ops), len(ops), dtype=np.int32)),
        pa.array(list(ops) * n, type=pa.string()),
    )
    reward_model = pa.StructArray.from_arrays(
        [
            pa.array(["rule"] * n),
            pa.StructArray.from_arrays([target, nums], names=["target", "numbers"]),
        ],
        names=["style", "ground_truth"],
    )
    extra_info = pa.StructArray.from_arrays(
        [
            pa.array([split] * n),
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array([group] * n, type=pa.int64()),
            ops_list,
            pa.array(list(solutions), type=pa.string()),
        ],
        names=["split", "index", "group", "allowed_ops", "solution"],
    )
    columns = [
        pa.array(["countdown"] * n),
        prompt,
        pa.array(["math"] * n),
        reward_model,
        extra_info,
        target,
        nums,
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)
