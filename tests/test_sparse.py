"""Sparse updates: unselected groups stay bit-identical under AdamW with weight decay,
over many steps; the selection rules on hand-made norms; groups of a real model."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from clab.errors import ClabError
from clab.training.sparse import (
    Smoothed,
    SparseOptimizer,
    among,
    check_group_names,
    dense,
    fraction,
    group_grad_norms,
    make_optimizer,
    parameter_groups,
    random_k,
    same_count_at_random,
    same_share_at_random,
    top_k,
)


def tiny_lm(layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(cfg)


def test_block_groups_of_a_decoder_model():
    groups = parameter_groups(tiny_lm(layers=4))
    assert list(groups) == [
        "embed",
        *[f"layer{i}.{part}" for i in range(4) for part in ("attn", "ffn")],
        "head",
    ]  # the public experiment's ten groups for a 4-layer model
    names = {g: [n for n, _ in members] for g, members in groups.items()}
    assert "model.layers.0.input_layernorm.weight" in names["layer0.attn"]
    assert "model.layers.0.post_attention_layernorm.weight" in names["layer0.ffn"]
    assert names["head"] == ["model.norm.weight", "lm_head.weight"]
    assert len(parameter_groups(tiny_lm(), "tensor")) == len(list(tiny_lm().parameters()))
    with pytest.raises(ClabError, match=r"unknown group 'layer9\.attn'"):
        check_group_names(["layer9.attn"], groups)


@pytest.mark.parametrize("family", ["opt", "gpt2", "gpt_neox", "llama"])
def test_every_family_splits_each_layer_into_attention_and_feed_forward(family):
    """A model loaded by name_or_path gets the same groups: OPT's fc1/fc2 once fell
    into the attention group, leaving K-1 a different set of groups to choose from."""
    from transformers import AutoConfig, AutoModelForCausalLM

    small = {"opt": dict(hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
                         word_embed_proj_dim=16),
             "gpt2": dict(n_embd=16, n_layer=2, n_head=2),
             "gpt_neox": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2),
             "llama": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2)}[family]  # fmt: skip
    cfg = AutoConfig.for_model(family, vocab_size=50, **small)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    groups = {g: [n for n, _ in m] for g, m in parameter_groups(model).items()}
    assert set(groups) == {"embed", "head"} | {
        f"layer{i}.{p}" for i in (0, 1) for p in ("attn", "ffn")
    }
    for i in (0, 1):  # each half holds matrices, not only a norm
        for part in ("attn", "ffn"):
            assert sum("norm" not in n and "ln" not in n for n in groups[f"layer{i}.{part}"]) >= 2


def test_group_norms_are_the_norms_of_the_concatenated_gradients():
    model = tiny_lm()
    model(
        input_ids=torch.randint(0, 50, (2, 6)), labels=torch.randint(0, 50, (2, 6))
    ).loss.backward()
    groups = parameter_groups(model)
    norms = group_grad_norms(groups)
    for (_, members), n in zip(groups.items(), norms, strict=True):
        flat = torch.cat([p.grad.flatten() for _, p in members])
        assert n.item() == pytest.approx(flat.norm().item(), rel=1e-5)


def test_unselected_groups_stay_bit_identical_with_adamw_and_weight_decay():
    model = tiny_lm()
    groups = parameter_groups(model)
    opt = SparseOptimizer(groups, make_optimizer("adamw", lr=1e-2, weight_decay=0.1))
    select = top_k(2)
    gen = torch.Generator().manual_seed(0)
    times = torch.zeros(len(groups), dtype=torch.long)
    for step in range(25):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ids = torch.randint(0, 50, (4, 8), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        chosen = select(group_grad_norms(groups), opt.sizes, gen)
        row = opt.step(chosen)
        assert row["groups_selected"] == 2
        times += chosen.long()
        for on, members in zip(chosen.tolist(), groups.values(), strict=True):
            for name, p in members:
                if on:
                    assert not torch.equal(p, before[name]), (step, name)
                else:  # no decay, no momentum, nothing
                    assert torch.equal(p, before[name]), (step, name)
    # Adam's step counter advanced only when its group was selected
    for opt_g, n in zip(opt.optimizers, times.tolist(), strict=True):
        steps = [s["step"] for s in opt_g.state_dict()["state"].values()]
        assert all(int(s) == n for s in steps) and (n == 0) == (not steps)
    assert int(times.sum()) == 50 and int((times > 0).sum()) >= 2


def test_a_masked_gradient_under_one_adamw_would_not_be_sparse():
    """Why one optimizer per group: AdamW with a zeroed gradient still decays the
    weight and applies its moments."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1)
    w.grad = torch.ones(3)
    opt.step()
    after_first = w.detach().clone()
    w.grad = torch.zeros(3)  # "not selected"
    opt.step()
    assert not torch.equal(w, after_first)


def test_selection_rules_on_hand_made_norms():
    norms = torch.tensor([0.5, 3.0, 1.0, 2.0])
    sizes = torch.tensor([40, 10, 30, 20])
    gen = torch.Generator().manual_seed(0)
    assert top_k(2)(norms, sizes, gen).tolist() == [False, True, False, True]
    # largest first: 3.0 (10%), 2.0 (+20% = 30%), 1.0 (+30% = 60%): 50% needs three groups
    assert fraction(0.5)(norms, sizes, gen).tolist() == [False, True, True, True]
    assert fraction(0.1)(norms, sizes, gen).tolist() == [False, True, False, False]
    assert dense()(norms, sizes, gen).all()
    picks = [random_k(2)(norms, sizes, gen) for _ in range(50)]
    assert all(int(p.sum()) == 2 for p in picks)
    assert len({tuple(p.tolist()) for p in picks}) > 3  # not always the same groups
    again = torch.Generator().manual_seed(0)
    assert random_k(2)(norms, sizes, again).tolist() == picks[0].tolist()


