"""The supervised warm-up resumes from its own checkpoints after a kill."""

from pathlib import Path

import pytest
import torch

from clab.data.countdown.reading import read_group
from clab.models.loading import load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model
from clab.training import warmup
from clab.training.countdown_rl_spec import CountdownRLSpec
from rl_spec import TINY


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _spec() -> CountdownRLSpec:
    return CountdownRLSpec.model_validate(
        {**TINY, "warmup": {"steps": 10, "lr": 5e-3, "batch_size": 4, "groups": [0, 1]}}
    )


def _warm(model_dir: Path, work: Path, logs: Path) -> torch.nn.Module:
    model = load_policy(model_dir)
    warmup.warmup_on_solutions(model, load_tokenizer(model_dir), _spec(), logs, work)
    return model


def test_killed_warmup_resumes_from_its_checkpoint_and_ends_with_the_same_weights(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    texts = [f"{p.prompt} {p.solution}" for p in read_group(Path("data/continual"), 0, "train")]
    model_dir = build_tiny_model(run_dir / "m", texts, hidden_size=32, vocab_size=320)
    whole = _warm(model_dir, run_dir / "work-a", run_dir / "logs-a")
    assert not (run_dir / "work-a").exists()  # the caller keeps the warmed-up model

    saved: list[int] = []
    mark = warmup._MarkComplete.on_save

    def save_then_die(self, args, state, control, **kwargs):
        mark(self, args, state, control, **kwargs)
        saved.append(state.global_step)
        raise Killed

    monkeypatch.setattr(warmup._MarkComplete, "on_save", save_then_die)
    with pytest.raises(Killed):
        _warm(model_dir, run_dir / "work-b", run_dir / "logs-b")
    assert saved == [2]

    def save(self, args, state, control, **kwargs):
        mark(self, args, state, control, **kwargs)
        saved.append(state.global_step)

    monkeypatch.setattr(warmup._MarkComplete, "on_save", save)
    resumed = _warm(model_dir, run_dir / "work-b", run_dir / "logs-b")
    assert saved == [2, 4, 6, 8, 10]  # it went on from step 2, not from the start
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_split_digits_gives_a_number_the_same_tokens_in_the_prompt_and_the_answer(dataset):
    """Countdown prompts list the numbers as ``[12, 15, 1]``; answers write `` 12``.
    Merged, the first number is one token in the prompt and another in the answer,
    which a tiny model never learns to copy; split digit by digit (as Qwen's
    tokenizer splits numbers) the digits are the same tokens in both."""
    from clab.models.tiny import train_tokenizer

    texts = [  # what the curriculum trainer trains its tiny tokenizer on
        f"{p.prompt} </think>\n<answer> {p.solution} </answer>"
        for g in range(4)
        for p in read_group(dataset, g, "train", 40)
    ]
    prompt, answer = "Using the numbers [12, 15, 1], create", "<answer> 12 + 15 + 1 </answer>"

    def pieces(tok, text):
        return [tok.decode([i]) for i in tok(text)["input_ids"]]

    def numbers(tok, text):  # the tokens that carry digits, as they are
        return [p for p in pieces(tok, text) if any(c.isdigit() for c in p)]

    merged = train_tokenizer(texts, 512)
    assert numbers(merged, prompt) != numbers(merged, answer)  # `12` against ` 12`, ...
    split = train_tokenizer(texts, 512, split_digits=True)
    assert [p.strip() for p in numbers(split, prompt)] == ["1", "2", "1", "5", "1"]
    assert numbers(split, answer) == numbers(split, prompt)
    ids = split(answer)["input_ids"]
    assert split.decode(ids) == answer  # nothing lost on the way back
