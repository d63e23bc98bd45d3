"""PPO where it differed from veRL (issue 8): fp32 weights under bf16 autocast, no
dropout, a seeded value head, temperature in every probability, whitening and loss
aggregation over the whole batch, the learning rate after a resume, metrics across
workers."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from clab.data.countdown.reading import read_group
from clab.distributed.reduce import reduce_metrics
from clab.generation.rollout import hf_generate, position_ids
from clab.metrics.training import WeightTracker, distance
from clab.models.loading import load_critic, load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model
from clab.rewards.countdown import Reason, RewardResult
from clab.specs import load_spec
from clab.training.ppo import NonFiniteLoss, PPOConfig, PPOTrainer
from clab.training.ppo_core import masked_whiten, policy_loss


@pytest.fixture
def tiny(tmp_path, dataset) -> Path:
    probs = read_group(dataset, 0, "train", 8)
    build_tiny_model(tmp_path / "m", [p.prompt for p in probs], vocab_size=300, hidden_size=32)
    return tmp_path / "m"


def _score(texts, problems):
    # a reward that varies with the text, so that advantages and gradients are not zero
    return [RewardResult(len(t) % 3 / 2, False, Reason.WRONG_VALUE) for t in texts]


def _trainer(model_dir, **cfg) -> PPOTrainer:
    base = dict(
        actor_lr=1e-3,
        critic_lr=1e-3,
        mini_batch_size=4,
        micro_batch_size=2,
        max_response_length=6,
        max_prompt_length=160,
    )
    base.update(cfg)
    return PPOTrainer(
        load_policy(model_dir),
        load_critic(model_dir, seed=0),
        load_policy(model_dir),
        load_tokenizer(model_dir),
        PPOConfig(**base),
        _score,
    )


def test_fp32_weights_under_bf16_autocast_all_move_at_lr_1e6(tiny, dataset):
    """One AdamW step at lr 1e-6: with fp32 weights every element with a gradient moves;
    the same step applied to bf16 copies rounds almost all of them away."""
    torch.manual_seed(0)
    tr = _trainer(tiny, actor_lr=1e-6, compute_dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in tr.actor.parameters())
    before = [p.detach().clone() for p in tr.actor.parameters()]
    tr.step(read_group(dataset, 0, "train", 4))
    with_grad = moved = moved_bf16 = 0
    for p, b in zip(tr.actor.parameters(), before, strict=True):
        if p.grad is None:
            continue
        g = p.grad != 0
        with_grad += int(g.sum())
        moved += int(((p != b) & g).sum())
        moved_bf16 += int(((p.bfloat16() != b.bfloat16()) & g).sum())
    assert with_grad > 1000
    assert moved == with_grad
    assert moved_bf16 < 0.2 * with_grad


class _CastCounter(TorchDispatchMode):
    """Counts the casts of each of ``params`` (by storage) to bf16."""

    def __init__(self, params):
        super().__init__()
        self.ptrs = {p.data_ptr(): name for name, p in params}
        self.casts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            name = self.ptrs.get(args[0].data_ptr())
            if name is not None:
                self.casts[name] = self.casts.get(name, 0) + 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_each_weight_is_cast_once_per_optimizer_step_and_the_numbers_do_not_change(
    tiny, dataset, checkpointing
):
    """Under bf16 autocast over fp32 weights a weight is cast to bf16 at every use
    unless autocast's cache keeps the cast: the update and the scoring passes run
    each model's micro-batches in one autocast region (the rollout already ran in
    one), so each weight is cast once per optimizer step and once per scoring pass,
    whatever the number of micro-batches. The bf16 values are the same, so the
    step's numbers are bit for bit those of casting at every use (the cache off).
    Under gradient checkpointing the update casts as before, in each forward and
    each recomputation: holding a whole bf16 copy through the backward would undo
    what checkpointing saves."""
    problems = read_group(dataset, 0, "train", 4)
    rows, weights, counts = [], [], []
    for cache in (False, True):
        torch.set_autocast_cache_enabled(cache)
        try:
            torch.manual_seed(0)
            tr = _trainer(tiny, compute_dtype="bfloat16", mini_batch_size=4, micro_batch_size=1)
            if checkpointing:
                tr.actor.gradient_checkpointing_enable()
                tr.critic.gradient_checkpointing_enable()
            counter = _CastCounter(tr.actor.named_parameters())
            torch.manual_seed(1)
            with counter:
                rows.append(tr.step(problems))
        finally:
            torch.set_autocast_cache_enabled(True)
        weights.append([p.detach().clone() for p in tr.actor.parameters()])
        counts.append(counter.casts)

    # once for the rollout, once for the old log-probs, once for the optimizer step;
    # at every use: 6 decoding steps, 4 scoring and 4 update micro-batches. Under
    # checkpointing the update casts in each forward and each recomputation of a
    # layer (1 + 1 + 4 + 4; the head, not recomputed: 1 + 1 + 4)
    def split(c: dict) -> tuple[set, set]:  # the decoder layers' counts, the others'
        return ({v for k, v in c.items() if ".layers." in k},
                {v for k, v in c.items() if ".layers." not in k})  # fmt: skip

    assert split(counts[1]) == (({10}, {6}) if checkpointing else ({3}, {3}))
    assert split(counts[0]) == (({18}, {14}) if checkpointing else ({14}, {14}))
    for k in ("policy_loss", "value_loss", "entropy", "grad_norm", "critic_grad_norm", "kl"):
        assert rows[1][k] == rows[0][k], k
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_the_critic_has_no_dropout_train_and_eval_values_agree(tiny):
    critic = load_critic(tiny, seed=0)
    ids = torch.randint(0, 300, (2, 12))
    critic.train()
    a = critic(input_ids=ids).logits
    critic.eval()
    b = critic(input_ids=ids).logits
    assert torch.equal(a, b)
    assert all(m.p == 0 for m in critic.modules() if isinstance(m, torch.nn.Dropout))


def test_a_new_value_head_is_seeded(tiny):
    heads = [load_critic(tiny, seed=s).score.weight for s in (1, 1, 2)]
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_sampling_ignores_the_checkpoints_generation_config(tiny, dataset):
    prompts = [p.prompt for p in read_group(dataset, 0, "test", 4)]
    tok = load_tokenizer(tiny)

    def sample(model):
        torch.manual_seed(3)
        return hf_generate(model, tok, prompts, max_prompt_length=160, max_new_tokens=8).texts

    clean = sample(load_policy(tiny))
    (tiny / "generation_config.json").write_text(
        '{"repetition_penalty": 5.0, "top_k": 1, "top_p": 0.1, "do_sample": false}'
    )
    assert sample(load_policy(tiny)) == clean


@pytest.mark.parametrize("fused", [True, False])
def test_log_probs_are_those_of_the_tempered_distribution(tiny, dataset, fused):
    tr = _trainer(tiny, temperature=0.7, fused_logprobs=fused)
    ro = tr._rollout([p.prompt for p in read_group(dataset, 0, "test", 2)])
    idx = torch.arange(2)
    lp, _ = tr._logprobs(tr.actor, ro, idx)
    ids = torch.cat([ro.prompt_ids, ro.response_ids], dim=1)
    mask = torch.cat([ro.prompt_mask, ro.response_mask], dim=1)
    raw = tr.actor(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    P, R = ro.prompt_ids.shape[1], ro.response_ids.shape[1]
    expect = torch.log_softmax(raw[:, P - 1 : P + R - 1].float() / 0.7, -1)
    expect = expect.gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp, expect, atol=1e-5)


def test_micro_batches_of_unequal_length_give_the_big_batch_gradient():
    """Token-mean over the mini-batch: the sum of the micro-batch losses, each over the
    mini-batch's token count, is the loss of the whole; a mean of per-micro-batch means
    would weight the tokens of a short micro-batch more."""
    torch.manual_seed(0)
    lp = torch.randn(4, 5, requires_grad=True)
    old, adv = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32
    )
    whole, _ = policy_loss(lp, old, adv, mask, 0.2)
    (g_whole,) = torch.autograd.grad(whole, lp)
    denom = mask.sum().item()
    halves = (slice(0, 2), slice(2, 4))
    parts = [policy_loss(lp[s], old[s], adv[s], mask[s], 0.2, denom)[0] for s in halves]
    (g_parts,) = torch.autograd.grad(sum(parts), lp)
    assert torch.allclose(g_whole, g_parts)
    naive = sum(policy_loss(lp[s], old[s], adv[s], mask[s], 0.2)[0] / 2 for s in halves)
    (g_naive,) = torch.autograd.grad(naive, lp)
    assert not torch.allclose(g_whole, g_naive)


@pytest.mark.slow
def test_compiled_layers_give_the_eager_step_within_rounding(tmp_path, dataset):
    """``ppo.compile_layers``: every decoder layer of actor and critic compiled (the
    scoring and update passes through inductor's kernels), one step gives the eager
    step's losses and weights within fp32 rounding, and a second step of other
    response lengths compiles nothing new (dynamic shapes).

    The model has more layers than dynamo's recompile limit (8): the layers share
    their graphs. A pass that built a KV cache made each layer's cache entry a guard
    of its own, one graph a layer, and past the limit the rest ran eagerly; on an
    H100 profile that was 20 of Qwen2.5-1.5B's 28 layers."""
    from torch._dynamo.utils import counters

    problems = read_group(dataset, 0, "train", 8)
    deep = tmp_path / "deep"
    build_tiny_model(deep, [p.prompt for p in problems], vocab_size=300, hidden_size=32,
                     num_layers=10)  # fmt: skip
    rows, weights = [], []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        tr = _trainer(deep, compile_layers=compiled)
        layers = tr.actor.model.layers
        assert all((x._compiled_call_impl is not None) == compiled for x in layers)
        torch.manual_seed(1)
        # a layer that fell back to eager past the recompile limit fails here
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            rows.append(tr.step(problems[:4]))
        weights.append([p.detach().clone() for p in tr.actor.parameters()])
    # forward with and without grad, actor and critic: a few graphs, not one a layer
    assert 0 < counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    for k in ("policy_loss", "value_loss", "entropy", "grad_norm", "critic_grad_norm"):
        assert rows[1][k] == pytest.approx(rows[0][k], rel=1e-4, abs=1e-6), k
    for a, b in zip(*weights, strict=True):  # AdamW moves each weight by about lr = 1e-3
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # whatever its gradient's size
    graphs = counters["stats"]["unique_graphs"]
    tr.step(problems[4:])
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_new_stage_after_loading_state_starts_at_the_stage_learning_rate(tiny, dataset):
    probs = read_group(dataset, 0, "train", 4)
    tr = _trainer(tiny, lr_scheduler="linear")
    tr.new_stage(2, reset_optimizer=False)
    tr.step(probs)
    tr.step(probs)  # the linear schedule is at 0 now
    state = tr.state_dict()
    fresh = _trainer(tiny, lr_scheduler="linear")
    fresh.new_stage(2, reset_optimizer=False, state=state)
    assert fresh.actor_opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert fresh.actor_opt.state  # the moments came along
    resumed = _trainer(tiny, lr_scheduler="linear")
    resumed.new_stage(4, reset_optimizer=False, state=state, resume_schedulers=True)
    assert resumed.actor_opt.param_groups[0]["lr"] == pytest.approx(
        resumed.actor_sched.get_last_lr()[0]
    )


def test_the_critic_warms_up_alone_at_each_stage_and_a_resumed_stage_counts_on(tiny, dataset):
    """``critic_warmup: 2``: the first two steps of each stage move the critic and not
    the actor (no policy loss logged, the actor's rate logged 0, its schedule still),
    the third moves both; a stage resumed after one step has one warm-up step left."""
    probs = read_group(dataset, 0, "train", 4)

    def moved(model, before):
        return any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))

    def snapshot(model):
        return [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(0)
    tr = _trainer(tiny, critic_warmup=2, lr_scheduler="linear")
    tr.new_stage(4, reset_optimizer=False)
    for step in range(1, 4):
        actor, critic = snapshot(tr.actor), snapshot(tr.critic)
        row = tr.step(probs)
        assert moved(tr.critic, critic), step
        assert moved(tr.actor, actor) == (step == 3), step
        assert ("policy_loss" in row) == (step == 3) and ("entropy" in row) == (step == 3)
        assert "value_loss" in row and "vf_clipfrac" in row
        assert row["lr_actor"] == (1e-3 if step == 3 else 0.0)  # the linear schedule's start
    tr.new_stage(4, reset_optimizer=False)  # a new group: the critic warms up again
    actor = snapshot(tr.actor)
    assert "policy_loss" not in tr.step(probs)
    assert not moved(tr.actor, actor)
    state = tr.state_dict()  # one warm-up step of this stage done

    resumed = _trainer(tiny, critic_warmup=2, lr_scheduler="linear")
    resumed.new_stage(4, reset_optimizer=False, state=state, resume_schedulers=True)
    assert "policy_loss" not in resumed.step(probs)
    row = resumed.step(probs)
    assert "policy_loss" in row and row["lr_actor"] == pytest.approx(1e-3)


def _linear_3_4() -> torch.nn.Linear:
    """Weight [[3, 0], [0, 4]] (norm 5), bias [1, 0]: changes one can work out by hand."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    return model


def test_per_tensor_weight_change_by_hand():
    model = _linear_3_4()
    tracker = WeightTracker(model)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    change = tracker.per_tensor()
    assert change == pytest.approx({"weight": 1 / 5, "bias": 0.0})


def test_a_tensor_that_starts_at_zero_reports_its_absolute_change_not_a_huge_ratio():
    """A fresh Qwen2's attention biases start at zero: ||W - W_0|| / ||W_0|| read 3.7e10
    in weights.jsonl; such a tensor gets its absolute change, under its own key."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        model.bias.zero_()
    tracker = WeightTracker(model)
    with torch.no_grad():
        model.bias.add_(torch.tensor([3e-3, 4e-3]))
        model.weight.add_(torch.tensor([[0.0, 0.5], [0.0, 0.0]]))
    assert tracker.per_tensor() == pytest.approx({"weight": 0.1, "bias (absolute)": 5e-3})


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 26])
def test_weight_change_norms_by_hand_whatever_the_chunking(chunk):
    # weight [[3, 0], [0, 4]] moved by 1 and bias [1, 0] by 2: run change sqrt(5) / sqrt(26)
    model = _linear_3_4()
    tracker = WeightTracker(model)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        model.bias.add_(torch.tensor([0.0, 2.0]))
    assert distance(tracker.params, tracker.theta_0, chunk).item() == pytest.approx(5**0.5)
    got = tracker.measure(grad_norm=2.0)
    assert got["weight_change_run"] == pytest.approx((5 / 26) ** 0.5)
    assert got["weight_change_stage"] == pytest.approx((5 / 26) ** 0.5)
    assert got["param_norm"] == pytest.approx(31**0.5)  # 9 + 1 + 16 (weight) + 1 + 4 (bias)
    assert got["normalized_grad"] == pytest.approx(2 / 31**0.5)
    with pytest.raises(ValueError, match="2 tensors against 1"):
        distance(tracker.params, tracker.theta_0[:1])


