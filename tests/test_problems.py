import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clab.data.countdown import GROUP_OPS
from clab.data.countdown.problems import sample_problems, solvable, solvable_mixed
from clab.rewards.countdown import parse_expression, score_countdown
from conftest import brute_force_solvable


@pytest.mark.parametrize("group", [0, 1, 2, 3])
def test_sampled_problems_meet_every_constraint(group):
    ops = GROUP_OPS[group]
    p = sample_problems(
        np.random.default_rng(group), 20_000, ops, require_op=ops[-1], target_range=(1, 1000)
    )
    assert len(p) > 50
    for nums, target, sol in zip(p.numbers, p.target, p.solution, strict=True):
        parsed = parse_expression(sol)
        assert parsed.value == target and 1 <= target <= 1000
        assert sorted(parsed.numbers) == sorted(nums) and 3 <= len(nums) <= 4
        assert parsed.ops <= set(ops) and ops[-1] in parsed.ops
        assert all(1 <= n <= 100 for n in nums)


def test_division_in_reference_solutions_is_exact():
    p = sample_problems(np.random.default_rng(1), 50_000, GROUP_OPS[3], require_op="/")
    # Every subexpression of a reference solution is an integer: check each
    # division's operands by evaluating the tree bottom-up.
    import ast

    def ev(node):
        if isinstance(node, ast.Constant):
            return node.value
        a, b = ev(node.left), ev(node.right)
        if isinstance(node.op, ast.Div):
            assert b != 0 and a % b == 0, sol
            return a // b
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(node.op)]

    for sol in p.solution[:2000]:
        ev(ast.parse(sol, mode="eval").body)


def test_shown_number_order_is_not_the_solution_order():
    p = sample_problems(np.random.default_rng(3), 20_000, GROUP_OPS[0])
    same = sum(parse_expression(s).numbers == n for s, n in zip(p.solution, p.numbers, strict=True))
    assert same < 0.3 * len(p)


@pytest.mark.parametrize("ops", [GROUP_OPS[0], GROUP_OPS[1], GROUP_OPS[2], GROUP_OPS[3]])
def test_vectorised_solver_agrees_with_exact_brute_force(ops):
    rng = np.random.default_rng(7)
    for n in (2, 3, 4):
        nums = rng.integers(1, 12, size=(150, n))
        targets = rng.integers(1, 60, size=150)
        got = solvable(nums, targets, ops)
        want = [
            brute_force_solvable(list(r), int(t), ops) for r, t in zip(nums, targets, strict=True)
        ]
        assert got.tolist() == want
        assert 0 < sum(want) < 150  # both outcomes exercised


def test_solver_handles_fractional_paths_like_the_reward():
    # 24 from [1, 3, 4, 6] needs 6 / (1 - 3/4): a non-integer intermediate.
    assert solvable(np.array([[1, 3, 4, 6]]), np.array([24]), GROUP_OPS[3])[0]
    assert not solvable(np.array([[1, 3, 4, 6]]), np.array([24]), GROUP_OPS[1])[0]


def test_solvable_mixed_lengths():
    got = solvable_mixed([[1, 2, 3], [2, 2, 2, 2], [5, 5, 5]], [6, 16, 100], ("+", "*"))
    assert got.tolist() == [True, True, False]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2, 3]),
    st.sampled_from([(3, 3), (3, 4), (4, 4)]),
)
def test_every_reference_solution_scores_one(seed, group, count):
    ops = GROUP_OPS[group]
    p = sample_problems(
        np.random.default_rng(seed), 3000, ops, count_range=count, require_op=ops[-1]
    )
    for nums, target, sol in zip(p.numbers, p.target, p.solution, strict=True):
        r = score_countdown(f"<think>x</think><answer>{sol}</answer>", target, nums, ops)
        assert r.correct, (nums, target, sol, r)


def test_at_the_largest_numbers_a_spec_allows_every_reference_solution_reaches_its_target():
    """The generator evaluates its trees in int64. Above ``MAX_NUMBER`` four numbers
    multiplied can wrap around (numbers 50,001 to 99,999, targets up to 10^18: 438
    rows of 134,848 whose solution misses its target), so the spec refuses them; at
    the cap nothing wraps."""
    import numpy as np

    from clab.data.countdown.curriculum import MAX_NUMBER, MAX_TARGET
    from clab.data.countdown.problems import sample_problems
    from clab.rewards.countdown import score_countdown

    ops = ("+", "-", "*")
    top = (MAX_NUMBER - 10, MAX_NUMBER)
    p = sample_problems(np.random.default_rng(0), 20_000, ops, count_range=(4, 4),
                        number_range=top, target_range=(1, MAX_TARGET))  # fmt: skip
    assert len(p.target) > 1000 and max(p.target) > 10**14  # three of the four multiplied
    for nums, target, solution in zip(p.numbers, p.target, p.solution, strict=True):
        assert score_countdown(f"<answer>{solution}</answer>", target, nums, ops).correct
