"""GRPO's generation in TRL's GRPOTrainer: ``rollout.engine: hf`` (TRL's transformers
generate, dynamic cache), ``trl-static`` (TRL's own static option: generate with
``cache_implementation: static``, one cache length for the run, transformers'
compilation turned back on after TRL turns it off) and ``hf-static`` (clab's: TRL's
``rollout_func`` hook generating through clab's StaticGenerator,
``training/countdown_rl.py::grpo_rollout_func``).

A plain GRPOTrainer on Qwen2.5-1.5B's architecture (random weights, fp32 as clab's
GRPO trains it, bf16), a few steps with each engine, timing the generation call in
each step (TRL's ``_generate``) and the whole run.

Prompts: random words, ``--prompt-tokens`` tokens each under a tokenizer trained
here; ``--new-tokens`` sampled at temperature 1 (a random model practically never
samples EOS, so every completion runs the full length).

    PYTHONPATH=shared python benchmarks/bench_grpo_rollout.py            # a GPU
    PYTHONPATH=shared python benchmarks/bench_grpo_rollout.py --size tiny  # CPU check
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from clab.models.tiny import train_tokenizer
from clab.training.countdown_rl import grpo_rollout_func
from model_shapes import QWEN25_15B, TINY

WORDS = [f"w{i}" for i in range(400)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(engine: str, args, model_cfg, tok, prompts) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(model_cfg).to("cuda" if cuda else "cpu")
    n = args.generations
    extra, rollout_func = {}, None
    if engine == "trl-static":
        extra = {
            "cache_implementation": "static",
            "generation_kwargs": {"max_cache_len": args.prompt_tokens + args.new_tokens},
        }
    elif engine == "hf-static":
        rollout_func = grpo_rollout_func(
            SimpleNamespace(
                spec=SimpleNamespace(
                    rollout=SimpleNamespace(
                        max_prompt_length=args.prompt_tokens,
                        max_response_length=args.new_tokens,
                        temperature=1.0,
                    )
                ),
                device=model.device,
                compute_dtype="bfloat16" if cuda else None,
                tokenizer=tok,
                gen_batch=args.prompts * n,
            )
        )
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.prompts * n // args.micro,
        num_generations=n,
        max_completion_length=args.new_tokens,
        max_steps=args.steps,
        learning_rate=1e-6,
        beta=0.0,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        disable_tqdm=True,
        gradient_checkpointing=args.gradient_checkpointing,
        **extra,
    )
    ds = Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[lambda completions, **kw: [len(c) % 7 / 7 for c in completions]],
        args=config,
        train_dataset=ds,
        processing_class=tok,
        rollout_func=rollout_func,
    )
    if engine == "trl-static":
        trainer.generation_config.disable_compile = False

    gen_times, lengths = [], []
    generate = trainer._generate

    def timed_generate(*a, **k):
        sync()
        t = time.perf_counter()
        out = generate(*a, **k)
        sync()
        gen_times.append(time.perf_counter() - t)
        lengths.extend(len(c) for c in out[1])  # completion ids
        return out

    trainer._generate = timed_generate
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return {"gen": gen_times, "total": total, "tokens": lengths, "steps": args.steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    ap.add_argument("--prompts", type=int, default=8, help="prompts a step")
    ap.add_argument("--generations", type=int, default=8, help="completions a prompt")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument(
        "--engines",
        nargs="+",
        choices=["hf", "trl-static", "hf-static"],
        default=["hf", "trl-static", "hf-static"],
    )
    ap.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="as the services' specs set it",
    )
    args = ap.parse_args()

    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=4 * args.prompt_tokens)) for _ in range(64)]
    tok = train_tokenizer(texts, 600)
    tok.pad_token = tok.eos_token
    # each prompt exactly prompt_tokens tokens
    prompts = [
        tok.decode(tok(t)["input_ids"][: args.prompt_tokens]) for t in texts[: args.prompts * 4]
    ]
    sizes = QWEN25_15B if args.size == "qwen2.5-1.5b" else TINY
    sizes = {**sizes, "vocab_size": max(sizes["vocab_size"], len(tok))}
    model_cfg = Qwen2Config(**sizes, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {name}  torch {torch.__version__}; model {args.size}, random, fp32 weights")
    print(
        f"step: {args.prompts} prompts x {args.generations} completions, prompt "
        f"{args.prompt_tokens} tokens, up to {args.new_tokens} new tokens"
    )
    rows = []
    for engine in args.engines:
        r = run(engine, args, model_cfg, tok, prompts)
        rows.append((engine, r))
        per_call = len(r["tokens"]) // max(len(r["gen"]), 1)
        new = sum(r["tokens"]) / max(len(r["gen"]), 1)
        later = statistics.median(r["gen"][1:]) if len(r["gen"]) > 1 else float("nan")
        print(
            f"{engine}: generate calls {', '.join(f'{x:.2f}' for x in r['gen'])} s "
            f"({per_call} completions, {new:,.0f} new tokens a call); after the first: "
            f"{new / later:,.0f} new tok/s; {r['steps']} steps in {r['total']:.1f} s",
            flush=True,
        )
    base = dict(rows).get("hf")
    for engine, r in rows:
        if base is not None and engine != "hf" and len(r["gen"]) > 1:
            ratio = statistics.median(base["gen"][1:]) / statistics.median(r["gen"][1:])
            print(f"generation, {engine} against hf (after the first call): {ratio:.2f}x")


if __name__ == "__main__":
    main()
