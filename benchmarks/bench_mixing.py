"""The mixing trainer's training speed against a plain TRL SFTTrainer + PEFT (issue 10).

Same base model, same LoRA, same examples, batch, learning rate and number
of optimizer steps; periodic evaluations off (their cost is measured
apart: one evaluation of both validation sets). Each side's ``train()`` is
timed alone (no model loading, tokenization or saving), twice, alternating;
the second round is reported. Goal: ours / plain speed >= 0.95.

    uv run python benchmarks/bench_mixing.py                       # tiny Llama, CPU
    python benchmarks/bench_mixing.py --arch tinyllama --device cuda  # TinyLlama-1.1B shape
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)  # fmt: skip


def timed_train():
    """Wrap SFTTrainer.train to record its wall time, tokens and peak memory."""
    from trl import SFTTrainer

    record: dict = {}
    real = SFTTrainer.train

    def train(self, *a, **k):
        import gc

        gc.collect()  # what an earlier round left must not count in this one's peak
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = real(self, *a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        record["seconds"] = time.perf_counter() - t
        record["steps"] = self.state.global_step
        record["tokens"] = max((h.get("num_tokens", 0) for h in self.state.log_history), default=0)
        return out

    SFTTrainer.train = train
    return record


def build_base(out: Path, arch: str, texts: list[str]) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from clab.models.tiny import build_tiny_model

    if arch == "tiny":
        return build_tiny_model(out, texts, vocab_size=800, hidden_size=128, num_layers=2,
                                num_heads=4, max_positions=512, architecture="llama",
                                initializer_range=0.1)  # fmt: skip
    # TinyLlama-1.1B's shape, random weights, with a tokenizer trained on the data
    build_tiny_model(out, texts, vocab_size=800, hidden_size=64, num_layers=1, num_heads=2,
                     architecture="llama")  # fmt: skip
    cfg = LlamaConfig(**TINYLLAMA, max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["tiny", "tinyllama"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=512, help="training examples (one epoch)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    os.environ.setdefault("WANDB_MODE", "offline")

    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from clab.data.sft.encoding import format_prompt
    from clab.data.sft.tasks import arithmetic
    from clab.models.loading import load_policy, load_tokenizer
    from clab.runs.runner import run_spec
    from clab.specs import load_spec

    work = Path(tempfile.mkdtemp(prefix="bench_mixing_"))
    os.chdir(work)
    examples = arithmetic(args.n + 64, 0)
    base = build_base(work / "base", args.arch, [e.prompt + " " + e.answer for e in examples])
    lora = dict(r=8, lora_alpha=16, lora_dropout=0.05,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # fmt: skip
    lr, steps = 2e-4, args.n // args.batch
    record = timed_train()
    results: dict[str, list[dict]] = {"clab": [], "trl": []}
    repo = Path(__file__).resolve().parents[1]
    for rnd in range(args.rounds):
        # ours: phase A of a sweep, through the stage runner
        spec = load_spec(repo / "services/mixing-trainer.yaml", [
            f"name=bench{rnd}",
            f"model={{name_or_path: {base}, dtype: bfloat16, gradient_checkpointing: {gpu}}}",
            f"task_a={{name: arith, format: arithmetic, train_size: {args.n}, val_size: 64,"
            f" epochs: 1, lr: {lr}}}",
            "task_b={name: qa, format: context_qa, train_size: 64, val_size: 64, epochs: 1}",
            f"lora={{r: 8, alpha: 16, dropout: 0.05, target_modules: {lora['target_modules']}}}",
            f"training={{batch_size: {args.batch}, micro_batch: {args.micro}, max_length: 256,"
            " eval_steps: 0}",
            f"resources.use_gpu={gpu}", "wandb=false", "save_steps=0",
        ])  # fmt: skip
        run_spec(spec.branch_spec("phase-a"))
        results["clab"].append(dict(record))
        t = time.perf_counter()
        from clab.training.mixing import MixingTrainer

        trainer = MixingTrainer(spec.branch_spec("phase-a"))
        ck = spec.branch_spec("phase-a").run_dirs()[0]
        trainer.load(ck / "r0-g0", ck / "initial")
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        trainer.val_losses()
        eval_s = time.perf_counter() - t
        del trainer
        # plain TRL on the same examples (prompt-completion; TRL tokenizes them itself)
        tok = load_tokenizer(base)
        rows = [{"prompt": format_prompt(tok, e.prompt), "completion": e.answer}
                for e in examples[: args.n]]  # fmt: skip
        model = load_policy(base, "float32")
        plain = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=str(work / f"plain{rnd}"), max_steps=steps,
                per_device_train_batch_size=args.micro,
                gradient_accumulation_steps=args.batch // args.micro, learning_rate=lr,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=not gpu,
                bf16=gpu, gradient_checkpointing=gpu, completion_only_loss=True,
                max_length=256, disable_tqdm=True,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=LoraConfig(**lora, task_type="CAUSAL_LM"),
        )  # fmt: skip
        plain.train()
        results["trl"].append(dict(record, eval_both_s=eval_s))
        del plain, model
        if gpu:
            torch.cuda.empty_cache()
    ours, theirs = results["clab"][-1], results["trl"][-1]
    report = {
        "arch": args.arch,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "examples": args.n,
        "steps": ours["steps"],
        "clab_s": round(ours["seconds"], 3),
        "trl_s": round(theirs["seconds"], 3),
        "speed_ratio": round(theirs["seconds"] / ours["seconds"], 3),
        "clab_tokens_per_s": round(ours["tokens"] / ours["seconds"]),
        "trl_tokens_per_s": round(theirs["tokens"] / theirs["seconds"]),
        "clab_peak_gib": round(ours.get("peak_gib", 0), 2),
        "trl_peak_gib": round(theirs.get("peak_gib", 0), 2),
        "one_evaluation_of_both_tasks_s": round(theirs["eval_both_s"], 3),
        "rounds": results,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    out = os.environ.get("OUT")
    if out:
        Path(out, f"bench_mixing_{args.arch}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
