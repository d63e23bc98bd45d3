"""Would a bf16 compute copy of the actor speed up PPO's training pass? (issue 23)

The PPO step trains fp32 weights under autocast: matrix products in bf16, the residual
stream, norms and rotary in fp32. veRL's FSDP path instead computes in a bf16 copy of
the weights (``param_dtype=bf16``) and accumulates fp32 gradients. This times one
mini-batch (two micro-batches of 16 x 384 tokens, a 256-token response's log-probs)
forward and backward both ways, and how far each gradient lands from an fp32 pass:

- ``autocast``: fp32 weights, one autocast region over the micro-batches (the PPO
  trainer's cast cache: each weight cast once per optimizer step);
- ``bf16 copy``: a bf16 model, the fp32 weights copied into it once per optimizer step,
  its gradients added into fp32 master gradients after each micro-batch.

    PYTHONPATH=shared python3 benchmarks/bench_bf16_copy.py            # a GPU
    PYTHONPATH=shared python3 benchmarks/bench_bf16_copy.py --size tiny  # a CPU check

Eager (no compiled layers, plain log-softmax head): a probe of the lever, not the
PPO step; docs/benchmarks.md has its figures.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from model_shapes import QWEN25_15B, TINY

RESPONSE = 256


def response_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean negative log-prob of the last RESPONSE tokens: the shape of PPO's policy pass."""
    logits = model(input_ids=ids, logits_to_keep=RESPONSE + 1).logits[:, :-1].float()
    return -torch.log_softmax(logits, -1).gather(-1, ids[:, -RESPONSE:, None]).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=384, help="prompt + response tokens a row")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" and args.size != "tiny":
        raise SystemExit("error: the 1.5B shape needs a GPU (or --size tiny)")
    sizes = QWEN25_15B if args.size == "qwen2.5-1.5b" else TINY
    cfg = Qwen2Config(**sizes, attn_implementation="sdpa")
    torch.manual_seed(0)
    with dev:
        master = Qwen2ForCausalLM(cfg)  # fp32
        copy = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (2, args.micro, args.tokens), device=dev)
    mp, cp = list(master.parameters()), list(copy.parameters())
    batch = ids

    def autocast() -> None:
        master.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            for x in batch:
                response_loss(master, x).backward()

    def bf16_copy() -> None:
        with torch.no_grad():
            torch._foreach_copy_(cp, mp)  # once per optimizer step
        for p in mp:
            p.grad = torch.zeros_like(p)
        for x in batch:
            copy.zero_grad(set_to_none=True)
            response_loss(copy, x).backward()
            torch._foreach_add_([p.grad for p in mp], [q.grad for q in cp])

    def fp32() -> None:
        master.zero_grad(set_to_none=True)
        for x in batch:
            response_loss(master, x).backward()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"{args.size}, {dev}: a mini-batch of 2 x {args.micro} x {args.tokens} tokens")
    for name, run in (("autocast", autocast), ("bf16 copy", bf16_copy)):
        run()
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        print(f"{name:>9}: {sorted(times)[1] * 1000:.0f} ms (median of 3), peak {peak:.1f} GiB")

    def grads(run) -> list[torch.Tensor]:
        run()
        return [p.grad.clone() for p in mp if p.ndim == 2][:6]

    batch = ids[:, : max(1, args.micro // 2)]  # fp32 activations: half the rows, for memory
    ref = grads(fp32)
    a1, a2, b = grads(autocast), grads(autocast), grads(bf16_copy)

    def rel(x: list[torch.Tensor]) -> float:
        return max(((u - v).norm() / v.norm()).item() for u, v in zip(x, ref, strict=True))

    print(
        f"largest relative gradient error of the first 6 weight matrices against fp32: "
        f"autocast {rel(a1):.3g}, bf16 copy {rel(b):.3g}; autocast run to run "
        f"{max(((u - v).norm() / v.norm()).item() for u, v in zip(a1, a2, strict=True)):.3g}"
    )


if __name__ == "__main__":
    main()
