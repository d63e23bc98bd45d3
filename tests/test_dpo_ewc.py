"""Online EWC: zero at the anchor, quadratic in the distance, the Fisher summed over
every earlier task (the public code overwrote it), trainable parameters only."""

import torch

from clab.training.ewc import OnlineEWC, empirical_fisher


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        self.frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)


def test_penalty_is_zero_at_the_anchor_and_grows_with_the_square_of_the_distance():
    m = Two()
    ewc = OnlineEWC(m, lam=10.0)
    assert not ewc.active and float(ewc.penalty()) == 0.0  # nothing learnt yet
    ewc.consolidate(0, {"a": torch.tensor([1.0, 0.5, 2.0])})
    assert ewc.active and float(ewc.penalty()) == 0.0
    step = torch.tensor([0.1, 0.1, 0.1])
    with torch.no_grad():
        m.a += step
    p1 = float(ewc.penalty())
    assert abs(p1 - 0.5 * 10 * (3.5 * 0.01)) < 1e-6  # lambda/2 * sum F d^2
    with torch.no_grad():
        m.a += step
    assert float(ewc.penalty()) > p1 and abs(float(ewc.penalty()) / p1 - 4.0) < 1e-4
    # its gradient pulls back towards the anchor
    ewc.penalty().backward()
    assert (m.a.grad > 0).all()


def test_fisher_covers_every_earlier_task_and_only_trainable_parameters():
    m = Two()
    ewc = OnlineEWC(m, lam=1.0, gamma=0.5)
    f0, f1 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, 1.0])
    ewc.consolidate(0, {"a": f0})
    with torch.no_grad():
        m.a.mul_(2)
    ewc.consolidate(1, {"a": f1})
    assert ewc.tasks == [0, 1]
    torch.testing.assert_close(ewc.fisher["a"], 0.5 * f0 + f1)  # not f1 alone
    torch.testing.assert_close(ewc.anchor["a"], m.a.detach())  # the latest task's weights
    assert set(ewc.fisher) == {"a"}  # the frozen parameter is in no term


def test_state_survives_a_save_and_load(tmp_path):
    m = Two()
    ewc = OnlineEWC(m, lam=3.0)
    ewc.consolidate(2, {"a": torch.tensor([1.0, 1.0, 1.0])})
    ewc.save(tmp_path)
    again = OnlineEWC(m, lam=3.0)
    again.load(tmp_path)
    assert again.tasks == [2]
    torch.testing.assert_close(again.fisher["a"], ewc.fisher["a"])
    torch.testing.assert_close(again.anchor["a"], ewc.anchor["a"])
    again.load(tmp_path / "nowhere")  # a stage without EWC state: nothing learnt
    assert not again.active


def test_empirical_fisher_is_the_mean_of_per_example_squared_gradients():
    w = torch.nn.Parameter(torch.zeros(2))
    xs = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])]
    # loss_i = w . x_i + 0.5 |w|^2: gradient at w = 0 is x_i
    f = empirical_fisher([("w", w)], xs, lambda x: w @ x + 0.5 * (w**2).sum())
    torch.testing.assert_close(f["w"], torch.tensor([(1 + 9) / 2, (4 + 1) / 2]))
    # not the square of the batch mean's gradient, which is what the public code took
    assert not torch.allclose(f["w"], torch.tensor([2.0, 0.5]) ** 2)
