"""Rollout tokens/s: HF generate with the dynamic cache (``rollout.engine: hf``) against
clab's static-cache engine (``hf-static``), and the memory-bandwidth bound of decoding.
``hf-generate-static`` is transformers' own static path (generate with
``cache_implementation="static"``, its decode step compiled by transformers), for what
clab's decode loop adds over it.

Qwen2.5-1.5B's architecture with random weights in bf16 (no download), prompts of
exactly ``--prompt-tokens`` random tokens, ``--new-tokens`` sampled at temperature 1
(a random model practically never samples EOS, so every row runs the full length).
For each batch size: the dynamic engine as the PPO rollout calls it, after a short
warm-up; the static engine's first call (its prefill and decode step compiled, CUDA graphs
captured) and then its steady state; then the policy's weights are changed in place
(as an optimizer step does), loaded into the static copy, and the call timed again,
with the number of compiled graphs before and after (no recompilation expected).

The bound: a decode step must read every weight once (the embedding table once, as
the tied output projection) and each row's KV cache up to its current length, at the
GPU's copy bandwidth (measured here: a large device-to-device copy, read + write);
the average context over the response is prompt + new/2 tokens.

``--static-variants`` times the static engine in several builds in the same process,
old against new: ``unfused`` (each projection its own product, as before
``clab.generation.fused``), ``fused`` (today's: q/k/v as one product, gate/up as one)
``fused-autotune`` (the same, compiled with ``max-autotune``: inductor's tuned
matrix products with their neighbours fused in; minutes more compilation) and
``fused-sdpa`` (fused, with each layer's attention as one SDPA call instead of two
products and a softmax) and ``fused-cdt`` (fused, reduce-overhead's CUDA graphs with
inductor's coordinate-descent tuning of its own kernels' block sizes).

    PYTHONPATH=shared python benchmarks/bench_rollout.py [--batches 64 256]
    PYTHONPATH=shared python benchmarks/bench_rollout.py --batches 64 --engines hf hf-static \
        --static-variants unfused fused fused-autotune
    PYTHONPATH=shared python benchmarks/bench_rollout.py --size tiny   # CPU check
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from clab.generation.rollout import StaticGenerator, sampling_config
from clab.training.measure import graphs_compiled as graphs
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


# the static engine's builds: StaticGenerator keywords
VARIANTS = {
    "unfused": {"fuse": False},
    "fused": {"fuse": True},
    "fused-autotune": {"fuse": True, "compile_mode": "max-autotune"},
    "fused-sdpa": {"fuse": True, "attention_kernel": "sdpa"},  # attention in one kernel
    # reduce-overhead's CUDA graphs, with inductor's Triton kernels' block sizes tuned
    # (the decode step's norms, softmaxes and the token choice over the vocabulary)
    "fused-cdt": {
        "fuse": True,
        "compile_mode": {"triton.cudagraphs": True, "coordinate_descent_tuning": True},
    },
}


def timed(fn, device: torch.device) -> tuple[float, int]:
    """Seconds of one call, and what it returned (new tokens a row)."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def breakdown(gen: StaticGenerator, ids, mask, device: torch.device, n: int = 64) -> None:
    """ms a token of the static engine's parts: the compiled step (forward and token
    choice) alone, graph replays back to back; the prefill (its own graph); the eager
    draw of the sampling noise alone; then a profile of the loop."""
    from clab.generation.rollout import position_ids

    B, P, N = gen.batch_size, gen.max_prompt_length, gen.max_new_tokens
    n = min(n, N - 1)
    full = torch.ones(B, P + N, dtype=mask.dtype, device=device)
    full[:, :P] = mask
    pos = position_ids(mask)[:, -1:] + 1
    tok = torch.ones(B, 1, dtype=torch.long, device=device)

    def prefill_only():
        gen.cache.reset()
        with torch.no_grad():
            if gen.compile:
                torch.compiler.cudagraph_mark_step_begin()
            return gen._step(ids, position_ids(mask), full, gen._noise, 1.0, False)[0].clone()

    def steps():
        prefill_only()
        with torch.no_grad():
            for t in range(n):
                if gen.compile:
                    torch.compiler.cudagraph_mark_step_begin()
                chosen, _ = gen._step(tok, pos + t, full, gen._noise, 1.0, False)
        return chosen.clone()

    steps()
    t_steps, _ = timed(steps, device)
    prefill, _ = timed(prefill_only, device)

    def noise():
        for _ in range(n):
            gen._noise.exponential_()

    noise()
    t_noise, _ = timed(noise, device)
    print(
        f"  breakdown at batch {B}: compiled step {1e3 * (t_steps - prefill) / n:.2f} ms a "
        f"token (forward and token choice, back to back), noise draw "
        f"{1e3 * t_noise / n:.2f} ms, prefill {1e3 * prefill:.1f} ms",
        flush=True,
    )
    if device.type != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        gen.generate_ids(ids[:, :P], mask, B, _Tok(), temperature=1.0)
        sync(device)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="time the static engine's compiled step and its token choice apart, and profile",
    )
    ap.add_argument(
        "--engines",
        nargs="+",
        choices=["hf", "hf-generate-static", "hf-static"],
        default=["hf", "hf-generate-static", "hf-static"],
    )
    ap.add_argument(
        "--static-variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["fused"],
        help="builds of the static engine to time, each in turn (see the module's docstring)",
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
    hf_static_cfg = sampling_config(tok, R, 1.0, greedy=False)
    hf_static_cfg.cache_implementation = "static"

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
        t_hfs = float("nan")
        if "hf-generate-static" in args.engines:

            def hf_static(ids=ids, mask=mask):
                return dynamic(hf_static_cfg, ids, mask)

            t_hfs_first, _ = timed(hf_static, device)
            t_hfs = min(timed(hf_static, device)[0] for _ in range(args.repeats))
            print(f"batch {B}: transformers' static generate: first call {t_hfs_first:.1f} s, "
                  f"then {B * R / t_hfs:,.0f} tok/s ({t_hfs:.2f} s)", flush=True)  # fmt: skip
        if "hf-static" not in args.engines:
            print(f"batch {B}: dynamic first call {t_dyn_first:.1f} s, then "
                  f"{B * R / t_dyn:,.0f} tok/s ({t_dyn:.2f} s)", flush=True)  # fmt: skip
            continue

        bound = B / (decode_bytes(model, B, P + R / 2) / bw)
        for variant in args.static_variants:
            gen = StaticGenerator(
                model, batch_size=B, max_prompt_length=P, max_new_tokens=R, dtype=dtype,
                **VARIANTS[variant],
            )  # fmt: skip

            def static(ids=ids, mask=mask, gen=gen, B=B):
                return gen.generate_ids(ids, mask, B, tok, temperature=1.0)

            g0 = graphs()
            torch.manual_seed(1)  # the first call's tokens, for builds and versions to compare
            t_first, first_ids = timed(static, device)
            digest = hashlib.sha1(first_ids.cpu().numpy().tobytes()).hexdigest()[:12]
            begins = first_ids[0, :8].tolist()
            print(f"batch {B}: static ({variant}) tokens of the first call from seed 1: "
                  f"sha1 {digest}, row 0 begins {begins}", flush=True)  # fmt: skip
            g1 = graphs()
            t_sta = min(timed(static, device)[0] for _ in range(args.repeats))
            g_rep = graphs()  # none: the first call built the prefill's graph and the step's
            saved = [p.detach().clone() for p in model.parameters()]
            with torch.no_grad():  # an optimizer step's worth of change, in place
                for p in model.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
            gen.load_weights(model)
            t_after, after_ids = timed(static, device)
            with torch.no_grad():  # back: the next build's first call digests the same model
                for p, w in zip(model.parameters(), saved, strict=True):
                    p.copy_(w)
            del saved
            new = after_ids.shape[1]  # tokens a row (all the full length)
            g2 = graphs()
            rows.append((B, variant, B * R / t_dyn, B * R / t_hfs, t_first, B * R / t_sta, bound))
            print(
                f"batch {B}: dynamic first call {t_dyn_first:.1f} s, then {B * R / t_dyn:,.0f} "
                f"tok/s ({t_dyn:.2f} s); static ({variant}) first call "
                f"{t_first:.1f} s ({g1 - g0} graphs compiled), then {B * R / t_sta:,.0f} tok/s "
                f"({t_sta:.2f} s, best of {args.repeats}; {g_rep - g1} graphs compiled), after "
                f"an in-place weight update {B * R / t_after:,.0f} tok/s ({g2 - g_rep} graphs "
                f"compiled); {new} new tokens a row; bandwidth bound "
                f"{bound:,.0f} tok/s",
                flush=True,
            )
            if args.breakdown:
                breakdown(gen, ids, mask, device)
            del gen
            torch._dynamo.reset()  # the next build compiles its own step
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print("\n| batch | `hf` tok/s | transformers' static generate tok/s | `hf-static` build "
          "| `hf-static` tok/s | `hf-static` / `hf` | first `hf-static` call | bound tok/s "
          "| `hf-static` / bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for B, variant, dyn, hfs, first, sta, bound in rows:
        print(
            f"| {B} | {dyn:,.0f} | {hfs:,.0f} | {variant} | {sta:,.0f} | {sta / dyn:.2f}x "
            f"| {first:.1f} s | {bound:,.0f} | {sta / bound:.0%} |"
        )


if __name__ == "__main__":
    main()
