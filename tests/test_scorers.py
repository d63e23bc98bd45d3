"""Scorers by name, and the evaluator on a hand-made SFT run scored by answer loss."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clab.cli import main
from clab.errors import ClabError
from clab.evaluation.scorers import SCORERS
from clab.evaluation.scorers.answer_loss import answer_batch
from clab.metrics.continual import forgetting
from clab.models.loading import load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model
from clab.storage.atomic import write_json

ROWS_A = [{"prompt": f"Q: {i} plus 1? A:", "answer": f" {i + 1}"} for i in range(6)]
ROWS_B = [{"prompt": f"Q: capital of land {i}? A:", "answer": f" city{i}"} for i in range(6)]


def test_scorers_are_registered_by_name():
    assert {"countdown", "answer_loss"} <= set(SCORERS)
    with pytest.raises(ClabError, match=r"scorer 'nope' is not known \(known: .*answer_loss"):
        SCORERS["nope"]


def test_the_label_mask_covers_the_answer_and_its_eos_only(tmp_path):
    build_tiny_model(tmp_path / "m", [r["prompt"] + r["answer"] for r in ROWS_A], vocab_size=300)
    tok = load_tokenizer(tmp_path / "m")
    ids, mask, labels = answer_batch(tok, ROWS_A[:2] + ROWS_B[:1], max_length=64)
    for row, m, lab, r in zip(ids, mask, labels, ROWS_A[:2] + ROWS_B[:1], strict=True):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        real = row[m.bool()].tolist()
        assert real == p + a  # left padding, then prompt, answer, EOS
        assert lab[m.bool()].tolist() == [-100] * len(p) + a
        assert (lab[~m.bool()] == -100).all()  # padding never in the loss


def _stage(model_dir: Path, out: Path, marker: dict, noise: float) -> None:
    model = load_policy(model_dir)
    if noise:
        torch.manual_seed(int(noise * 1000))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn_like(p))
    model.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    (out / "clab_tiny.json").write_text((model_dir / "clab_tiny.json").read_text())
    write_json(out / "COMPLETE", marker)


def _hand_loss(stage_dir: Path, rows: list[dict]) -> float:
    model, tok = load_policy(stage_dir).eval(), load_tokenizer(stage_dir)
    total = count = 0.0
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + a])).logits[0].float(), -1)
        for k, token in enumerate(a):
            total -= logp[len(p) + k - 1, token].item()  # position t predicts token t+1
            count += 1
    return total / count


def test_the_evaluator_scores_a_hand_made_sft_run_by_answer_loss(workdir):
    for name, rows in (("a", ROWS_A), ("b", ROWS_B)):
        Path(f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_tiny_model(
        Path("m"), [r["prompt"] + r["answer"] for r in ROWS_A + ROWS_B], vocab_size=300
    )
    run = Path("checkpoints/hand")
    _stage(Path("m"), run / "initial", {"index": 0, "round": 0, "task": 0}, 0.0)
    _stage(Path("m"), run / "r0-g0", {"index": 1, "round": 0, "task": 0}, 0.02)
    _stage(Path("m"), run / "r0-g1", {"index": 2, "round": 0, "task": 1}, 0.05)
    tasks = [
        {"name": n, "scorer": "answer_loss", "config": {"data": f"{n}.jsonl", "max_length": 64}}
        for n in ("a", "b")
    ]
    write_json(run / "run.json", {"kind": "hand", "name": "hand", "rounds": 1, "tasks": tasks})
    spec = Path("eval.yaml")
    spec.write_text(
        "kind: evaluate\nruns: [hand]\nmax_new_tokens: 4\nbatch_size: 4\nuse_gpu: false\n"
    )
    assert main(["run", str(spec)]) == 0

    rows = pq.read_table("metrics/hand/eval.parquet").to_pylist()
    loss = {(r["stage"], r["task"]): r["value"] for r in rows if r["metric"] == "answer_loss"}
    assert len(loss) == 6
    for (stage, task), value in loss.items():
        stage_dir = run / ["initial", "r0-g0", "r0-g1"][stage]
        assert value == pytest.approx(_hand_loss(stage_dir, [ROWS_A, ROWS_B][task]), rel=1e-4)
    assert all(not r["higher_is_better"] for r in rows if r["metric"] == "answer_loss")

    summary = json.loads(Path("metrics/hand/summary.json").read_text())
    R = np.array([[loss[(s, t)] for t in range(2)] for s in range(3)])
    assert summary["score"] == "answer_loss" and summary["higher_is_better"] is False
    assert np.allclose(summary["matrix"], R)
    # forgetting of task a, with the loss's sign: L[T, a] - min over earlier stages
    assert summary["forgetting"] == pytest.approx(R[2, 0] - R[1, 0])
    assert summary["forgetting"] == pytest.approx(forgetting(R, [None, 0, 1], False))
    assert summary["scores"]["exact_match"]["higher_is_better"] is True


def test_mean_token_loss_and_perplexity_by_hand():
    from clab.metrics.language import mean_token_loss, perplexity, windows

    torch.manual_seed(0)

    class LM(torch.nn.Module):  # logits = a fixed table lookup of the current token
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(7, 7))

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.table[input_ids]})()

    lm = LM()
    data = windows(list(range(7)) * 3, seq_len=5)  # 21 tokens -> 4 windows, 1 dropped
    assert data.shape == (4, 5)
    loss, n = mean_token_loss(lm, data, batch_size=3)
    logp = torch.log_softmax(lm.table, -1)
    hand = [-logp[a, b].item() for w in data.tolist() for a, b in pairwise(w)]
    assert n == 16 and loss == pytest.approx(sum(hand) / 16, rel=1e-6)
    assert perplexity(loss) == pytest.approx(np.exp(loss))
    with pytest.raises(ClabError, match="shorter than one sequence"):
        windows([1, 2, 3], seq_len=5)


def test_perplexity_passes_build_no_kv_cache(tmp_path):
    """The K-1 service's per-corpus scores run a tiny Qwen2 whose config says
    ``use_cache``: its passes must not build a cache they never read (a copy of every
    layer's keys and values, per window batch)."""
    from clab.metrics.language import mean_token_loss, window_token_losses, windows

    model = load_policy(build_tiny_model(tmp_path / "m", ["a b c d e f g"] * 50, vocab_size=64))
    assert model.config.use_cache
    built = []
    model.register_forward_hook(lambda m, a, out: built.append(out.past_key_values is not None))
    data = windows(list(range(3, 40)) * 4, seq_len=16)
    loss, _ = mean_token_loss(model, data, batch_size=4)
    per_window = window_token_losses(model, data, batch_size=4)
    assert built and not any(built)
    assert np.mean(per_window) == pytest.approx(loss, rel=1e-5)
