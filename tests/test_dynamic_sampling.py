"""grpo.oversample's arithmetic (clab.training.dynamic_sampling) on hand-made batches."""

import pytest
import torch

from clab.errors import ClabError
from clab.training.dynamic_sampling import extra_prompts, flat_groups, kept_rows, select_rows


def test_a_group_is_flat_when_every_advantage_is_zero_to_rounding():
    adv = torch.tensor([0.0, 0.0, 1.0, -1.0, 1e-5, -1e-5, 0.2, -0.2])
    assert flat_groups(adv, 2).tolist() == [True, False, True, False]
    assert flat_groups(adv, 4).tolist() == [False, False]


def test_kept_groups_vary_first_in_drawing_order_then_flat_ones_fill():
    flat = torch.tensor([True, False, True, False, False, True])
    assert kept_rows(flat, 2, 3).tolist() == [2, 3, 6, 7, 8, 9]  # groups 1, 3, 4
    # only three vary: the first flat group (0) fills the fourth place
    assert kept_rows(flat, 2, 4).tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    assert kept_rows(torch.ones(3, dtype=torch.bool), 3, 1).tolist() == [0, 1, 2]


def test_the_batch_is_cut_to_the_kept_rows_and_its_token_count_recounted():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    batch = {
        "prompt_ids": torch.tensor([[0, 5], [0, 5], [6, 7], [6, 7]]),
        "completion_ids": torch.arange(16).view(4, 4),
        "completion_mask": mask,
        "old_per_token_logps": -torch.arange(16.0).view(4, 4),
        "advantages": torch.tensor([0.0, 0.0, 1.0, -1.0]),
        "num_items_in_batch": torch.tensor(11),
    }
    counted = []
    out = select_rows(batch, torch.tensor([2, 3]), lambda t: counted.append(t) or t * 2)
    assert out["completion_ids"].tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]
    assert out["prompt_ids"].tolist() == [[6, 7], [6, 7]]
    assert out["advantages"].tolist() == [1.0, -1.0]
    assert counted[0].item() == 7 and out["num_items_in_batch"].item() == 14  # the gather-sum's
    # the kept rows' completions end by column 2: the column only a dropped row used goes,
    # from the token tensors alike; the prompts' (left) padding stays
    out = select_rows(batch, torch.tensor([0, 1]), lambda t: t)
    assert out["completion_ids"].tolist() == [[0, 1], [4, 5]]
    assert out["old_per_token_logps"].shape == (2, 2) and out["prompt_ids"].shape == (2, 2)
    assert out["num_items_in_batch"].item() == 3
    with pytest.raises(ValueError, match=r"cannot cut TRL's batch keys \['num_images'\]"):
        select_rows({**batch, "num_images": 3}, torch.tensor([0, 1]), lambda t: t)


def test_extra_prompts_are_others_of_the_stage_repeated_and_reproducible():
    pool = [{"prompt": f"p{i}", "target": i} for i in range(10)]
    taken = {"p0", "p1"}
    extra = extra_prompts(pool, taken, 3, 2, (0, 1, 5))
    firsts = [r["prompt"] for r in extra[::2]]
    assert [r["prompt"] for r in extra[1::2]] == firsts and len(set(firsts)) == 3
    assert not taken & set(firsts)
    assert extra == extra_prompts(pool, taken, 3, 2, (0, 1, 5))  # a resumed run's draw
    assert extra != extra_prompts(pool, taken, 3, 2, (0, 1, 6))  # the next step's
    extra[0]["target"] = -1
    assert pool[int(firsts[0][1:])]["target"] != -1  # copies: TRL writes into its inputs
    with pytest.raises(ClabError, match=r"needs 9 more prompts a step .* has 8 others"):
        extra_prompts(pool, taken, 9, 2, (0,))


def test_the_cpu_miniature_runs_its_three_arms(tmp_path):
    """benchmarks/oversample_cpu.py (docs/demo.md's figures) at 2 steps: it trains
    the three arms, prints their rows and the paired lines, and keeps the numbers."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(repo / "benchmarks/oversample_cpu.py"), str(tmp_path)]
    args = ["--seeds", "0", "--steps", "2", "--last", "2", "--oversample", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for row in ("| 1 | ", "| 2 | ", "| 1, 2x steps | ", "oversample 2 minus 1, 2x steps"):
        assert row in res.stdout, res.stdout[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"1", "2", "1, 2x steps"}
    rows = (tmp_path / "metrics/o1-n4-s0/train.jsonl").read_text().splitlines()
    assert len(rows) == 4  # the compute-matched arm: 2 x the steps
