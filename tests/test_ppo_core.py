import pytest
import torch

from clab.training.ppo_core import (
    entropy_from_logits,
    gae,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_hand_worked_gamma_lambda_one():
    adv, ret = gae(t([0, 0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), 1.0, 1.0)
    # delta = [0.1, 0.1, 0.3]; A = suffix sums = [0.5, 0.4, 0.3]; R = A + V = 1
    assert adv.tolist()[0] == pytest.approx([0.5, 0.4, 0.3])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])


def test_gae_hand_worked_discounted():
    adv, ret = gae(t([0, 0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), 0.9, 0.5)
    # delta2 = 0.3; delta1 = 0.9*0.7 - 0.6 = 0.03; delta0 = 0.9*0.6 - 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.45*0.3 = 0.165; A0 = 0.04 + 0.45*0.165 = 0.11425
    assert adv.tolist()[0] == pytest.approx([0.11425, 0.165, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.61425, 0.765, 1.0])


def test_gae_ends_the_episode_at_the_last_real_token():
    # The padded position's value (9.0) must not leak into the advantages.
    adv, ret = gae(t([0, 1.0, 0]), t([0.2, 0.4, 9.0]), t([1, 1, 0]), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.8, 0.6, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 0.0])


def test_token_rewards_put_the_score_on_the_last_real_token():
    r = token_rewards(
        torch.tensor([1.0, 0.1]),
        t([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]),
        t([1, 1, 0], [1, 1, 1]),
        kl_coef=0.1,
    )
    assert r.tolist()[0] == pytest.approx([-0.05, 0.95, 0.0])
    assert r.tolist()[1] == pytest.approx([-0.1, -0.1, 0.0])
    # k1's estimate log pi - log pi_ref is negative where the policy puts less mass
    # than the reference on the sampled token: the penalty then adds reward (veRL's
    # apply_kl_penalty, token_level_scores - beta * kld)
    r = token_rewards(torch.tensor([0.0]), t([-0.5, 0.2]), t([1, 1]), kl_coef=0.1)
    assert r.tolist()[0] == pytest.approx([0.05, -0.02])


def test_policy_loss_clips_large_ratios():
    mask = t([1, 1])
    adv = t([1.0, -1.0])
    old = t([0.0, 0.0])
    # ratio e^0.5 = 1.65 with A>0: clipped at 1.2; ratio e^-0.5 = 0.61 with A<0: clipped at 0.8
    new = t([0.5, -0.5])
    loss, clipfrac = policy_loss(new, old, adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert clipfrac.item() == pytest.approx(1.0)
    # inside the trust region nothing is clipped and the loss is -A * ratio
    new = t([0.1, -0.1])
    loss, clipfrac = policy_loss(new, old, adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx((-torch.exp(t(0.1)) + torch.exp(t(-0.1))).item() / 2)
    assert clipfrac.item() == 0.0


def test_policy_loss_gradient_vanishes_when_clipped():
    new = t([0.5]).requires_grad_()
    loss, _ = policy_loss(new, t([0.0]), t([1.0]), t([1]), 0.2)
    loss.backward()
    assert new.grad.item() == 0.0


def test_value_loss_clips_moves_away_from_old_values():
    old = t([0.0, 0.0])
    ret = t([1.0, 1.0])
    # V jumps past the clip (0.2) on the far side of the return: clipped term is larger
    values = t([2.0, 0.1])
    loss, clipfrac = value_loss(values, old, ret, t([1, 1]), clip_range=0.2)
    # item 0: unclipped (2-1)^2 = 1, clipped (0.2-1)^2 = 0.64 -> max 1
    # item 1: unclipped (0.1-1)^2 = 0.81, clipped same (inside range) -> 0.81
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    values = t([0.5, 0.1])  # moving 0.5 toward the return is capped at 0.2
    loss, clipfrac = value_loss(values, old, ret, t([1, 1]), clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * ((0.8**2) + 0.81) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_whiten_and_entropy():
    x = masked_whiten(t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0]))
    assert x[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert x[0, 3].item() == 0.0
    # the unbiased variance, as veRL's masked_whiten: 1, 2, 3 have variance 1 (n - 1),
    # so whitened they are -1, 0, 1 (the biased 2/3 would give -1.22, 0, 1.22)
    assert x[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    uniform = entropy_from_logits(torch.zeros(1, 4))
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_dual_clip_caps_a_bad_tokens_loss_at_c_times_its_advantage():
    """veRL's vanilla loss (clip_ratio_c = 3): with A < 0 and the ratio at e^1.5 = 4.48
    the single clip leaves -A r = 4.48 (clipping only lowers the ratio from below),
    the dual clip caps it at -3 A = 3 and its gradient vanishes; A > 0 and ratios
    below c are untouched."""
    old = t([0.0, 0.0, 0.0])
    adv = t([-1.0, 1.0, -1.0])
    new = t([1.5, 1.5, 0.5]).requires_grad_()
    mask = t([1, 1, 1])
    single, _ = policy_loss(new, old, adv, mask, 0.2)
    dual, clipfrac = policy_loss(new, old, adv, mask, 0.2, clip_ratio_c=3.0)
    e = torch.exp(t(1.5)).item(), torch.exp(t(0.5)).item()
    # token 0: 4.48 -> 3; token 1: A>0, clipped at 1.2 -> -1.2; token 2: ratio 1.65 < 3 -> 1.65
    assert single.item() == pytest.approx((e[0] - 1.2 + e[1]) / 3)
    assert dual.item() == pytest.approx((3.0 - 1.2 + e[1]) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)  # only token 1 hit the single clip
    dual.backward()
    assert new.grad[0, 0].item() == 0.0 and new.grad[0, 2].item() != 0.0


def test_a_huge_log_ratio_gives_a_finite_loss():
    """The log-ratio is clamped at +-20 before exp, as veRL does: a token whose
    probability rose e^100-fold gives e^20, not inf (and NaN where A is 0)."""
    loss, _ = policy_loss(t([100.0]), t([0.0]), t([-1.0]), t([1]), 0.2)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(torch.exp(t(20.0)).item())