# -- two gloo workers against one -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, x: torch.Tensor, m: torch.Tensor, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    share = slice(rank * 2, rank * 2 + 2)
    white = masked_whiten(x[share], m[share])
    metrics = reduce_metrics(
        {"response_length_max": float(rank * 10), "tokens_per_s": 5.0, "loss": float(rank)},
        {"response_length_max": "max", "tokens_per_s": "sum"},
    )
    torch.save({"white": white, "metrics": metrics}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_workers_whiten_and_reduce_as_one(tmp_path):
    torch.manual_seed(0)
    x, m = torch.randn(4, 6), (torch.rand(4, 6) > 0.3).float()
    single = masked_whiten(x, m)
    out = str(tmp_path / "r")
    mp.spawn(_worker, args=(2, _free_port(), x, m, out), nprocs=2, join=True)
    parts = [torch.load(f"{out}.{r}") for r in range(2)]
    assert torch.allclose(torch.cat([p["white"] for p in parts]), single, atol=1e-6)
    for p in parts:
        assert p["metrics"] == {"response_length_max": 10.0, "tokens_per_s": 10.0, "loss": 0.5}
    assert not torch.allclose(masked_whiten(x[:2], m[:2]), single[:2])  # per worker: wrong


def test_each_row_carries_the_weight_change_of_its_own_step_though_written_a_step_later(tmp_path):
    from types import SimpleNamespace

    from clab.runs.runner import StepSink
    from clab.tracking.metrics_log import MetricsLog, read_rows

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    tracker = WeightTracker(model)
    logs = {n: MetricsLog(tmp_path / f"{n}.jsonl") for n in ("train", "val", "weights")}
    wandb = SimpleNamespace(log=lambda row, step: None)
    sink = StepSink(SimpleNamespace(round=0, task=0, index=1), 10, tracker, logs, wandb)
    with torch.no_grad():
        model.weight.fill_(3.0)  # step 1: changed by 1 / 2
    sink({"step_in_stage": 1, "loss": 1.0})
    with torch.no_grad():
        model.weight.fill_(4.0)  # step 2: by 2 / 2
    sink({"step_in_stage": 2, "loss": 0.5})
    assert [r["global_step"] for r in read_rows(tmp_path / "train.jsonl")] == [11]
    sink.flush()
    rows = read_rows(tmp_path / "train.jsonl")
    assert [r["global_step"] for r in rows] == [11, 12]
    assert [r["weight_change_run"] for r in rows] == pytest.approx([0.5, 1.0])
    assert [r["param_norm"] for r in rows] == pytest.approx([3.0, 4.0])


def test_a_step_reports_each_named_phase_and_they_add_up_to_the_step(tiny, dataset):
    """veRL's phases as metrics: where a step's time went, named as a reader expects."""
    tr = _trainer(tiny)
    row = tr.step(read_group(dataset, 0, "train", 4))
    phases = [f"time/{p}" for p in ("gen", "reward", "old_log_prob", "adv", "update")]
    assert all(row[p] > 0 for p in phases)
    assert row["generation_time"] == row["time/gen"]
    assert sum(row[p] for p in phases) <= row["step_time"] <= 1.5 * sum(row[p] for p in phases)


def test_an_emulated_worker_reports_its_own_metrics_not_a_mean_divided_by_the_world():
    # the emulated group's all-reduce is a no-op: a mean would come out as 1/8 of the
    # rank's value (clab plan --measure once reported 1,024-token responses as 128)
    from clab.distributed.emulate import fake_process_group

    metrics = {"response_length_mean": 1024.0, "tokens_per_s": 10.0, "response_length_max": 1024.0}
    with fake_process_group(8):
        got = reduce_metrics(metrics, {"tokens_per_s": "sum", "response_length_max": "max"})
    assert got == metrics


def test_without_a_kl_penalty_scoring_runs_no_reference_pass_and_the_kl_is_zero(tiny, dataset):
    """kl_coef 0 loads no reference (countdown_rl): its pass would repeat the actor's,
    so scoring runs the actor once per chunk, and the KL logged is exactly 0."""
    cfg = dict(actor_lr=1e-3, critic_lr=1e-3, mini_batch_size=4, micro_batch_size=2)
    tr = PPOTrainer(
        load_policy(tiny),
        load_critic(tiny, seed=0),
        None,
        load_tokenizer(tiny),
        PPOConfig(**cfg, kl_coef=0.0, max_response_length=6, max_prompt_length=160),
        _score,
    )
    probs = read_group(dataset, 0, "train", 4)
    ro = tr._rollout([p.prompt for p in probs])
    calls = []
    tr.actor.register_forward_hook(lambda *_: calls.append(1))
    old, ref, _ = tr._score_old(ro)
    assert len(calls) == 2  # two chunks of two rows, the actor's pass alone
    assert torch.equal(old, ref)
    assert tr.step(probs)["kl"] == 0.0


def test_a_value_sees_the_response_up_to_its_token_and_not_the_token_itself(tiny, dataset):
    """The value at response position j is the critic's estimate before token j is
    chosen (veRL's dp_critic reads position P-1+j): changing token k moves the
    values from k+1 on, none before. One position off, and the critic would see the
    action it is meant to value."""
    tr = _trainer(tiny)
    ro = tr._rollout([p.prompt for p in read_group(dataset, 0, "test", 2)])
    ro.response_mask[:] = 1  # every position real, whatever the sampled EOS
    idx, k = torch.arange(2), 2
    with torch.no_grad():
        before = tr._values(tr.critic, ro, idx)
        ro.response_ids[:, k] = (ro.response_ids[:, k] + 1) % 300
        after = tr._values(tr.critic, ro, idx)
    assert torch.allclose(before[:, : k + 1], after[:, : k + 1], atol=1e-6)
    assert (before[:, k + 1] - after[:, k + 1]).abs().min() > 1e-5


def test_a_mini_batch_gives_the_same_losses_and_norms_whatever_its_micro_batches(tiny, dataset):
    """The policy, value and entropy terms each take the mini-batch's token count
    (veRL's token-mean), so a mini-batch of rows of unequal length gives the same
    losses and gradient norms in one micro-batch as in four; a mean of per-micro-batch
    means would weight the one-token row's tokens four times as much."""
    probs = read_group(dataset, 0, "train", 4)
    ro = _trainer(tiny)._rollout([p.prompt for p in probs])
    ro.response_mask[:] = 1
    for row, length in ((1, 4), (2, 2), (3, 1)):
        ro.response_mask[row, length:] = 0
    mask = ro.response_mask.float()
    gen = torch.Generator().manual_seed(2)
    adv, ret = torch.randn(mask.shape, generator=gen), torch.randn(mask.shape, generator=gen)
    rows = []
    for micro in (4, 1):
        tr = _trainer(tiny, micro_batch_size=micro, entropy_coef=1.0)
        old_lp, _, old_v = tr._score_old(ro)
        old_lp = old_lp - 0.1 * adv  # ratios away from 1, some clipped
        row, _ = tr._mini_batch(ro, mask, torch.arange(4), old_lp, adv * mask, old_v, ret * mask)
        rows.append(row)
    for key in ("pg_loss", "vf_loss", "entropy", "grad_norm", "critic_grad_norm"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-4), key


def test_ppo_decays_weight_matrices_and_never_norms_or_biases(tiny):
    """With zero gradients an AdamW step is the decay alone: every matrix shrinks by
    lr * weight_decay, every norm weight and bias stays (as HF's Trainer groups them;
    decayed norms would pull their gains towards zero)."""
    tr = _trainer(tiny, actor_lr=0.1, weight_decay=0.5)
    with torch.no_grad():
        for p in tr.actor.parameters():
            p.add_(0.5)  # biases start at zero, where decay would change nothing
    before = {n: p.detach().clone() for n, p in tr.actor.named_parameters()}
    for p in tr.actor.parameters():
        p.grad = torch.zeros_like(p)
    tr.actor_opt.step()
    kept = decayed = 0
    for n, p in tr.actor.named_parameters():
        if p.ndim < 2 or "norm" in n:
            assert torch.equal(p, before[n]), n
            kept += 1
        else:
            assert torch.allclose(p, before[n] * (1 - 0.1 * 0.5)), n
            decayed += 1
    assert kept and decayed


def test_a_non_finite_loss_stops_the_step_before_any_weight_moves(tiny, dataset):
    def nan_score(texts, problems):
        return [RewardResult(float("nan"), False, Reason.WRONG_VALUE) for _ in texts]

    tr = _trainer(tiny)
    tr.score_fn = nan_score
    before = [p.detach().clone() for p in (*tr.actor.parameters(), *tr.critic.parameters())]
    with pytest.raises(NonFiniteLoss, match="policy loss nan"):
        tr.step(read_group(dataset, 0, "train", 4))
    after = (*tr.actor.parameters(), *tr.critic.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_the_15b_service_compiles_its_layers_and_head_and_the_demo_does_not():
    """The service's measured path (layers and the fused head's chunk math compiled,
    docs/benchmarks.md) reaches the trainer's config; the CPU demo, which starts from
    the same spec, keeps the eager path its figures were made on."""
    from clab.demo import SERVICE_OVERRIDES

    path = Path(__file__).resolve().parents[1] / "services/curriculum-trainer-1.5b.yaml"
    cfg = PPOConfig.from_spec(load_spec(path), 8, "bfloat16", True)
    assert cfg.fused_logprobs and cfg.compile_layers and cfg.compile_head
    demo = load_spec(path, SERVICE_OVERRIDES["curriculum-trainer-1.5b"])
    cfg = PPOConfig.from_spec(demo, 1, None, False)
    assert not cfg.compile_layers and not cfg.fused_logprobs  # the head is not compiled


def test_the_services_dual_clip_reaches_the_actors_update(tiny, dataset):
    """Every token seven times likelier than when sampled, every advantage negative:
    under the services' dual clip (3) each token's loss is capped and the actor gets
    no gradient; under the single clip it does."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "services/curriculum-trainer-1.5b.yaml")
    assert PPOConfig.from_spec(spec, 1, None, False).clip_ratio_c == 3.0
    probs = read_group(dataset, 0, "train", 4)
    ro = _trainer(tiny)._rollout([p.prompt for p in probs])
    mask = ro.response_mask.float()
    norms = []
    for c in (3.0, None):
        tr = _trainer(tiny, clip_ratio_c=c, entropy_coef=0.0)
        lp, _ = tr._logprobs(tr.actor, ro, torch.arange(4))
        old_lp = lp.detach() - 2.0
        adv, zero = -torch.ones_like(mask) * mask, torch.zeros_like(mask)
        row, _ = tr._mini_batch(ro, mask, torch.arange(4), old_lp, adv, zero, zero)
        norms.append(row["grad_norm"])
    assert norms[0] == 0.0 and norms[1] > 0.0
