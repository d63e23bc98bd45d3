"""What a K-1 step costs against a dense step on the same model and batch.

Both steps run the same code (forward, backward, the groups' gradient norms,
the per-group optimizers); K-1 adds the selection and steps fewer groups.
Target (issue 12): a K-1 step costs at most 10% more than a dense step.
Median of many steps after a warm-up, the two alternating.

    uv run python benchmarks/bench_k1.py [--steps 60] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from clab.training.sparse import (
    SparseOptimizer,
    dense,
    group_grad_norms,
    make_optimizer,
    parameter_groups,
    top_k,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    # the public experiment's size: vocabulary 10k, width 128, 4 layers, FFN 256, untied head
    cfg = Qwen2Config(vocab_size=10_000, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    models = {m: Qwen2ForCausalLM(cfg).to(dev) for m in ("dense", "k1", "plain")}
    for m in ("k1", "plain"):
        models[m].load_state_dict(models["dense"].state_dict())
    plain_opt = torch.optim.AdamW(models["plain"].parameters(), lr=1e-3, weight_decay=0.01)
    groups = {m: parameter_groups(models[m]) for m in ("dense", "k1")}
    opts = {m: SparseOptimizer(groups[m], make_optimizer("adamw", 1e-3, 0.01)) for m in groups}
    rules = {"dense": dense(), "k1": top_k(5)}
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=dev)

    def step(m: str) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        models[m](input_ids=x, labels=x).loss.backward()
        if m == "plain":  # one AdamW, no norms: the cheapest dense step there is
            plain_opt.step()
            plain_opt.zero_grad(set_to_none=True)
        else:
            chosen = rules[m](group_grad_norms(groups[m]), opts[m].sizes, gen)
            opts[m].step(chosen)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(5):
        step("dense"), step("k1"), step("plain")
    times = {"dense": [], "k1": [], "plain": []}
    for _ in range(args.steps):
        for m in ("dense", "k1", "plain"):
            times[m].append(step(m))
    d, k = statistics.median(times["dense"]), statistics.median(times["k1"])
    p = statistics.median(times["plain"])
    params = sum(p.numel() for p in models["k1"].parameters())
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}), "
          f"{params / 1e6:.1f} M parameters in {len(groups['k1'])} groups, "
          f"batch {args.batch} x {args.seq} tokens")  # fmt: skip
    print(f"dense step {d * 1e3:.2f} ms, K-1 step (top 5 groups) {k * 1e3:.2f} ms: "
          f"K-1 / dense = {k / d:.3f} (target <= 1.10)")  # fmt: skip
    print(f"plain dense step (one AdamW, no norms) {p * 1e3:.2f} ms: K-1 / plain = {k / p:.3f}")


if __name__ == "__main__":
    main()
