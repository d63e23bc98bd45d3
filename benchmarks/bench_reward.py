"""Throughput of the Countdown reward, and its worst case on hostile input.

Reports completions scored per second on a realistic mix (correct, wrong,
malformed, no answer), and the slowest single call over adversarial inputs up
to 10 kB: the kind that hangs an ``eval``-based scorer (``100**99**98``),
deep nesting, huge literals, long products, many answer tags.

    uv run python benchmarks/bench_reward.py
"""

from __future__ import annotations

import random
import time

from clab.rewards.countdown import score_countdown

THINK = "<think>" + "Let me try some combinations. " * 20 + "</think>"


def realistic(n: int) -> list[tuple[str, int, list[int]]]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        a, b, c = rng.randint(1, 100), rng.randint(1, 100), rng.randint(1, 100)
        kind = i % 4
        if kind == 0:
            text = f"{THINK} <answer>({a} + {b}) - {c}</answer>"
        elif kind == 1:
            text = f"{THINK} <answer>{a} * {b} + {c}</answer>"
        elif kind == 2:
            text = f"{THINK} <answer>{a} + x</answer>"
        else:
            text = THINK
        out.append((text, a + b - c, [a, b, c]))
    return out


def adversarial() -> dict[str, str]:
    ten_kb = 10_000
    return {
        "power tower 100**99**98": "<answer>100**99**98</answer>",
        "10 kB of digits": "<answer>" + "9" * (ten_kb - 20) + "</answer>",
        "max-length product": "<answer>" + " * ".join(["99"] * 199) + "</answer>",
        "max-length division chain": "<answer>" + " / ".join(["97"] * 199) + "</answer>",
        "deep nesting": "<answer>" + "(" * 490 + "1" + ")" * 490 + "</answer>",
        "10 kB of '<answer>' tags": "<answer>" * (ten_kb // 8 - 2) + "1</answer>",
        "10 kB no closing tag": "<answer>" + "1+" * (ten_kb // 2 - 10),
        "10 kB random text": "".join(random.Random(1).choices("ab<>/()*+ 01", k=ten_kb)),
        "10 kB expression": "<answer>" + "1+" * (ten_kb // 2 - 20) + "1</answer>",
    }


def main() -> None:
    cases = realistic(20_000)
    start = time.perf_counter()
    for text, target, nums in cases:
        score_countdown(text, target, nums)
    wall = time.perf_counter() - start
    print(f"realistic mix: {len(cases) / wall:,.0f} completions/s (one core)")
    print("| adversarial input | worst of 20 calls | reason |")
    print("|---|---|---|")
    worst = 0.0
    for label, text in adversarial().items():
        times = []
        for _ in range(20):
            t = time.perf_counter()
            r = score_countdown(text, 24, [1, 2, 3, 4])
            times.append(time.perf_counter() - t)
        worst = max(worst, max(times))
        print(f"| {label} | {max(times) * 1e3:.2f} ms | {r.reason.value} |")
    print(f"worst case over all inputs up to 10 kB: {worst * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
