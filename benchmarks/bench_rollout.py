"""Rollout tokens/s: HF generate with the dynamic cache (``rollout.engine: hf``) against
clab's static-cache engine (``hf-static``), and the memory-bandwidth bound of decoding.

Qwen2.5-1.5B's architecture with random weights in bf16 (no download), prompts of
exactly ``--prompt-tokens`` random tokens, ``--new-tokens`` sampled at temperature 1
(a random model practically never samples EOS, so every row runs the full length).
For each batch size: the dynamic engine as the PPO rollout calls it, after a short
warm-up; the static engine's first call (the decode step compiled, CUDA graphs
captured) and then its steady state; then the policy's weights are changed in place
(as an optimizer step does), loaded into the static copy, and the call timed again,
with the number of compiled graphs before and after (no recompilation expected).

The bound: a decode step must read every weight once (the embedding table once, as
the tied output projection) and each row's KV cache up to its current length, at the
GPU's copy bandwidth (measured here: a large device-to-device copy, read + write);
the average context over the response is prompt + new/2 tokens.

    PYTHONPATH=shared python benchmarks/bench_rollout.py [--batches 64 256]
    PYTHONPATH=shared python benchmarks/bench_rollout.py --size tiny   # CPU check
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from clab.generation.rollout import StaticGenerator, sampling_config
from model_shapes import QWEN25_15B, TINY

EOS = 0


class _Tok:
    """What generate and the static engine read of a tokenizer: the special ids."""

    eos_token_id = pad_token_id = EOS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a 1 GiB device-to-device copy, counting the read and the write."""
    n = 2**29 if device.type == "cuda" else 2**24
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * src.element_size() * 10 / (time.perf_counter() - t)


def decode_bytes(model: Qwen2ForCausalLM, batch: int, context: float) -> float:
    """Bytes one decode step must read: every weight once, and the KV cache of
    ``batch`` rows at an average ``context`` tokens."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = c.hidden_size // c.num_attention_heads
    kv = batch * context * c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * 2
    return weights + kv


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed(fn, device: torch.device) -> tuple[float, int]:
    """Seconds of one call, and what it returned (new tokens a row)."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--engines", nargs="+", choices=["hf", "hf-static"], default=["hf", "hf-static"]
    )
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = QWEN25_15B if args.size == "qwen2.5-1.5b" else TINY
    cfg = Qwen2Config(**sizes, eos_token_id=EOS, pad_token_id=EOS)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    P, R = args.prompt_tokens, args.new_tokens
    bw = copy_bandwidth(device)
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}  torch {torch.__version__}")
    print(f"model: {args.size} architecture, {params / 1e9:.3f} B parameters, random, {dtype}")
    print(f"prompts {P} tokens, {R} new tokens sampled; copy bandwidth {bw / 1e12:.2f} TB/s")
    tok = _Tok()
    gen_cfg = sampling_config(tok, R, 1.0, greedy=False)
    warm_cfg = sampling_config(tok, 8, 1.0, greedy=False)

    rows = []
    for B in args.batches:
        ids = torch.randint(1, cfg.vocab_size, (B, P), device=device)
        mask = torch.ones_like(ids)

        def dynamic(c=gen_cfg, ids=ids, mask=mask):
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=c)
            return out.shape[1] - P

        t_dyn_first = t_dyn = float("nan")
        if "hf" in args.engines:
            dynamic(warm_cfg)
            # a full-length first call, timed apart: it is much slower than later ones
            # (memory for the growing KV cache is allocated), and a run pays it once
            t_dyn_first, _ = timed(dynamic, device)
            t_dyn = min(timed(dynamic, device)[0] for _ in range(args.repeats))
        if "hf-static" not in args.engines:
            print(f"batch {B}: dynamic first call {t_dyn_first:.1f} s, then "
                  f"{B * R / t_dyn:,.0f} tok/s ({t_dyn:.2f} s)", flush=True)  # fmt: skip
            continue

        gen = StaticGenerator(
            model, batch_size=B, max_prompt_length=P, max_new_tokens=R, dtype=dtype
        )

        def static(ids=ids, mask=mask, gen=gen, B=B):
            return gen.generate_ids(ids, mask, B, tok, temperature=1.0).shape[1]

        g0 = graphs()
        t_first, _ = timed(static, device)
        g1 = graphs()
        t_sta = min(timed(static, device)[0] for _ in range(args.repeats))
        with torch.no_grad():  # an optimizer step's worth of change, in place
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-3)
        gen.load_weights(model)
        t_after, new = timed(static, device)  # new: tokens a row (all ran the full length)
        g2 = graphs()
        bound = B / (decode_bytes(model, B, P + R / 2) / bw)
        rows.append((B, B * R / t_dyn, t_first, B * R / t_sta, B * R / t_after, bound))
        print(
            f"batch {B}: dynamic first call {t_dyn_first:.1f} s, then {B * R / t_dyn:,.0f} "
            f"tok/s ({t_dyn:.2f} s); static first call "
            f"{t_first:.1f} s ({g1 - g0} graphs compiled), then {B * R / t_sta:,.0f} tok/s "
            f"({t_sta:.2f} s), after an in-place weight update {B * R / t_after:,.0f} tok/s "
            f"({g2 - g1} graphs compiled); {new} new tokens a row; bandwidth bound "
            f"{bound:,.0f} tok/s",
            flush=True,
        )
        del gen
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("\n| batch | dynamic tok/s | static tok/s | static / dynamic | first static call "
          "| bound tok/s | static / bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for B, dyn, first, sta, _, bound in rows:
        print(
            f"| {B} | {dyn:,.0f} | {sta:,.0f} | {sta / dyn:.2f}x | {first:.1f} s "
            f"| {bound:,.0f} | {sta / bound:.0%} |"
        )


if __name__ == "__main__":
    main()
