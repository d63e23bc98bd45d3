"""Actor-critic PPO for language models, in the style TinyZero runs it (veRL).

TRL 1.x no longer ships PPO, and a PPO step (rollout, reward, critic,
several optimiser steps over two models) does not fit transformers'
single-model ``Trainer`` loop, so this is a small trainer of its own. It
stands on transformers for the models, generation and schedulers, on TRL's
vLLM machinery for the optional vLLM rollouts, and on ``ppo_core`` for the
arithmetic. One :meth:`PPOTrainer.step` is one rollout batch: generate,
score, estimate advantages with GAE against the critic, then
``ppo_epochs`` passes of mini-batches (one optimizer step each) split into
micro-batches (gradient accumulation). Under ``torch.distributed`` each
rank handles its share of the prompts, and the actor and critic are either
replicated (``strategy="ddp"``) or sharded with FSDP2 (``"fsdp"``: fp32
master weights, gradients and AdamW state sharded over the workers, layers
gathered in the compute dtype; the reference is sharded too). Under FSDP the
rollouts come from a full copy of the policy (bf16 on GPU) that is gathered
once per step, in place (``clab.distributed.fsdp``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.utils import clip_grad_norm_
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from clab.data.countdown.reading import Problem
from clab.distributed.fsdp import (
    full_optimizer_state,
    gather_into,
    load_full_optimizer_state,
    mesh_device,
    scalar,
    shard_model,
    unsharded_copy,
)
from clab.distributed.reduce import reduce_metrics
from clab.generation.rollout import Rollout, hf_generate, position_ids
from clab.metrics.training import success_rate
from clab.models.precision import compute_autocast
from clab.rewards.countdown import RewardResult, answer_forms
from clab.tracking.timing import phase
from clab.training.countdown_rl_spec import BatchSpec, CountdownRLSpec, PPOSpec, RolloutSpec
from clab.training.fused_logprobs import fused_head
from clab.training.ppo_core import (
    agg_token_mean,
    gae,
    gather_logprobs,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

_PPO, _ROLLOUT, _BATCH = PPOSpec(), RolloutSpec(), BatchSpec()
_RUN = CountdownRLSpec.model_fields


@dataclass
class PPOConfig:
    """One worker's PPO settings. The defaults are the countdown-rl spec's, said there
    once (veRL's, TinyZero's); :meth:`from_spec` builds a run's from its spec, and
    benchmarks and tests set a few fields by hand."""

    actor_lr: float = _PPO.actor_lr
    critic_lr: float = _PPO.critic_lr
    kl_coef: float = _PPO.kl_coef
    entropy_coef: float = _PPO.entropy_coef
    clip_ratio: float = _PPO.clip_ratio
    clip_ratio_c: float | None = _PPO.clip_ratio_c
    value_clip: float = _PPO.value_clip
    gamma: float = _PPO.gamma
    lam: float = _PPO.lam
    ppo_epochs: int = _PPO.ppo_epochs
    max_grad_norm: float = _PPO.max_grad_norm
    weight_decay: float = _PPO.weight_decay
    fused_logprobs: bool = _PPO.fused_logprobs
    critic_warmup: int = _PPO.critic_warmup
    compile_layers: bool = _PPO.compile_layers
    compile_head: bool = _PPO.compile_head
    mini_batch_size: int = _BATCH.mini  # this worker's share of batch.mini
    micro_batch_size: int = _BATCH.micro
    score_micro_batch_size: int | None = _BATCH.score_micro  # None: micro_batch_size
    responses_per_prompt: int = _ROLLOUT.responses_per_prompt
    max_prompt_length: int = _ROLLOUT.max_prompt_length
    max_response_length: int = _ROLLOUT.max_response_length
    temperature: float = _ROLLOUT.temperature
    lr_scheduler: str = _RUN["lr_scheduler"].default
    lr_warmup_steps: int = _RUN["lr_warmup_steps"].default
    compute_dtype: str | None = None  # e.g. "bfloat16": autocast over fp32 weights (GPU)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # several workers: replicated or sharded
    rollout_dtype: str | None = None  # FSDP: the rollout copy's dtype (None: compute dtype)
    rollout_engine: str = _ROLLOUT.engine  # hf | hf-static (a vLLM engine is passed in instead)
    rollout_batch_size: int | None = _ROLLOUT.batch_size  # per generate call; None: all at once

    @classmethod
    def from_spec(
        cls, spec: CountdownRLSpec, world: int, compute_dtype: str | None, fsdp: bool
    ) -> PPOConfig:
        """One of ``world`` workers' settings (``clab plan --measure`` times steps built
        from the same)."""
        r, b = spec.rollout, spec.batch
        return cls(
            **spec.ppo.model_dump(),
            mini_batch_size=b.mini // world,
            micro_batch_size=b.micro,
            score_micro_batch_size=b.score_micro,
            responses_per_prompt=r.responses_per_prompt,
            max_prompt_length=r.max_prompt_length,
            max_response_length=r.max_response_length,
            temperature=r.temperature,
            lr_scheduler=spec.lr_scheduler,
            lr_warmup_steps=spec.lr_warmup_steps,
            compute_dtype=compute_dtype,
            strategy="fsdp" if fsdp else "ddp",
            rollout_engine=r.engine if r.engine != "vllm" else "hf",
            rollout_batch_size=r.batch_size,
        )


ScoreFn = Callable[[list[str], list[Problem]], list[RewardResult]]


class NonFiniteLoss(RuntimeError):
    """A loss or gradient norm that is not finite, found before any weight moved.
    veRL warns and skips such a step; here the stage stops (the runner keeps the last
    good checkpoint), since a NaN that recurs would skip silently step after step."""


class PPOTrainer:
    def __init__(
        self,
        actor: PreTrainedModel,
        critic: PreTrainedModel,
        ref: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        config: PPOConfig,
        score_fn: ScoreFn,
        rollout_engine=None,
        rollout_model: PreTrainedModel | None = None,
    ):
        """``rollout_model`` (FSDP only): the unsharded model rollouts generate from,
        of the actor's architecture; its weights are overwritten from the actor before
        each step's rollout. Without it, FSDP makes one from the actor."""
        self.cfg = config
        self.tokenizer = tokenizer
        self.score_fn = score_fn
        self.rollout_engine = rollout_engine
        if ref is not None:
            ref.eval().requires_grad_(False)
        if config.compile_layers:  # before any sharding, as torchtitan compiles its blocks
            for model in (actor, critic):
                compile_decoder_layers(model)
        dist_on = dist.is_available() and dist.is_initialized()
        self.fsdp = config.strategy == "fsdp"
        self.rollout_model = None
        if self.fsdp:
            if not dist_on:
                raise ValueError("strategy fsdp needs a torch.distributed process group")
            compute = getattr(torch, config.compute_dtype) if config.compute_dtype else None
            dtype = getattr(torch, config.rollout_dtype or config.compute_dtype or "float32")
            dev = mesh_device()
            if rollout_model is None:  # before sharding: a copy of the full weights
                rollout_model = unsharded_copy(actor, dtype, dev)
            self.rollout_model = rollout_model.to(dev).eval().requires_grad_(False)
            for model in (actor, critic, ref):
                if model is not None:
                    shard_model(model, compute)
            self.actor_train, self.critic_train = actor, critic
            self.world = dist.get_world_size()
        elif dist_on and dist.get_world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            dev = next(actor.parameters()).device
            ids = [dev.index] if dev.type == "cuda" else None
            self.actor_train = DDP(actor, device_ids=ids)
            self.critic_train = DDP(critic, device_ids=ids)
            self.world = dist.get_world_size()
        else:
            self.actor_train, self.critic_train = actor, critic
            self.world = 1
        self.actor, self.critic, self.ref = actor, critic, ref
        # the model generate runs on: the actor itself, or the FSDP rollout copy
        self.generator = self.rollout_model if self.fsdp else actor
        self._rollout_stale = self.fsdp
        self.rank0 = not dist_on or dist.get_rank() == 0
        self.actor_opt = _adamw(actor, config.actor_lr, config.weight_decay)
        self.critic_opt = _adamw(critic, config.critic_lr, config.weight_decay)
        self.device_type = next(actor.parameters()).device.type
        self.new_stage(1, reset_optimizer=False)

    def sync_rollout(self) -> None:
        """FSDP: gather the actor's weights into the rollout copy if they changed since
        the last gather (a collective: every worker calls it); nothing otherwise."""
        if self.fsdp and self._rollout_stale:
            gather_into(self.actor, self.rollout_model)
            self._rollout_stale = False

    def autocast(self):
        """bf16 (or fp16) compute over the fp32 weights, as veRL and TRL run it: the
        weights and AdamW moments stay fp32, so updates at lr 1e-6 do not round away."""
        return compute_autocast(self.device_type, self.cfg.compute_dtype)

    def new_stage(
        self,
        num_steps: int,
        reset_optimizer: bool,
        state: dict | None = None,
        resume_schedulers: bool = False,
    ) -> None:
        """Start a stage: optimizer state (saved ``state``, kept, or cleared), then new
        schedules, which restart each stage; ``resume_schedulers`` continues the saved
        ones instead (a stage resumed from an intermediate checkpoint).

        The order matters: loading an optimizer state after building a schedule would
        bring back the previous stage's last learning rate for the first step, and a
        scheduler's saved state holds its step, not the groups' current rate.
        """
        if state is not None and self.fsdp:  # rank 0 holds the full state; a collective
            for model, opt, key in (
                (self.actor, self.actor_opt, "actor_opt"),
                (self.critic, self.critic_opt, "critic_opt"),
            ):
                load_full_optimizer_state(model, opt, state[key] if self.rank0 else {})
        elif state is not None:
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.critic_opt.load_state_dict(state["critic_opt"])
        if reset_optimizer:
            self.actor_opt.state.clear()
            self.critic_opt.state.clear()
        for opt, lr in ((self.actor_opt, self.cfg.actor_lr), (self.critic_opt, self.cfg.critic_lr)):
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] = lr
        kw = dict(num_warmup_steps=self.cfg.lr_warmup_steps, num_training_steps=max(num_steps, 1))
        name = (
            "constant_with_warmup" if self.cfg.lr_scheduler == "constant" else self.cfg.lr_scheduler
        )
        self.actor_sched = get_scheduler(name, self.actor_opt, **kw)
        self.critic_sched = get_scheduler(name, self.critic_opt, **kw)
        if state is not None and resume_schedulers:
            for sched, opt, key in (
                (self.actor_sched, self.actor_opt, "actor_sched"),
                (self.critic_sched, self.critic_opt, "critic_sched"),
            ):
                sched.load_state_dict(state[key])
                for g, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
                    g["lr"] = lr

    def state_dict(self) -> dict:
        """Optimizer and schedule state. Under FSDP a collective (every worker calls
        it): the optimizers' full state, keyed by parameter name, on rank 0's CPU."""
        if self.fsdp:
            actor_opt = full_optimizer_state(self.actor, self.actor_opt)
            critic_opt = full_optimizer_state(self.critic, self.critic_opt)
        else:
            actor_opt, critic_opt = self.actor_opt.state_dict(), self.critic_opt.state_dict()
        return {
            "actor_opt": actor_opt,
            "critic_opt": critic_opt,
            "actor_sched": self.actor_sched.state_dict(),
            "critic_sched": self.critic_sched.state_dict(),
        }

    # -- one step -----------------------------------------------------------------

    def _rollout(self, prompts: list[str]) -> Rollout:
        if self.rollout_engine is not None:
            return self.rollout_engine.generate(prompts, self.cfg.max_prompt_length)
        with self.autocast():
            return hf_generate(
                self.generator,
                self.tokenizer,
                prompts,
                max_prompt_length=self.cfg.max_prompt_length,
                max_new_tokens=self.cfg.max_response_length,
                temperature=self.cfg.temperature,
                batch_size=self.cfg.rollout_batch_size or len(prompts),
                engine=self.cfg.rollout_engine,
            )

    def _inputs(self, ro: Rollout, idx) -> dict:
        """One forward pass's inputs over prompt and response. ``use_cache=False``: a
        model whose config says ``use_cache`` (Qwen2's does) would otherwise build a
        KV cache in every scoring and training pass, copying each layer's keys and
        values for nothing, and with ``compile_layers`` each layer's cache entry is
        a guard of its own: dynamo recompiles per layer and, past its recompile limit
        of 8, runs the remaining layers eagerly (20 of Qwen2.5-1.5B's 28)."""
        ids = torch.cat([ro.prompt_ids[idx], ro.response_ids[idx]], dim=1)
        mask = torch.cat([ro.prompt_mask[idx], ro.response_mask[idx]], dim=1)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids(mask),
            "use_cache": False,
        }

    def _values(self, critic, ro: Rollout, idx) -> torch.Tensor:
        """The critic's value at each position that predicts a response token."""
        P, R = ro.prompt_ids.shape[1], ro.response_ids.shape[1]
        with self.autocast():
            out = critic(**self._inputs(ro, idx))
        return out.logits[:, P - 1 : P + R - 1, 0].float()

    def _logprobs(
        self, model, ro: Rollout, idx, entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p of each response token and the entropy at its position, under the
        behaviour policy's distribution (logits over the sampling temperature, as
        veRL scores it). The scoring passes need no entropy: on the plain path it
        would cost two more vocabulary-sized tensors.

        Only the positions that predict a response token reach the head
        (``logits_to_keep``): the prompt's would cost a third of the vocabulary
        projection for nothing. With ``fused_logprobs`` the head's output never
        exists as a tensor (``fused_logprobs.fused_head``)."""
        R = ro.response_ids.shape[1]
        resp = ro.response_ids[idx]
        T = self.cfg.temperature
        if self.cfg.fused_logprobs:
            # the last kept position predicts past the response: a dummy target, dropped
            targets = torch.nn.functional.pad(resp, (0, 1))
            inner = model.module if hasattr(model, "module") else model  # DDP
            with self.autocast(), fused_head(inner, targets, T, self.cfg.compile_head):
                out = model(**self._inputs(ro, idx), logits_to_keep=R + 1)
            return out.logits[:, :-1, 0], out.logits[:, :-1, 1]
        with self.autocast():
            out = model(**self._inputs(ro, idx), logits_to_keep=R + 1)
        logits = out.logits[:, :-1].float()
        # dividing by 1.0 changes no bit; skipped, it is a copy of the largest tensor
        logits = logits if T == 1.0 else logits / T
        if not entropy:
            return gather_logprobs(logits, resp), None
        return logprobs_and_entropy(logits, resp)

    @torch.no_grad()
    def _score_old(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old log-probs, reference log-probs and values: forward passes without
        gradients, so in larger micro-batches than training's when memory allows
        (fewer, larger kernels: the passes are launch-bound at small batches)."""
        B = ro.response_ids.shape[0]
        mb = self.cfg.score_micro_batch_size or self.cfg.micro_batch_size
        chunks = [slice(s, min(s + mb, B)) for s in range(0, B, mb)]
        self.actor.eval()
        self.critic.eval()
        # one model at a time, in one autocast region each: its weights cast once
        with self.autocast():
            old_lp = [self._logprobs(self.actor, ro, i, entropy=False)[0] for i in chunks]
        ref_lp = old_lp  # no KL penalty, no reference: its pass would repeat the actor's
        if self.ref is not None:
            with self.autocast():
                ref_lp = [self._logprobs(self.ref, ro, i, entropy=False)[0] for i in chunks]
        with self.autocast():
            values = [self._values(self.critic, ro, i) for i in chunks]
        self.actor.train()
        self.critic.train()
        return torch.cat(old_lp), torch.cat(ref_lp), torch.cat(values)

    def _phase(self, name: str, timings: dict[str, float]):
        """A named phase of the step, timed into ``time/<name>``; on a GPU the queue is
        drained at its end, so each phase's time is its own kernels' and not the next
        phase's wait."""
        sync = torch.cuda.synchronize if self.device_type == "cuda" else None
        return phase(name, timings, before_exit=sync)

    def step(self, problems: list[Problem]) -> dict[str, float]:
        """One rollout batch and its PPO updates, as veRL's phases: generate, reward,
        score with the old policy / reference / critic, advantages, update. Returns
        the step's metrics, each phase's seconds among them (``time/<phase>``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        batch = [p for p in problems for _ in range(cfg.responses_per_prompt)]
        with self._phase("gen", timings):
            self.sync_rollout()
            ro = self._rollout([p.prompt for p in batch])
        with self._phase("reward", timings):
            results = self.score_fn(ro.texts, batch)
            scores = torch.tensor(
                [r.score for r in results], dtype=torch.float32, device=ro.response_ids.device
            )
        mask = ro.response_mask.float()
        with self._phase("old_log_prob", timings):
            old_lp, ref_lp, old_values = self._score_old(ro)
        with self._phase("adv", timings):
            kl = (old_lp - ref_lp) * mask
            rewards = token_rewards(scores, kl, mask, cfg.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask)  # over the whole batch, all workers
        # the critic's warm-up: its schedule counts this stage's steps (restored with
        # it when a stage resumes), the actor's stands still while it waits
        actor = self.critic_sched.last_epoch >= cfg.critic_warmup
        with self._phase("update", timings):
            acc = self._update(ro, mask, old_lp, advantages, old_values, returns, actor)
        lrs = (
            self.actor_sched.get_last_lr()[0] if actor else 0.0,
            self.critic_sched.get_last_lr()[0],
        )
        if actor:
            self.actor_sched.step()
        self.critic_sched.step()

        lengths = ro.response_mask.sum(dim=1).float()
        tokens = int(ro.prompt_mask.sum().item() + lengths.sum().item())
        elapsed = time.perf_counter() - t0
        # grad_norm: the actor's pre-clip global norm at each optimizer step, averaged
        # over the step's optimizer steps (GRPO logs one optimizer step per row)
        out = {k: sum(v) / len(v) for k, v in acc.items() if v}
        out.update(
            success_rate=success_rate([r.correct for r in results]),
            answer_forms=answer_forms(r.answer for r in results),
            reward_mean=scores.mean().item(),
            kl=masked_mean(kl, mask).item(),
            response_length_mean=lengths.mean().item(),
            response_length_max=lengths.max().item(),
            lr_actor=lrs[0],
            lr_critic=lrs[1],
            tokens_per_s=tokens / elapsed,
            step_time=elapsed,
            generation_time=timings["time/gen"],
            **timings,
        )
        if actor:
            out["policy_loss"] = out.pop("pg_loss")
        out["value_loss"] = out.pop("vf_loss")
        return reduce_metrics(out, METRIC_REDUCTIONS)

    def _update(
        self, ro, mask, old_lp, advantages, old_values, returns, actor: bool = True
    ) -> dict[str, list]:
        """``ppo_epochs`` passes over the batch in mini-batches, one optimizer step each
        for the actor (unless ``actor`` is False: the critic's warm-up) and the critic;
        each mini-batch's metrics."""
        cfg = self.cfg
        B = mask.shape[0]
        acc = {k: [] for k in UPDATE_METRICS}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, device=mask.device)
            for ms in range(0, B, cfg.mini_batch_size):
                mini = perm[ms : ms + cfg.mini_batch_size]
                row, micro = self._mini_batch(
                    ro, mask, mini, old_lp, advantages, old_values, returns, actor
                )
                for k, v in row.items():
                    acc[k].append(v)
                keys = ("pg_clipfrac", "vf_clipfrac", "approx_kl") if actor else ("vf_clipfrac",)
                for r in micro:
                    for k, x in zip(keys, r, strict=True):
                        acc[k].append(x)
        return acc

    def _mini_batch(self, ro, mask, mini, old_lp, advantages, old_values, returns, actor=True):
        """One optimizer step of the actor (``actor``: else the critic's warm-up, which
        leaves the actor as it is) and the critic over ``mini``, accumulated over its
        micro-batches; the losses and norms, checked finite before any weight moves, and
        each micro-batch's clip fractions and approximate KL (the critic's clip fraction
        alone in the warm-up)."""
        cfg = self.cfg
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        # veRL's token-mean: each micro-batch's token sum over the mini-batch's
        # token count on all workers; DDP averages gradients over workers, so
        # the count per worker is the global one divided by the world size
        denom = self._global_tokens(mask[mini]) / self.world
        # kept on the device: a host read per micro-batch would stall the
        # queue of kernels, one read per optimizer step is enough
        sums = torch.zeros(3, device=mask.device)  # pg_loss, vf_loss, entropy
        micros = [mini[us : us + cfg.micro_batch_size]
                  for us in range(0, len(mini), cfg.micro_batch_size)]  # fmt: skip
        # The actor's micro-batches, then the critic's, each model in one autocast
        # region (_cast_once)
        actor_rows = []  # pg_clipfrac, approx_kl per micro-batch
        if actor:
            with self._cast_once(self.actor):
                for idx in micros:
                    m = mask[idx]
                    lp, ent_tok = self._logprobs(self.actor_train, ro, idx)
                    pg, pg_clip = policy_loss(
                        lp,
                        old_lp[idx],
                        advantages[idx],
                        m,
                        cfg.clip_ratio,
                        denom,
                        clip_ratio_c=cfg.clip_ratio_c,
                    )
                    ent = agg_token_mean(ent_tok, m, denom)
                    (pg - cfg.entropy_coef * ent).backward()
                    # the micro-batches' terms add up to the mini-batch's token-means
                    sums[0] += pg.detach()
                    sums[2] += ent.detach()
                    actor_rows.append((pg_clip, masked_mean(old_lp[idx] - lp.detach(), m)))
        critic_rows = []  # vf_clipfrac per micro-batch
        with self._cast_once(self.critic):
            for idx in micros:
                v = self._values(self.critic_train, ro, idx)
                vf, vf_clip = value_loss(
                    v, old_values[idx], returns[idx], mask[idx], cfg.value_clip, denom
                )
                vf.backward()
                sums[1] += vf.detach()
                critic_rows.append(vf_clip)
        if actor:
            pairs = zip(actor_rows, critic_rows, strict=True)
            micro = [torch.stack([pg_clip, vf_clip, kl]) for (pg_clip, kl), vf_clip in pairs]
        else:
            micro = [vf_clip.reshape(1) for vf_clip in critic_rows]
        zero = torch.zeros((), device=mask.device)
        gn = scalar(clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)) if actor else zero
        cgn = scalar(clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm))
        # one host read: losses and norms checked before any weight moves
        pg_sum, vf_sum, ent_sum, gn_, cgn_ = torch.cat(
            [sums, gn.reshape(1), cgn.reshape(1)]
        ).tolist()
        if not all(map(math.isfinite, (pg_sum, vf_sum, ent_sum))):
            raise NonFiniteLoss(f"policy loss {pg_sum}, value loss {vf_sum}")
        if not (math.isfinite(gn_) and math.isfinite(cgn_)):
            raise NonFiniteLoss(f"gradient norm {gn_} / critic {cgn_}")
        if actor:
            self.actor_opt.step()
            self._rollout_stale = True
        self.critic_opt.step()
        row = dict(vf_loss=vf_sum, critic_grad_norm=cgn_)
        if actor:
            row.update(pg_loss=pg_sum, entropy=ent_sum, grad_norm=gn_)
        return row, torch.stack(micro).tolist()

    def _cast_once(self, model: torch.nn.Module):
        """One autocast region over a model's micro-batches, backward passes included:
        autocast keeps its bf16 cast of every fp32 weight until the region ends, so
        each weight is cast once per optimizer step, not at every micro-batch's use
        (12,882 cast kernels a step at micro-batch 16: docs/benchmarks.md). The same
        bf16 values, so the same numbers; one model's copy is held, as its backward
        held it anyway. Not under gradient checkpointing, whose point is memory: the
        cache would hold a whole bf16 copy through the backward, where recomputation
        holds one layer's; there each forward has its own region, as before."""
        if getattr(model, "is_gradient_checkpointing", False):
            return contextlib.nullcontext()
        return self.autocast()

    def _global_tokens(self, mask: torch.Tensor) -> float:
        n = mask.sum().double().reshape(1)
        if self.world > 1:
            dist.all_reduce(n)
        return n.item()


