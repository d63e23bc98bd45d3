"""Countdown: reach a target from given numbers with + - * /, each number once."""

GROUP_OPS: dict[int, tuple[str, ...]] = {
    0: ("+",),
    1: ("+", "-"),
    2: ("+", "-", "*"),
    3: ("+", "-", "*", "/"),
}
"""The four cumulative operator groups of the curriculum."""

ALL_OPS: tuple[str, ...] = GROUP_OPS[3]
