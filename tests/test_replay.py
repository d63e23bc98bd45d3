"""Replay selection for the mixing trainer (issue 10): each strategy on a hand-made
set with known levels and losses, levels by id, seeded ties, the loss cache."""

from pathlib import Path

import pytest

from clab.data.sft.replay import (
    cache_key,
    cached_losses,
    parse_level,
    replay_count,
    select_replay,
)
from clab.errors import ClabError

IDS = [f"a{i}" for i in range(8)]
LEVELS = {"a0": 1, "a1": 5, "a2": 3, "a3": 5, "a4": None, "a5": 2, "a6": 4, "a7": 1}
LOSSES = {"a0": 0.1, "a1": 2.0, "a2": 0.7, "a3": 0.4, "a4": 3.0, "a5": 1.1, "a6": 0.2, "a7": 0.9}


def test_levels_parse_from_the_datas_own_field():
    assert [parse_level(x) for x in ("Level 3", 4, "Level ?", None, "")] == [3, 4, None, None, None]


def test_replay_count_follows_the_public_experiments_convention():
    assert replay_count(0.1, "b", n_a=4000, n_b=4000) == 400
    assert replay_count(0.1, "b", n_a=300, n_b=4000) == 300  # never more than A has
    assert replay_count(0.25, "a", n_a=400, n_b=4000) == 100


def test_difficulty_strategies_order_by_level_and_skip_unknown_levels():
    hard = select_replay("difficulty_hard", IDS, 3, seed=0, levels=LEVELS)
    assert set(hard[:2]) == {"a1", "a3"} and hard[2] == "a6"  # 5, 5, then 4
    easy = select_replay("difficulty_easy", IDS, 3, seed=0, levels=LEVELS)
    assert set(easy[:2]) == {"a0", "a7"} and easy[2] == "a5"  # 1, 1, then 2
    everything = select_replay("difficulty_hard", IDS, 8, seed=0, levels=LEVELS)
    assert "a4" not in everything and len(everything) == 7  # no parseable level: left out


def test_ties_are_broken_by_the_seed_not_by_file_order():
    flat = {i: 1 for i in IDS}
    picks = {tuple(select_replay("difficulty_hard", IDS, 3, seed=s, levels=flat)) for s in range(8)}
    assert len(picks) > 1
    again = select_replay("difficulty_hard", IDS, 3, seed=5, levels=flat)
    assert again == select_replay("difficulty_hard", IDS, 3, seed=5, levels=flat)


def test_loss_strategies_random_and_none():
    assert select_replay("loss_descending", IDS, 2, seed=0, losses=LOSSES) == ["a4", "a1"]
    assert select_replay("loss_ascending", IDS, 2, seed=0, losses=LOSSES) == ["a0", "a6"]
    r = select_replay("random", IDS, 4, seed=1)
    assert len(set(r)) == 4 and set(r) <= set(IDS)
    assert r == select_replay("random", IDS, 4, seed=1) != select_replay("random", IDS, 4, seed=2)
    assert select_replay("none", IDS, 4, seed=0) == []
    with pytest.raises(ClabError, match="replay strategy 'hardest' is not known"):
        select_replay("hardest", IDS, 4, seed=0)
    with pytest.raises(ClabError, match="no level entry"):
        select_replay("difficulty_easy", [*IDS, "b9"], 2, seed=0, levels=LEVELS)


def test_the_loss_cache_is_reused_only_for_the_same_adapter_data_and_length(tmp_path: Path):
    adapter = tmp_path / "adapter_model.safetensors"
    adapter.write_bytes(b"weights-1")
    examples = [{"id": i, "prompt": f"p{i}", "answer": f"x{i}"} for i in IDS]
    calls = []

    def compute():
        calls.append(1)
        return dict(LOSSES)

    cache = tmp_path / "losses.json"
    key = cache_key([adapter], examples, 512)
    assert cached_losses(cache, key, compute) == (LOSSES, False)
    assert cached_losses(cache, key, compute) == (LOSSES, True)
    assert len(calls) == 1
    # anything it depends on changes: recomputed, never silently reused
    changed = [
        cache_key([adapter], examples, 256),
        cache_key([adapter], [*examples[:-1], {**examples[-1], "answer": "y"}], 512),
    ]
    adapter.write_bytes(b"weights-2")
    changed.append(cache_key([adapter], examples, 512))
    for k in changed:
        assert k != key
        assert cached_losses(cache, k, compute)[1] is False
    assert len(calls) == 4
