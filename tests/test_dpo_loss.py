"""The DPO loss clab trains is TRL's own (sigmoid, beta 0.1); the scorer's implicit
reward must be computed on the same tokens. Both sides on one batch must agree: a
tokenization that differed (the EOS TRL appends, the prompt/response split)
would make the evaluator's implicit accuracy measure something DPO never trained."""

import torch
import torch.nn.functional as F

from clab.data.preference.builtin import style_tasks
from clab.evaluation.preference import _full_ids, pair_logps
from clab.models.loading import load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model


def test_trls_dpo_loss_equals_the_one_from_our_log_probabilities(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    (task,) = style_tasks(["upper"], 16, 4, 0)
    texts = [r["prompt"] + r[k] for r in task.train for k in ("chosen", "rejected")]
    folder = build_tiny_model(tmp_path / "m", texts, vocab_size=300, hidden_size=32, num_layers=1)
    tok = load_tokenizer(folder)
    policy, ref = load_policy(folder), load_policy(folder)
    torch.manual_seed(0)
    with torch.no_grad():  # the policy away from its reference: a loss other than log 2
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = task.train[:6]
    rows[1] = {**rows[1], "rejected": " a much longer rejected answer than the chosen one"}
    # "=" merges with ">" into one token, not with " ": the two responses' prompt prefixes
    # differ, and TRL starts both at the shorter
    rows[2] = {
        "prompt": "copy: ink jar pig =",
        "chosen": "> INK JAR PIG",
        "rejected": " ink jar pig",
    }
    assert (
        _full_ids(tok, rows[2]["prompt"], rows[2]["chosen"])[1]
        != _full_ids(tok, rows[2]["prompt"], rows[2]["rejected"])[1]
    )
    rows[3] = {**rows[3], "chosen": rows[3]["chosen"] + tok.eos_token}  # TRL adds no second EOS
    args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to=[],
                     beta=0.1, max_length=64, gradient_checkpointing=False)  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, batch).item()
    metrics = {k: v[-1] for m in trainer._metrics.values() for k, v in m.items()}

    c, r = (torch.tensor(x) for x in pair_logps(policy, tok, rows, 64, 4))
    c0, r0 = (torch.tensor(x) for x in pair_logps(ref, tok, rows, 64, 4))
    ours = -F.logsigmoid(0.1 * ((c - c0) - (r - r0))).mean().item()
    assert abs(trl_loss - 0.6931) > 1e-3  # a batch that tells the two apart
    assert abs(ours - trl_loss) < 1e-4, (ours, trl_loss)
    assert abs(c.mean().item() - metrics["logps/chosen"]) < 1e-4
    assert abs(r.mean().item() - metrics["logps/rejected"]) < 1e-4
    assert abs(0.1 * ((c - c0) - (r - r0)).mean().item() - metrics["rewards/margins"]) < 1e-4


def test_a_response_with_no_prompt_tokens_before_it_is_scored_as_trl_scores_it(tmp_path):
    """An empty prompt (or one whose only token merges into the response) leaves no
    prompt token: TRL scores every response token but the first, which nothing
    predicts. Each pair's log-probability must be TRL's, alone or in any batch (not
    a log-probability read from a padding position, nor the last token alone)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    (task,) = style_tasks(["upper"], 16, 4, 0)
    texts = [r["prompt"] + r[k] for r in task.train for k in ("chosen", "rejected")]
    folder = build_tiny_model(tmp_path / "m", texts, vocab_size=300, hidden_size=32, num_layers=1)
    tok = load_tokenizer(folder)
    policy, ref = load_policy(folder), load_policy(folder)
    rows = task.train[:4]
    rows[0] = {**rows[0], "prompt": ""}
    assert _full_ids(tok, rows[0]["prompt"], rows[0]["chosen"])[1] == 0
    args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to=[],
                     beta=0.1, max_length=64, gradient_checkpointing=False)  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trl_c, trl_r = (x.tolist() for x in trainer.compute_ref_log_probs(policy, batch))

    batched = pair_logps(policy, tok, rows, 64, 4)
    alone = pair_logps(policy, tok, rows[:1], 64, 1)
    for ours, theirs in zip((*batched, *alone), (trl_c, trl_r, trl_c[:1], trl_r[:1]), strict=True):
        assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), atol=1e-4), (ours, theirs)