UPDATE_METRICS = (
    "pg_loss",
    "vf_loss",
    "entropy",
    "pg_clipfrac",
    "vf_clipfrac",
    "grad_norm",
    "critic_grad_norm",
    "approx_kl",
)
PHASES = ("gen", "reward", "old_log_prob", "adv", "update")

# How each metric combines across data-parallel workers (anything else: mean):
# a phase takes as long as its slowest worker.
METRIC_REDUCTIONS = {
    **{f"time/{p}": "max" for p in PHASES},
    "response_length_max": "max",
    "tokens_per_s": "sum",
    "step_time": "max",
    "generation_time": "max",
}


def compile_decoder_layers(model: PreTrainedModel) -> int:
    """``torch.compile`` each decoder layer in place (forward and backward), with dynamic
    shapes: a rollout's length changes from step to step, and one graph per length would
    recompile all run long. A layer's elementwise work (norms, rotary, activations,
    residuals) becomes a few fused kernels; the whole model compiled instead would also
    take in the head and the loss, whose shapes and graph breaks differ by path. The
    number of layers compiled."""
    layers = model.model.layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on weight matrices only, never on norms and biases (as HF's
    Trainer groups them)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    on_cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        fused=on_cuda or None,  # one kernel for all tensors on CUDA, the same update
    )
