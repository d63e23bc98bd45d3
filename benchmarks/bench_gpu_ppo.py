"""Tokens/s of clab's PPO step for a random-initialised Qwen2.5-1.5B-sized model on one GPU.

Qwen2.5-1.5B's published sizes (hidden 1536, 28 layers, 12 heads, 2 KV heads,
MLP 8960, vocabulary 151,936, tied embeddings) with random weights: the same
compute as the real model, no download. Actor and critic with fp32 weights
and AdamW state computing under bf16 autocast (``--weights bf16``: the old
path, bf16 weights stepped directly), reference in bf16; HF generate
rollouts; one step = generate, score, three forward passes for old
log-probs, reference and values, then PPO updates. The text a random model
writes is noise; a tokenizer trained here decodes the ids (mod
its size), and a constant reward keeps the optimizer busy.

    PYTHONPATH=shared python benchmarks/bench_gpu_ppo.py [--prompts 64 --response 256]

It also reports the share of the actor's weight elements that one PPO step
at the services' actor learning rate (1e-6) changed: with bf16 weights most
updates round away; with fp32 weights every element with a gradient moves.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from clab.data.countdown.prompts import render_prompt
from clab.data.countdown.reading import Problem
from clab.models.tiny import train_tokenizer
from clab.rewards.countdown import Reason, RewardResult
from clab.training.ppo import PPOConfig, PPOTrainer

QWEN25_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--weights", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--lr", type=float, default=1e-6)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a GPU"
    texts = [render_prompt([i % 97 + 1, 7, 13], i + 20, ["+", "-"]) for i in range(400)]
    tok = train_tokenizer(texts, 512)
    n = len(tok)
    decode = tok.batch_decode
    tok.batch_decode = lambda ids, **kw: decode((ids % n).tolist(), **kw)
    cfg = Qwen2Config(**QWEN25_15B, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    dev = torch.device("cuda")
    dt = torch.float32 if args.weights == "fp32" else torch.bfloat16
    actor = Qwen2ForCausalLM(cfg).to(dev, dt)
    ref = Qwen2ForCausalLM(cfg).to(dev, torch.bfloat16)
    ref.load_state_dict(actor.state_dict())
    critic = Qwen2ForTokenClassification(
        Qwen2Config(**QWEN25_15B, num_labels=1, pad_token_id=tok.pad_token_id)
    ).to(dev, dt)
    actor.gradient_checkpointing_enable()
    critic.gradient_checkpointing_enable()
    params = sum(p.numel() for p in actor.parameters())
    ppo = PPOConfig(
        mini_batch_size=args.prompts // 2,
        micro_batch_size=8,
        max_response_length=args.response,
        max_prompt_length=256,
        actor_lr=args.lr,
        compute_dtype="bfloat16" if args.weights == "fp32" else None,
    )

    def score(completions, problems):
        return [RewardResult(0.1, False, Reason.WRONG_VALUE) for _ in completions]

    trainer = PPOTrainer(actor, critic, ref, tok, ppo, score)
    problems = [Problem(t, 0, [], [], None) for t in texts[: args.prompts]]
    before = [p.detach().clone() for p in actor.parameters()]
    trainer.step(problems)  # warm-up, and the step whose weight updates are counted
    with torch.no_grad():
        moved = sum(int((p != b).sum()) for p, b in zip(actor.parameters(), before, strict=True))
        total = sum(b.numel() for b in before)
        graded = sum(int((p.grad != 0).sum()) for p in actor.parameters() if p.grad is not None)
    del before
    rows = [trainer.step(problems) for _ in range(args.steps)]
    tps = statistics.median(r["tokens_per_s"] for r in rows)
    gen = statistics.median(r["generation_time"] / r["step_time"] for r in rows)
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"model: Qwen2.5-1.5B architecture, {params / 1e9:.2f} B parameters, random init")
    print(
        f"batch: {args.prompts} prompts x 1 response, response {args.response} tokens "
        f"(mean {statistics.median(r['response_length_mean'] for r in rows):.0f})"
    )
    print(
        f"PPO step: {statistics.median(r['step_time'] for r in rows):.1f} s, "
        f"{tps:,.0f} tokens/s (prompt + response), generation {gen:.0%} of the step"
    )
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(
        f"weights {args.weights}, lr {args.lr:g}: one step changed {moved / total:.1%} of the "
        f"actor's {total:,} weight elements ({graded / total:.1%} had a nonzero gradient "
        "in the last micro-batch)"
    )


if __name__ == "__main__":
    main()
