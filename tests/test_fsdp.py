"""PPO under FSDP2 on 2 CPU workers (gloo): the same updates as one process, the
rollout copy equal to the gathered weights, checkpoints in the usual HF folder
format, resume, and the same run as DDP step by step.

Each test spawns its two workers once (starting Python and importing torch and
transformers is most of the time) and does all its runs inside them.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard

from clab.data.countdown.reading import read_group
from clab.models.loading import load_critic, load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model
from clab.rewards.countdown import Reason, RewardResult
from clab.training.ppo import PPOConfig, PPOTrainer
from rl_spec import TINY

TINY_ROLLOUT = TINY["rollout"]

COMPARED = ("policy_loss", "value_loss", "entropy", "grad_norm", "critic_grad_norm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    """``fn(rank, world, *args)`` on 2 gloo workers; a worker's error fails the test.
    Forked, not spawned: the workers inherit the imported torch and transformers
    (seconds each on a small machine); each uses one thread, as DataLoader's forked
    workers do, so OpenMP's state from the parent is never entered."""
    mp.start_processes(
        _entry, args=(fn, _free_port(), args), nprocs=2, join=True, start_method="fork"
    )


def _entry(rank: int, fn, port: int, args) -> None:
    # what torchrun and Ray Train set (transformers' Trainer reads them)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
    )
    torch.set_num_threads(1)  # two workers on a small machine
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        fn(rank, 2, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def _score(texts, problems):
    # a reward that varies with the text, so that advantages and gradients are not zero
    return [RewardResult(len(t) % 3 / 2, False, Reason.WRONG_VALUE) for t in texts]


def _trainer(
    model_dir: Path, strategy: str, fused: bool = False, checkpointing: bool = False, **compiled
) -> PPOTrainer:
    """``compiled``: PPOConfig's compile_head and compile_layers."""
    cfg = PPOConfig(
        actor_lr=1e-3,
        critic_lr=1e-3,
        mini_batch_size=4 if strategy == "single" else 2,
        micro_batch_size=2,
        max_response_length=6,
        max_prompt_length=160,
        strategy="fsdp" if strategy == "fsdp" else "ddp",
        fused_logprobs=fused,
        **compiled,
    )
    actor, critic = load_policy(model_dir), load_critic(model_dir, seed=0)
    if checkpointing:  # as the runner turns it on, before the trainer compiles and shards
        actor.gradient_checkpointing_enable()
        critic.gradient_checkpointing_enable()
    return PPOTrainer(actor, critic, load_policy(model_dir), load_tokenizer(model_dir), cfg, _score)


def _fixed_rollout(trainer: PPOTrainer, rollout, rows: slice) -> None:
    """Every step trains on ``rollout[rows]``: the same samples for one process and
    for two workers, whose sampling streams differ."""

    def take(prompts):
        r = type(rollout)(
            rollout.prompt_ids[rows],
            rollout.prompt_mask[rows],
            rollout.response_ids[rows],
            rollout.response_mask[rows],
            rollout.texts[rows],
        )
        return r

    trainer._rollout = take


def _fsdp_worker(rank: int, world: int, model_dir: Path, out: Path) -> None:
    from torch.distributed.tensor import DTensor

    from clab.distributed.fsdp import full_model_state, local_shard, shard_model

    rollout = torch.load(out / "rollout.pt", weights_only=False)
    torch.manual_seed(1)
    tr = _trainer(model_dir, "fsdp")
    assert all(isinstance(p, DTensor) for p in tr.actor.parameters())
    assert all(p.dtype == torch.float32 for p in tr.actor.parameters())
    _fixed_rollout(tr, rollout, slice(rank * 2, rank * 2 + 2))
    problems = read_group(model_dir.parent / "data", 0, "train", 4)[rank * 2 : rank * 2 + 2]
    rows = [tr.step(problems) for _ in range(3)]
    # the rollout copy, gathered before the next rollout, holds the actor's weights
    tr.sync_rollout()
    copy = dict(tr.rollout_model.named_parameters())
    for name, p in tr.actor.named_parameters():
        assert torch.equal(copy[name], p.full_tensor()), name
    actor = full_model_state(tr.actor)
    # the static engine generates from that very copy (no second one) and samples the
    # tokens the dynamic engine samples from the same seed
    from clab.generation import rollout as engines

    prompts = [p.prompt for p in problems]
    tr.cfg.rollout_engine = "hf-static"
    torch.manual_seed(5)
    static = PPOTrainer._rollout(tr, prompts)
    (gen,) = engines._STATIC.values()
    assert gen.model is tr.rollout_model
    tr.cfg.rollout_engine = "hf"
    torch.manual_seed(5)
    assert PPOTrainer._rollout(tr, prompts).texts == static.texts
    # the runner's reference weights: each worker's cut of a full tensor is its shard,
    # also where rows do not divide (5 rows over 2 workers: 3 and 2)
    odd = shard_model(torch.nn.Sequential(torch.nn.Linear(3, 5)))
    for p in odd.parameters():
        assert torch.equal(local_shard(p, p.full_tensor()), p.to_local())
    assert odd[0].weight.to_local().shape[0] == (3 if rank == 0 else 2)
    if rank == 0:
        torch.save({"rows": rows, "actor": actor}, out / "fsdp.pt")


def _own_shards_worker(rank: int, world: int) -> None:
    from clab.distributed.fsdp import data_parallel_mesh, local_shard

    torch.manual_seed(0)
    full = torch.nn.Linear(6, 4)
    model = fully_shard(copy.deepcopy(full), mesh=data_parallel_mesh())
    for p, f in zip(model.parameters(), full.parameters(), strict=True):
        assert p.device_mesh.get_coordinate() == (rank,), p.device_mesh
        assert torch.equal(local_shard(p, f.detach()), p.to_local())


def test_workers_forked_after_an_emulated_measurement_read_their_own_shards():
    """``clab plan --measure`` emulates rank 0 of N on a fake process group; DTensor's
    caches kept specs made on its mesh, and workers forked later from the same
    process (these tests' FSDP workers, after test_schedule's) got that mesh back:
    rank 1 took rank 0's shard of every checkpoint tensor it read."""
    from clab.distributed.emulate import fake_process_group
    from clab.distributed.fsdp import data_parallel_mesh

    with fake_process_group(2), torch.no_grad():
        fully_shard(torch.nn.Linear(6, 4), mesh=data_parallel_mesh())(torch.ones(1, 6))
    _spawn(_own_shards_worker)


def test_the_rollout_copy_is_the_model_without_its_training_hooks(tmp_path, dataset):
    """What rollouts generate from under FSDP: the same function as the model, in
    its own storage and dtype, without the input-embedding hook that
    ``gradient_checkpointing_enable`` adds (a ``requires_grad_`` call that the
    static engine's compiled forward cannot trace: it stopped the 1.5B benchmark
    on a GPU)."""
    from clab.distributed.fsdp import unsharded_copy

    build_tiny_model(tmp_path, ["a b c d"] * 8, vocab_size=300, hidden_size=32)
    model = load_policy(tmp_path)
    model.gradient_checkpointing_enable()
    assert model.get_input_embeddings()._forward_hooks  # what a deep copy would carry
    copy = unsharded_copy(model, torch.float64, torch.device("cpu"))
    assert not copy.get_input_embeddings()._forward_hooks
    assert model.get_input_embeddings()._forward_hooks  # the training model keeps its own
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in copy.parameters())
    assert copy.generation_config.eos_token_id == model.generation_config.eos_token_id
    assert not copy.training and not any(m.training for m in copy.modules())
    ids = torch.tensor([[5, 9, 11, 3]])
    model.eval()
    with torch.no_grad():
        want = model(ids).logits.double()
        got = copy(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.allclose(copy(ids).logits, model(ids).logits.double(), atol=1e-3)


def test_two_fsdp_workers_make_the_updates_of_one_process(tmp_path, dataset):
    """3 PPO steps on the same 4 sampled sequences: one process (mini-batch 4 in two
    micro-batches) and two FSDP workers (2 sequences each): losses, gradient norms
    and weights agree to float rounding (the sums are added in another order)."""
    model_dir = tmp_path / "m"
    (tmp_path / "data").symlink_to(dataset)
    probs = read_group(dataset, 0, "train", 4)
    build_tiny_model(model_dir, [p.prompt for p in probs], vocab_size=300, hidden_size=32)
    torch.manual_seed(0)
    single = _trainer(model_dir, "single")
    rollout = single._rollout([p.prompt for p in probs])
    assert rollout.response_mask.sum() > 8
    torch.save(rollout, tmp_path / "rollout.pt")
    _fixed_rollout(single, rollout, slice(0, 4))
    expected = [single.step(probs) for _ in range(3)]

    _spawn(_fsdp_worker, model_dir, tmp_path)
    got = torch.load(tmp_path / "fsdp.pt", weights_only=False)
    for want, row in zip(expected, got["rows"], strict=True):
        for key in COMPARED:
            assert row[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    for name, p in single.actor.state_dict().items():
        assert torch.allclose(got["actor"][name], p, rtol=1e-4, atol=1e-6), name
    moved = max(
        (got["actor"][n] - p).abs().max().item()
        for n, p in load_policy(model_dir).state_dict().items()
    )
    assert moved > 1e-4  # the weights did move: the comparison is not trivial


# the fused head's paths under FSDP: eager; its chunk math compiled; and as the 1.5B
# services run, the head and every decoder layer compiled under activation checkpointing
FUSED_PATHS = {
    "eager": {},
    "compiled-head": {"compile_head": True},
    "services": {"compile_head": True, "compile_layers": True, "checkpointing": True},
}


def _fused_fsdp_worker(rank: int, world: int, model_dir: Path, out: Path, path: str) -> None:
    from clab.distributed.fsdp import full_model_state

    rollout = torch.load(out / "rollout.pt", weights_only=False)
    torch.manual_seed(1)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    tr = _trainer(model_dir, "fsdp", fused=True, **FUSED_PATHS[path])
    _fixed_rollout(tr, rollout, slice(rank * 2, rank * 2 + 2))
    problems = read_group(model_dir.parent / "data", 0, "train", 4)[rank * 2 : rank * 2 + 2]
    rows = [tr.step(problems) for _ in range(3)]
    actor = full_model_state(tr.actor)
    if rank == 0:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        torch.save({"rows": rows, "actor": actor, "graphs": graphs}, out / f"fsdp-fused-{path}.pt")


@pytest.mark.parametrize("path", list(FUSED_PATHS))
def test_two_fsdp_workers_with_the_fused_head_make_the_updates_of_one_process(
    tmp_path, dataset, path
):
    """ppo.fused_logprobs under FSDP, where the head's weight (tied to the embedding
    here) exists only gathered inside the model's forward: 3 steps on two workers
    make the losses, norms and weights of one process on the fused path, and the
    losses and norms of one process on the plain path (its weights differ in rounding
    that AdamW magnifies on near-zero gradients, as between one process's two paths).
    With the head's chunk math compiled (``ppo.compile_head``), and with the layers
    compiled too under activation checkpointing (the 1.5B services' path), the same
    losses and norms within the compiled arithmetic's rounding."""
    model_dir = tmp_path / "m"
    (tmp_path / "data").symlink_to(dataset)
    probs = read_group(dataset, 0, "train", 4)
    build_tiny_model(model_dir, [p.prompt for p in probs], vocab_size=300, hidden_size=32)
    assert load_policy(model_dir).config.tie_word_embeddings
    expected = {}
    for fused in (False, True):
        torch.manual_seed(0)
        single = _trainer(model_dir, "single", fused=fused)
        if not fused:
            rollout = single._rollout([p.prompt for p in probs])
            torch.save(rollout, tmp_path / "rollout.pt")
        _fixed_rollout(single, rollout, slice(0, 4))
        expected[fused] = [single.step(probs) for _ in range(3)]
    _spawn(_fused_fsdp_worker, model_dir, tmp_path, path)
    got = torch.load(tmp_path / f"fsdp-fused-{path}.pt", weights_only=False)
    assert (got["graphs"] > 0) == (path != "eager")  # what should run compiled did
    for fused in (True, False):
        for want, row in zip(expected[fused], got["rows"], strict=True):
            for key in COMPARED:
                assert row[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    if path != "eager":
        return
    for name, p in single.actor.state_dict().items():
        assert torch.allclose(got["actor"][name], p, rtol=1e-4, atol=1e-6), name


# -- through the stage runner ---------------------------------------------------------------


class Crash(Exception):
    pass


def _run(name: str, rank: int, world: int, **changes) -> None:
    from clab.runs.runner import worker_main

    spec = {
        **TINY,
        "name": name,
        "data": {**TINY["data"], "groups": [0, 1]},
        "batch": {"train": 4, "val": 4, "mini": 4, "micro": 2},
        "resources": {"num_workers": world, "strategy": "fsdp"},
        **changes,
    }
    worker_main({"kind": "countdown-rl", "spec": spec, "cwd": os.getcwd()}, rank, world)


def _runner_worker(rank: int, world: int) -> None:
    _run("ddp", rank, world, resources={"num_workers": world, "strategy": "ddp"})
    _run("fsdp", rank, world)
    original, calls = PPOTrainer.step, {"n": 0}

    def dies_after_4(self, problems):
        calls["n"] += 1
        if calls["n"] > 4:  # stage r0-g1, after its first step (and its checkpoint)
            raise Crash
        return original(self, problems)

    PPOTrainer.step = dies_after_4
    try:
        _run("broken", rank, world)
        raise AssertionError("the run did not crash")
    except Crash:
        pass
    finally:
        PPOTrainer.step = original
    dist.barrier()
    _run("broken", rank, world)  # the same command again: resumes


def test_fsdp_through_the_runner_checkpoints_resumes_and_equals_ddp(run_dir):
    """Two FSDP workers through the stage runner (2 stages x 3 steps, a checkpoint
    every step): stage checkpoints are the HF folders DDP writes, with the same
    weights; a run killed mid-stage and rerun equals the uninterrupted one; and
    every step equals DDP's (same seeds, same shares of the batch)."""
    from clab.storage.layout import complete_stages
    from clab.tracking.metrics_log import read_rows

    _spawn(_runner_worker)
    ddp, fsdp, broken = (read_rows(f"metrics/{n}/train.jsonl") for n in ("ddp", "fsdp", "broken"))
    assert [r["global_step"] for r in broken] == [1, 2, 3, 4, 5, 6]
    keys = ("reward_mean", "weight_change_run", "weight_change_stage", *COMPARED)
    for a, b, c in zip(fsdp, broken, ddp, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["global_step"], key)
            assert a[key] == pytest.approx(c[key], rel=1e-4, abs=1e-6), (a["global_step"], key)
    assert fsdp[-1]["weight_change_run"] > 1e-3

    stages = [d.name for _, d in complete_stages("checkpoints/fsdp")]
    assert stages == ["initial", "r0-g0", "r0-g1"]
    ours, theirs = Path("checkpoints/fsdp/r0-g1"), Path("checkpoints/ddp/r0-g1")
    files = sorted(str(p.relative_to(ours)) for p in ours.rglob("*"))
    assert files == sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*"))
    for load in (load_policy, load_critic):
        sub = "critic" if load is load_critic else ""
        a, b = load(ours / sub).state_dict(), load(theirs / sub).state_dict()
        for name, t in a.items():
            assert torch.allclose(t, b[name], rtol=1e-4, atol=1e-6), name
    state = torch.load(ours / "trainer_state.pt", weights_only=False)
    exp_avg = state["actor_opt"]["state"]["model.embed_tokens.weight"]["exp_avg"]
    assert exp_avg.shape == a["model.embed_tokens.weight"].shape  # full, not a shard


# -- several workers, one warm-up ---------------------------------------------------------

WARM = {
    "warmup": {"steps": 6, "lr": 5e-3, "batch_size": 8},
    "data": {**TINY["data"], "groups": [0]},
    "max_steps_per_stage": 1,
}


def _warmup_worker(rank: int, world: int) -> None:
    _run("warm-2", rank, world, **WARM, resources={"num_workers": world, "strategy": "ddp"})


def test_a_warm_up_with_several_workers_runs_apart_and_equals_one_workers(run_dir):
    """Rank 0 builds the model before RL alone, while the others wait; its supervised
    warm-up (transformers' Trainer) runs in a process of its own, since inside the
    workers' process group it waited at collectives the others never entered (the
    run died in gloo). The warmed-up model equals a one-worker run's."""
    _spawn(_warmup_worker)
    _run("warm-1", 0, 1, **WARM, resources={"num_workers": 1, "strategy": "ddp"})
    from clab.tracking.metrics_log import read_rows

    history = json.loads(Path("logs/warm-2/warmup/log_history.json").read_text())
    losses = [r["loss"] for r in history if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0]  # it trained
    two = load_policy("checkpoints/warm-2/initial").state_dict()
    one = load_policy("checkpoints/warm-1/initial").state_dict()
    assert two.keys() == one.keys()
    for name, t in two.items():
        assert torch.allclose(t, one[name], rtol=1e-4, atol=1e-6), name
    assert len(read_rows("metrics/warm-2/train.jsonl")) == 1  # and the run went on to RL


# -- GRPO: TRL's trainer on a policy clab sharded ---------------------------------------------


GRPO = {
    "algorithm": "grpo",
    "rollout": {**TINY_ROLLOUT, "responses_per_prompt": 2, "engine": "hf-static"},
}


def _oversample_worker(rank: int, world: int, out: str) -> None:
    from clab.training import countdown_rl

    drawn: list[list[str]] = []
    original = countdown_rl.CountdownReward.__call__

    def spy(self, prompts, completions, **kwargs):
        drawn.append(list(prompts))  # this worker's share of the step's drawn prompts
        return original(self, prompts, completions, **kwargs)

    countdown_rl.CountdownReward.__call__ = spy
    ddp = {"num_workers": world, "strategy": "ddp"}
    _run("ov", rank, world, **GRPO, grpo={"oversample": 3}, resources=ddp)
    Path(out, f"drawn-{rank}.json").write_text(json.dumps(drawn))


def test_grpo_oversample_on_two_workers_draws_no_prompt_twice_in_a_step(run_dir):
    """grpo.oversample 3 on 2 DDP workers (2 prompts x 2 responses each a step): each
    worker scores its 2 prompts and 4 others, and no prompt is drawn twice in a step
    over both workers (the extra ones are drawn once for all, avoiding every
    worker's batch); the run logs flat_groups_kept."""
    from clab.tracking.metrics_log import read_rows

    _spawn(_oversample_worker, str(run_dir))
    ranks = [json.loads((run_dir / f"drawn-{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 2 stages x 3 steps
    for a, b in zip(*ranks, strict=True):
        assert len(a) == len(b) == 3 * 2 * 2 and a[1::2] == a[::2] and b[1::2] == b[::2]
        assert len(set(a[::2]) | set(b[::2])) == 12
    rows = read_rows("metrics/ov/train.jsonl")
    assert len(rows) == 6 and all("flat_groups_kept" in r for r in rows)


def _grpo_worker(rank: int, world: int) -> None:
    from accelerate.state import GradientState
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from trl import GRPOTrainer

    from clab.distributed.fsdp import keep_accelerate_fsdp_on_cpu
    from clab.training import countdown_rl

    keep_accelerate_fsdp_on_cpu()  # as on GPUs: see its docstring
    # rewards that differ within a group, so that advantages and updates are not zero
    countdown_rl.CountdownReward.score = lambda self, completions, *a: _score(completions, a)
    _run("grpo-ddp", rank, world, **GRPO, resources={"num_workers": world, "strategy": "ddp"})
    shards = []
    original_load = countdown_rl.GRPOStageTrainer.load

    def load(self, model_dir, initial):
        original_load(self, model_dir, initial)
        shards.append(all(isinstance(p, DTensor) for p in self.policy.parameters()))

    original_train = countdown_rl.GRPOStageTrainer.train_stage
    references, unsynced = [], []

    def train_stage(self, ctx):
        original_train(self, ctx)
        ref = self.trainer.ref_model  # TRL's, for the KL term: sharded layer by layer too
        references.append([isinstance(m, FSDPModule) for m in (ref, *ref.model.layers)])

    def set_sync(self, requires_gradient_sync, **kwargs):
        if not requires_gradient_sync:  # micro-batches whose gradients stay unsharded
            unsynced.append(type(self).__name__)
        return original_sync(self, requires_gradient_sync, **kwargs)

    original_sync = FSDPModule.set_requires_gradient_sync
    countdown_rl.GRPOStageTrainer.load = load
    countdown_rl.GRPOStageTrainer.train_stage = train_stage
    FSDPModule.set_requires_gradient_sync = set_sync
    _run("grpo-fsdp", rank, world, **GRPO)
    countdown_rl.GRPOStageTrainer.train_stage = original_train
    FSDPModule.set_requires_gradient_sync = original_sync
    assert shards == [True]  # sharded before TRL saw it, and TRL left it so
    assert references == [[True] * 3] * 2
    assert unsynced == []  # every micro-batch's gradients reduce-scattered as they come
    # killed twice: in the first step of stage r0-g1 (rerun from r0-g0's folder and its
    # optimizer state), then after that stage's first checkpoint (rerun from HF's)
    original, calls = GRPOTrainer.training_step, {"n": 0}
    for dies_at in (7, 9):  # micro-steps: 2 a step, 3 steps a stage

        def dies(self, *args, _at=dies_at, **kwargs):
            calls["n"] += 1
            if calls["n"] == _at:
                raise Crash
            return original(self, *args, **kwargs)

        GRPOTrainer.training_step = dies
        try:
            _run("grpo-broken", rank, world, **GRPO)
            raise AssertionError("the run did not crash")
        except Crash:  # what a new process starts with: accelerate's gradient state
            GradientState._reset_state()  # left mid-accumulation by the crash
        finally:
            GRPOTrainer.training_step = original
        dist.barrier()
        calls["n"] = 6  # the rerun starts in stage r0-g1
    _run("grpo-broken", rank, world, **GRPO)
    countdown_rl.GRPOStageTrainer.load = original_load
    # the dynamic engine under FSDP generates from the gathered copy too
    _run("grpo-fsdp-hf", rank, world, **{**GRPO, "rollout": {**GRPO["rollout"], "engine": "hf"}})


def test_grpo_under_fsdp_checkpoints_resumes_and_equals_ddp(run_dir):
    """GRPO through TRL on a policy sharded by FSDP2 over two workers (2 stages x 3
    steps, a checkpoint every step, the static engine generating from the gathered
    copy): every step equals DDP's; the stage checkpoints are DDP's HF folders with
    the same weights and a full optimizer state; a run killed at a stage's start and
    again mid-stage, each time rerun, equals the uninterrupted one."""
    from clab.storage.layout import complete_stages
    from clab.tracking.metrics_log import read_rows

    _spawn(_grpo_worker)
    ddp, fsdp, broken = (
        read_rows(f"metrics/grpo-{n}/train.jsonl") for n in ("ddp", "fsdp", "broken")
    )
    assert [r["global_step"] for r in fsdp] == [1, 2, 3, 4, 5, 6]
    assert [r["global_step"] for r in broken] == [1, 2, 3, 4, 5, 6]
    keys = ("reward_mean", "policy_loss", "grad_norm", "weight_change_run")
    for a, b, c in zip(fsdp, broken, ddp, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(c[key], rel=1e-4, abs=1e-6), (a["global_step"], key)
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["global_step"], key)
    assert fsdp[-1]["weight_change_run"] > 1e-3
    dynamic = read_rows("metrics/grpo-fsdp-hf/train.jsonl")
    assert len(dynamic) == 6 and dynamic[-1]["weight_change_run"] > 1e-3

    assert [d.name for _, d in complete_stages("checkpoints/grpo-fsdp")] == [
        "initial",
        "r0-g0",
        "r0-g1",
    ]
    for run in ("grpo-fsdp", "grpo-broken"):
        ours, theirs = Path(f"checkpoints/{run}/r0-g1"), Path("checkpoints/grpo-ddp/r0-g1")
        files = sorted(str(p.relative_to(ours)) for p in ours.rglob("*"))
        assert files == sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*"))
        a, b = load_policy(ours).state_dict(), load_policy(theirs).state_dict()
        for name, t in a.items():
            assert torch.allclose(t, b[name], rtol=1e-4, atol=1e-6), (run, name)
    state = torch.load(ours / "trainer_state.pt", weights_only=False)
    exp_avg = state["state"]["model.embed_tokens.weight"]["exp_avg"]
    assert exp_avg.shape == a["model.embed_tokens.weight"].shape  # full, not a shard


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_fsdp_is_taken_by_both_algorithms(workdir, algorithm):
    from clab.cli import main
    from rl_spec import write_spec

    spec = write_spec(
        workdir / "s.yaml",
        algorithm=algorithm,
        rollout={"responses_per_prompt": 2},
        resources={"num_workers": 2, "strategy": "fsdp"},
        batch={"train": 4, "val": 4, "mini": 4, "micro": 2},
    )
    assert main(["validate", str(spec)]) == 0


def test_grpo_under_fsdp_on_cpu_workers_is_refused_before_anything_is_written(run_dir, capsys):
    """accelerate runs CPU workers under DDP whatever the plugin, and DDP cannot wrap a
    sharded policy: the run stops with the reason, before Ray starts or a file is
    written."""
    from clab.cli import main
    from rl_spec import write_spec

    spec = write_spec(
        run_dir / "s.yaml",
        name="cpu-fsdp",
        algorithm="grpo",
        rollout={"responses_per_prompt": 2},
        resources={"num_workers": 2, "strategy": "fsdp"},
        batch={"train": 4, "val": 4, "mini": 4, "micro": 2},
    )
    assert main(["run", str(spec)]) == 2
    assert "fsdp with algorithm grpo needs resources.use_gpu: true" in capsys.readouterr().err
    assert not Path("checkpoints/cpu-fsdp").exists() and not Path("metrics/cpu-fsdp").exists()
