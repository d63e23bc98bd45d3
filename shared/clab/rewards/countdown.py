"""The Countdown reward: safe, structured, and the same for training and evaluation.

Scores follow TinyZero: 0 when the completion holds no ``<answer>``, a format
score (0.1) for an answer that is invalid or wrong, 1.0 for a correct one. A
correct answer equals the target within 1e-5, uses every given number exactly
once and (by default) only the operators its group allows.

The expression is never handed to ``eval``: TinyZero's filter lets ``**``
through, so ``100**99**98`` hangs its scorer. Here a small recursive-descent
parser accepts only integer literals, ``+ - * /``, parentheses and spaces, with
limits on length, nesting and magnitude, and evaluates with exact fractions.
Every outcome is a :class:`RewardResult` whose ``reason`` says why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

MAX_EXPRESSION_CHARS = 1000
MAX_DEPTH = 32
MAX_LITERAL_DIGITS = 12
MAX_MAGNITUDE = 10**30
TOLERANCE = 1e-5
FORMAT_SCORE = 0.1
CORRECT_SCORE = 1.0
ALL_OPS = ("+", "-", "*", "/")


class Reason(StrEnum):
    CORRECT = "correct"
    NO_ANSWER = "no_answer"
    TOO_LONG = "too_long"
    INVALID_CHARACTER = "invalid_character"
    PARSE_ERROR = "parse_error"
    TOO_DEEP = "too_deep"
    DIVISION_BY_ZERO = "division_by_zero"
    VALUE_TOO_LARGE = "value_too_large"
    DISALLOWED_OPERATOR = "disallowed_operator"
    WRONG_NUMBERS = "wrong_numbers"
    WRONG_VALUE = "wrong_value"


@dataclass(frozen=True)
class RewardResult:
    score: float
    correct: bool
    reason: Reason
    answer: str | None = None
    value: float | None = None


class _Invalid(Exception):
    def __init__(self, reason: Reason):
        self.reason = reason


_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")


# an <answer> and the first </answer> after it, with no <answer> between them
_ANSWER = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.S)


def extract_answer(completion: str) -> str | None:
    """The text of the last complete ``<answer>...</answer>`` in the completion.

    The whole completion is searched, where TinyZero keeps only its last line: an
    answer followed by more lines, or spread over lines, counts here and scores 0
    there (so success rates here can run above TinyZero's on the same outputs). A
    stray ``</answer>`` after a complete answer does not hide it."""
    found = _ANSWER.findall(completion)
    return found[-1].strip() if found else None


def _tokenize(expr: str) -> list[str | int]:
    tokens: list[str | int] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c.isdigit():
            j = i
            while j < n and expr[j].isdigit():
                j += 1
            if j - i > MAX_LITERAL_DIGITS:
                raise _Invalid(Reason.VALUE_TOO_LARGE)
            if expr[i] == "0" and expr[i:j].strip(
                "0"
            ):  # "05": Python rejects it, as TinyZero's eval
                raise _Invalid(Reason.PARSE_ERROR)
            tokens.append(int(expr[i:j]))
            i = j
        else:
            tokens.append(c)
            i += 1
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := INT | '(' expr ')'. No unary operators, no powers."""

    def __init__(self, tokens: list[str | int]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.numbers: list[int] = []
        self.ops: set[str] = set()

    def _peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction:
        value = self._expr()
        if self.pos != len(self.tokens):
            raise _Invalid(Reason.PARSE_ERROR)
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            self.ops.add(op)
            rhs = self._term()
            value = _check(value + rhs if op == "+" else value - rhs)
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            self.ops.add(op)
            rhs = self._factor()
            if op == "*":
                value = _check(value * rhs)
            elif rhs == 0:
                raise _Invalid(Reason.DIVISION_BY_ZERO)
            else:
                value = _check(value / rhs)
        return value

    def _factor(self) -> Fraction:
        tok = self._peek()
        if isinstance(tok, int):
            self.pos += 1
            self.numbers.append(tok)
            return Fraction(tok)
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Invalid(Reason.TOO_DEEP)
            self.pos += 1
            value = self._expr()
            if self._peek() != ")":
                raise _Invalid(Reason.PARSE_ERROR)
            self.pos += 1
            self.depth -= 1
            return value
        raise _Invalid(Reason.PARSE_ERROR)


def _check(value: Fraction) -> Fraction:
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise _Invalid(Reason.VALUE_TOO_LARGE)
    return value


@dataclass(frozen=True)
class ParsedExpression:
    value: Fraction
    numbers: list[int]
    ops: set[str]


def parse_expression(expr: str) -> ParsedExpression:
    """Parse and evaluate an arithmetic expression exactly, or raise ValueError.

    The ValueError's message is a :class:`Reason` value.
    """
    try:
        return _parse(expr)
    except _Invalid as e:
        raise ValueError(str(e.reason)) from None


def _parse(expr: str) -> ParsedExpression:
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise _Invalid(Reason.TOO_LONG)
    if not _ALLOWED_CHARS.issuperset(expr):
        raise _Invalid(Reason.INVALID_CHARACTER)
    parser = _Parser(_tokenize(expr))
    value = parser.parse()
    return ParsedExpression(value, parser.numbers, parser.ops)


def score_countdown(
    completion: str,
    target: int,
    numbers: Sequence[int],
    allowed_ops: Iterable[str] | None = None,
    *,
    format_score: float = FORMAT_SCORE,
    correct_score: float = CORRECT_SCORE,
) -> RewardResult:
    """Score one completion against one problem; never raises on any string.

    ``allowed_ops`` (e.g. ``["+", "-"]``) restricts the operators a correct
    answer may use; ``None`` allows all four.
    """
    answer = extract_answer(completion) if isinstance(completion, str) else None
    if answer is None:
        return RewardResult(0.0, False, Reason.NO_ANSWER)

    def wrong(reason: Reason, value: float | None = None) -> RewardResult:
        return RewardResult(format_score, False, reason, answer, value)

    try:
        parsed = _parse(answer)
    except _Invalid as e:
        return wrong(e.reason)
    except RecursionError:  # belt and braces: MAX_DEPTH keeps recursion shallow
        return wrong(Reason.TOO_DEEP)
    value = float(parsed.value)
    if allowed_ops is not None and not parsed.ops.issubset(set(allowed_ops)):
        return wrong(Reason.DISALLOWED_OPERATOR, value)
    if Counter(parsed.numbers) != Counter(int(x) for x in numbers):
        return wrong(Reason.WRONG_NUMBERS, value)
    if abs(parsed.value - Fraction(int(target))) >= Fraction(TOLERANCE):
        return wrong(Reason.WRONG_VALUE, value)
    return RewardResult(correct_score, True, Reason.CORRECT, answer, value)


def answer_forms(answers: Iterable[str | None]) -> int:
    """How many shapes a batch's answers take: each answer with its numbers written
    ``#`` and its spaces dropped (``16 - 13 + 2`` and ``7-1+5`` are one form,
    ``#-#+#``); a response without an answer is a form of its own.

    Why: an RL policy can collapse onto one template that fills in the prompt's
    numbers. Its token entropy then falls near zero, but the entropy does not say
    that every answer has one shape; this count does (1: every response the same
    template). Countdown's answers only, hence here beside their parser."""
    return len({None if a is None else re.sub(r"\d+(\.\d+)?|\s+", _form_part, a) for a in answers})


def _form_part(m: re.Match) -> str:
    return "" if m.group(0).isspace() else "#"


class CountdownReward:
    """The reward as trainers call it, on batches, in TRL's reward-function form.

    TRL passes ``prompts``, ``completions`` and every dataset column by name;
    ``log_metric`` records the success rate (the fraction exactly correct),
    which the mean reward cannot give because it includes the format score, and
    the number of answer forms (:func:`answer_forms`).
    """

    __name__ = "countdown"

    def __init__(self, enforce_ops: bool = True):
        self.enforce_ops = enforce_ops

    def score(
        self,
        completions: Sequence[str],
        targets: Sequence[int],
        nums: Sequence[Sequence[int]],
        allowed_ops: Sequence[Sequence[str]],
    ) -> list[RewardResult]:
        return [
            score_countdown(c, t, n, ops if self.enforce_ops else None)
            for c, t, n, ops in zip(completions, targets, nums, allowed_ops, strict=True)
        ]

    def __call__(
        self, prompts, completions, target, nums, allowed_ops, log_metric=None, **_: object
    ) -> list[float]:
        results = self.score(completions, target, nums, allowed_ops)
        if log_metric is not None:
            log_metric("success_rate", sum(r.correct for r in results) / max(len(results), 1))
            log_metric("answer_forms", answer_forms(r.answer for r in results))
        return [r.score for r in results]