def test_tied_norms_go_to_the_earlier_group_so_a_rerun_picks_the_same_groups():
    """Ties happen (groups whose gradients are all zero, e.g. embedding rows no batch
    touched, tie at 0.0): the pick must not depend on sort internals, or two runs of
    one seed could update different groups. The earlier group in model order wins."""
    norms = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0, 0.0])
    sizes = torch.tensor([10, 10, 10, 10, 10, 10])
    gen = torch.Generator().manual_seed(0)
    assert top_k(2)(norms, sizes, gen).tolist() == [False, True, True, False, False, False]
    assert top_k(5)(norms, sizes, gen).tolist() == [True, True, True, True, True, False]
    # 50% of the model: the three 2.0 groups (ties kept in order) reach exactly half
    assert fraction(0.5)(norms, sizes, gen).tolist() == [False, True, True, False, True, False]
    assert fraction(0.25)(norms, sizes, gen).tolist() == [False, True, True, False, False, False]
    zeros = torch.zeros(6)
    assert top_k(1)(zeros, sizes, gen).tolist() == [True] + [False] * 5


def test_smoothing_keeps_a_group_on_until_its_average_drops_below_the_threshold():
    sizes = torch.ones(2)
    rule = Smoothed(top_k(1), decay=0.9, threshold=0.5)
    gen = torch.Generator()
    first = rule(torch.tensor([2.0, 1.0]), sizes, gen)
    assert first.tolist() == [True, False]
    # group 1 now wins the raw selection, but group 0 stays on for a few steps
    seen = [rule(torch.tensor([1.0, 2.0]), sizes, gen).tolist() for _ in range(8)]
    assert seen[0] == [True, False]
    assert seen[-1] == [False, True]
    switch = next(i for i, s in enumerate(seen) if s == [False, True])
    # 0.9^(n+1) < 0.5 from n = 6; 1 - 0.9^(n+1) > 0.5 likewise
    assert switch == 6


def test_random_k_takes_as_many_groups_as_the_k1_rule_whatever_the_rule():
    """The control must differ from K-1 in which groups, not how many: with the
    ``fraction`` rule K-1's count follows the norms, and random_k's must too."""
    sizes = torch.tensor([40, 10, 30, 20])
    gen = torch.Generator().manual_seed(0)
    for share, n in ((0.1, 1), (0.3, 2), (0.5, 3), (0.95, 4)):
        k1 = fraction(share)
        control = same_count_at_random(k1)
        norms = torch.tensor([0.5, 3.0, 1.0, 2.0])
        assert int(k1(norms, sizes, gen).sum()) == n
        picks = [control(norms, sizes, gen) for _ in range(30)]
        assert all(int(p.sum()) == n for p in picks)
        if n < 4:
            assert len({tuple(p.tolist()) for p in picks}) > 1


def test_random_share_updates_k1s_share_of_the_model_in_expectation():
    """Two vocabulary-sized groups and eight small ones, as the demo's model has: top
    2 by norm takes the two big ones (0.80 of the parameters). random_k's two groups
    cover far less on average; random_share covers 0.80 on average, each step a
    prefix of its random order just below or just above 0.80."""
    sizes = torch.tensor([40, 2, 3, 2, 3, 2, 3, 2, 3, 40])
    norms = torch.tensor([9.0, 1, 1, 1, 1, 1, 1, 1, 1, 8.0])
    gen = torch.Generator().manual_seed(0)
    k1 = top_k(2)
    assert float(sizes[k1(norms, sizes, gen)].sum()) / 100 == 0.8
    count, share = same_count_at_random(k1), same_share_at_random(k1)
    count_shares, shares, picks = [], [], []
    for _ in range(2000):
        count_shares.append(float(sizes[count(norms, sizes, gen)].sum()) / 100)
        state = gen.get_state()
        pick = share(norms, sizes, gen)
        order = torch.randperm(10, generator=torch.Generator().set_state(state))
        covered = torch.cumsum(sizes[order], 0) / 100
        n = int(pick.sum())
        assert set(order[:n].tolist()) == set(pick.nonzero().flatten().tolist())  # a prefix
        longer = int((covered < 0.8).sum()) + 1  # the shortest prefix reaching 0.8
        assert n in (longer - 1, longer)
        shares.append(float(sizes[pick].sum()) / 100)
        picks.append(tuple(pick.tolist()))
    assert sum(count_shares) / 2000 < 0.3  # what random_k leaves unmatched
    assert abs(sum(shares) / 2000 - 0.8) < 0.02
    assert len(set(picks)) > 100


def test_random_share_takes_nothing_when_the_rule_takes_nothing():
    sizes, norms = torch.tensor([4, 5, 6]), torch.tensor([1.0, 2.0, 3.0])
    none = lambda norms, sizes, gen: torch.zeros(3, dtype=torch.bool)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    assert not same_share_at_random(none)(norms, sizes, gen).any()


def test_a_frozen_group_never_takes_the_place_of_a_trainable_one():
    """top 2 with the largest-norm group frozen: the next two move, still two groups."""
    norms = torch.tensor([9.0, 3.0, 1.0, 2.0])
    sizes = torch.tensor([40, 10, 30, 20])
    live = torch.tensor([False, True, True, True])
    gen = torch.Generator().manual_seed(0)
    assert among(top_k(2), live)(norms, sizes, gen).tolist() == [
        False,
        True,
        False,
        True,
    ]
    for _ in range(20):
        pick = among(same_count_at_random(top_k(2)), live)(norms, sizes, gen)
        assert int(pick.sum()) == 2 and not pick[0]
    assert among(dense(), live)(norms, sizes, gen).tolist() == live.tolist()
