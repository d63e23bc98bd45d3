"""Tokens/s of clab's PPO step for a random-initialised Qwen2.5-1.5B-sized model on one GPU.

Qwen2.5-1.5B's published sizes (hidden 1536, 28 layers, 12 heads, 2 KV heads,
MLP 8960, vocabulary 151,936, tied embeddings) with random weights: the same
compute as the real model, no download. Actor and critic with fp32 weights
and AdamW state computing under bf16 autocast (``--weights bf16``: the old
path, bf16 weights stepped directly), reference in bf16; one step = generate,
score, three forward passes for old log-probs, reference and values, then PPO
updates. The text a random model writes is noise; a tokenizer trained here
decodes the ids (mod its size), and a constant reward keeps the optimizer busy.
Prompts are Countdown prompts cut to ``--prompt-tokens`` (left truncation).

Two paths, run with the same seed, e.g.:

    # dynamic-cache rollouts, gradient checkpointing, micro-batch 8
    PYTHONPATH=shared python benchmarks/bench_gpu_ppo.py --losses
    # static-cache rollouts compiled once, no checkpointing, the fused head
    PYTHONPATH=shared python benchmarks/bench_gpu_ppo.py --losses --engine hf-static \
        --no-gradient-checkpointing --micro 16 --logprobs fused

``--losses`` first runs one PPO update on a fixed synthetic rollout (seeded
tokens and lengths, independent of the rollout engine) straight after the
seeded initialisation and prints its losses at full precision: the same
numbers from both paths show that the speed-ups changed no arithmetic beyond
rounding. ``--profile`` prints where a training-only step's GPU time goes.
Options that the trainer gained later are passed only when asked for, so the
same script also times an older checkout.

It also reports the share of the actor's weight elements that one PPO step
at the services' actor learning rate (1e-6) changed: with bf16 weights most
updates round away; with fp32 weights every element with a gradient moves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from clab.data.countdown.prompts import render_prompt
from clab.data.countdown.reading import Problem
from clab.generation.rollout import Rollout
from clab.models.tiny import train_tokenizer
from clab.rewards.countdown import Reason, RewardResult
from clab.training.ppo import PPOConfig, PPOTrainer
from model_shapes import QWEN25_15B, TINY

LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "kl", "approx_kl", "grad_norm",
             "critic_grad_norm", "pg_clipfrac", "vf_clipfrac")  # fmt: skip


def synthetic_rollout(n: int, P: int, R: int, vocab: int, eos: int, device) -> Rollout:
    """A fixed rollout: seeded prompt and response tokens, responses of seeded lengths
    (at least a quarter of ``R``) ending in EOS, so padding and masks are exercised."""
    g = torch.Generator().manual_seed(1234)
    prompt_ids = torch.randint(1, vocab, (n, P), generator=g)
    response_ids = torch.randint(1, vocab, (n, R), generator=g)
    lengths = torch.randint(R // 4, R + 1, (n,), generator=g)
    pos = torch.arange(R)[None, :]
    response_ids[pos == (lengths[:, None] - 1)] = eos
    rmask = (pos < lengths[:, None]).long()
    response_ids[rmask == 0] = eos
    to = dict(device=device)
    return Rollout(
        prompt_ids.to(**to),
        torch.ones_like(prompt_ids).to(**to),
        response_ids.to(**to),
        rmask.to(**to),
        ["x"] * n,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--weights", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--score-micro", type=int, default=None)
    ap.add_argument("--engine", choices=["hf", "hf-static"], default="hf")
    ap.add_argument("--rollout-batch", type=int, default=None)
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--losses", action="store_true", help="first-step losses, fixed rollout")
    ap.add_argument(
        "--logprobs",
        choices=["fused", "plain"],
        default="plain",
        help="fused: from the hidden states, no logits tensor (fused_logprobs.py); plain: logits",
    )
    ap.add_argument(
        "--compile-layers",
        action="store_true",
        help="torch.compile each decoder layer of actor and critic (training and scoring; "
        "the static engine's rollout copy compiles its own)",
    )
    ap.add_argument(
        "--compile-head",
        action="store_true",
        help="with --logprobs fused: each chunk's statistics and gradient through torch.compile",
    )
    ap.add_argument("--profile", action="store_true", help="GPU time of a training-only step")
    args = ap.parse_args()
    if args.compile_head and args.logprobs != "fused":
        ap.error("--compile-head compiles the fused head: give --logprobs fused too")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert dev.type == "cuda" or args.size == "tiny", "the 1.5B shape needs a GPU"
    sizes = QWEN25_15B if args.size == "qwen2.5-1.5b" else TINY
    texts = [render_prompt([i % 97 + 1, 7, 13], i + 20, ["+", "-"]) for i in range(400)]
    tok = train_tokenizer(texts, 512)
    n = len(tok)
    decode = tok.batch_decode
    tok.batch_decode = lambda ids, **kw: decode((ids % n).tolist(), **kw)
    cfg = Qwen2Config(**sizes, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    dt = torch.float32 if args.weights == "fp32" else torch.bfloat16
    with torch.device(dev):  # initialised where it runs: seconds, not minutes
        actor = Qwen2ForCausalLM(cfg).to(dt)
        ref = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
        ref.load_state_dict(actor.state_dict())
        critic = Qwen2ForTokenClassification(
            Qwen2Config(**sizes, num_labels=1, pad_token_id=tok.pad_token_id)
        ).to(dt)
    if args.gradient_checkpointing:
        actor.gradient_checkpointing_enable()
        critic.gradient_checkpointing_enable()
    if args.compile_layers:  # fuses each layer's elementwise work: fewer launches
        for model in (actor, critic):
            for layer in model.model.layers:
                layer.compile(dynamic=True)
    params = sum(p.numel() for p in actor.parameters())
    new_keys = {}  # later options: only when asked for (an older checkout lacks them)
    if args.engine != "hf":
        new_keys["rollout_engine"] = args.engine
    if args.rollout_batch:
        new_keys["rollout_batch_size"] = args.rollout_batch
    if args.score_micro:
        new_keys["score_micro_batch_size"] = args.score_micro
    if args.logprobs == "fused":
        new_keys["fused_logprobs"] = True
    if args.compile_head:
        new_keys["compile_head"] = True
    ppo = PPOConfig(
        mini_batch_size=args.prompts // 2,
        micro_batch_size=args.micro,
        max_response_length=args.response,
        max_prompt_length=args.prompt_tokens,
        actor_lr=args.lr,
        compute_dtype="bfloat16" if args.weights == "fp32" and dev.type == "cuda" else None,
        **new_keys,
    )

    def score(completions, problems):
        return [RewardResult(0.1, False, Reason.WRONG_VALUE) for _ in completions]

    trainer = PPOTrainer(actor, critic, ref, tok, ppo, score)
    problems = [Problem(t, 0, [], [], None) for t in texts[: args.prompts]]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"GPU: {name}  torch {torch.__version__}")
    print(
        f"path: engine {args.engine}, rollout batch {args.rollout_batch or args.prompts}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"micro-batch {args.micro} (scoring {args.score_micro or args.micro}), "
        f"mini-batch {args.prompts // 2}, weights {args.weights}, log-probs {args.logprobs}, "
        f"layers {'compiled' if args.compile_layers else 'eager'}"
        f"{', head compiled' if args.compile_head else ''}"
    )

    # the score_old passes, timed (they are the step's three forward passes)
    score_old = trainer._score_old
    t_score: list[float] = []

    def timed_score_old(ro):
        torch.cuda.synchronize() if dev.type == "cuda" else None
        t = time.perf_counter()
        out = score_old(ro)
        torch.cuda.synchronize() if dev.type == "cuda" else None
        t_score.append(time.perf_counter() - t)
        return out

    trainer._score_old = timed_score_old
    fixed = synthetic_rollout(
        args.prompts, args.prompt_tokens, args.response, n, tok.eos_token_id, dev
    )
    rollout = trainer._rollout
    if args.losses:
        trainer._rollout = lambda prompts: fixed
        torch.manual_seed(0)
        first = trainer.step(problems)
        print("first-step losses on the fixed rollout (same seed):")
        for k in LOSS_KEYS:
            print(f"  {k:>17} {first[k]!r}")
        print(f"  training-only step {first['step_time']:.2f} s", flush=True)
        trainer._rollout = rollout
    if args.profile and dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        trainer._rollout = lambda prompts: fixed
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            row = trainer.step(problems)
        trainer._rollout = rollout
        print(f"profiled training-only step: {row['step_time']:.2f} s")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        # the leaf kernels, by their own GPU time: where the time goes, not who called
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30))

    before = [p.detach().to("cpu", copy=True) for p in actor.parameters()]  # off the GPU
    t0 = time.perf_counter()
    warm = trainer.step(problems)  # warm-up (the static engine compiles here)
    print(f"warm-up step: {time.perf_counter() - t0:.1f} s "
          f"(generation {warm['generation_time']:.1f} s)", flush=True)  # fmt: skip
    with torch.no_grad():
        moved = sum(
            int((p.cpu() != b).sum()) for p, b in zip(actor.parameters(), before, strict=True)
        )
        total = sum(b.numel() for b in before)
    del before
    from torch._dynamo.utils import counters

    graphs = int(counters["stats"]["unique_graphs"])
    t_score.clear()
    rows = [trainer.step(problems) for _ in range(args.steps)]
    recompiled = int(counters["stats"]["unique_graphs"]) - graphs
    med = statistics.median
    step = med(r["step_time"] for r in rows)
    gen = med(r["generation_time"] for r in rows)
    sc = med(t_score)
    print(f"model: {args.size} architecture, {params / 1e9:.2f} B parameters, random init")
    print(
        f"batch: {args.prompts} prompts x 1 response, prompt {args.prompt_tokens}, response "
        f"{args.response} tokens (mean {med(r['response_length_mean'] for r in rows):.0f})"
    )
    print(
        f"PPO step: {step:.2f} s, {med(r['tokens_per_s'] for r in rows):,.0f} tokens/s "
        f"(prompt + response); generation {gen:.2f} s ({gen / step:.0%}), "
        f"{args.prompts * med(r['response_length_mean'] for r in rows) / gen:,.0f} new tok/s; "
        f"3 scoring passes {sc:.2f} s; updates and the rest {step - gen - sc:.2f} s"
    )
    print(f"graphs compiled during the {args.steps} measured steps: {recompiled}")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"weights {args.weights}, lr {args.lr:g}: the warm-up step changed {moved / total:.1%} "
          f"of the actor's {total:,} weight elements")  # fmt: skip


if __name__ == "__main__":
    main()
