"""``clab plan --measure``: a few PPO steps of the spec's own shapes, timed on this machine.

The steps are clab's PPO trainer built from the spec's settings
(:meth:`clab.training.ppo.PPOConfig.from_spec`): one worker's share of a
step (``batch.train / num_workers`` prompts), its micro-batches, rollout
engine, checkpointing and dtype. Under ``fsdp`` with several workers the
share is computed as rank 0 of them, emulated on this one device
(:mod:`clab.distributed.emulate`: shards, gathers and memory as rank 0's,
no communication); under ``ddp`` by one unsharded replica. The workers
compute their shares at the same time, so the run's step takes as long as
one share; communication is not counted.

The models are random weights of the spec's architecture (the model
folder's ``config.json`` when it is here, else the published config), with
a small tokenizer trained here: timing depends on shapes, not values (the
responses may end before their maximum: the printed average length says how
long they were, see docs/schedule.md), the schedule's
upper bound. Prompts are cut to ``max_prompt_length`` tokens for the same
reason. Where the spec states ``resources.gpu_memory_gb``, the GPU is capped
there, so a step that would not fit the run's GPUs fails here too.

A spec that runs on GPUs needs one here (else exit 2); a CPU spec
(``resources.use_gpu: false``) is timed on this CPU, and says so.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from clab.data.countdown.prompts import render_prompt
from clab.data.countdown.reading import Problem
from clab.distributed.emulate import emulate_comms, emulate_rollout_gather, fake_process_group
from clab.errors import ClabError
from clab.models.shape import published_config
from clab.models.tiny import train_tokenizer
from clab.rewards.countdown import Reason, RewardResult
from clab.training.ppo import PPOConfig, PPOTrainer
from clab.training.schedule import StepTime

GiB = 2**30


def _architecture(spec):
    """A transformers config of the spec's model, and where it came from."""
    from transformers import AutoConfig, Qwen2Config

    m = spec.model
    if m.preset == "tiny":
        h = m.hidden_size
        cfg = Qwen2Config(
            vocab_size=m.vocab_size,
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=m.layers,
            num_attention_heads=m.heads,
            num_key_value_heads=max(1, m.heads // 2),
            tie_word_embeddings=True,
            max_position_embeddings=4096,
        )
        return cfg, f"the tiny preset (hidden {h}, {m.layers} layers)"
    folder = Path(m.name_or_path).expanduser()
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(str(folder)), f"{folder / 'config.json'}"
    with contextlib.suppress(OSError, ValueError):
        return (
            AutoConfig.from_pretrained(m.name_or_path, local_files_only=True),
            f"{m.name_or_path} (transformers' local cache)",
        )
    known = published_config(m.name_or_path)
    if known is None:
        raise ClabError(
            f"model.name_or_path: no config for {m.name_or_path!r} here (no folder, not "
            "cached, not a published Qwen2.5 size): --measure needs the architecture"
        )
    name, table = known
    cfg = Qwen2Config(**{k: v for k, v in table.items() if k != "model_type"})
    return cfg, f"{name}'s published config"


def _device(spec):
    import torch

    if not spec.resources.use_gpu:
        return torch.device("cpu"), "this machine's CPU (the spec runs on CPUs)"
    if not torch.cuda.is_available():
        raise ClabError(
            "--measure: the spec runs on GPUs (resources.use_gpu: true) but no CUDA device "
            "is visible here; run it on a GPU machine, or give --tokens-per-s N or "
            "--step-seconds S instead"
        )
    return torch.device("cuda"), torch.cuda.get_device_name()


def _tokenizer(size: int):
    """A small byte-level tokenizer; ids the model writes beyond it decode modulo its
    size (a random model's text is noise either way, and the reward ignores it)."""

    texts = [render_prompt([i % 97 + 1, 7, 13], i + 20, ["+", "-"]) for i in range(200)]
    tok = train_tokenizer(texts, size)
    n = len(tok)
    decode = tok.batch_decode
    tok.batch_decode = lambda ids, **kw: decode((ids % n).tolist(), **kw)
    return tok, texts


def _models(spec, cfg, tok, device):
    """Actor and critic with fp32 weights, the reference in the inference dtype, as the
    PPO stage trainer loads them, built where they run (seconds, not minutes at 1.5B);
    under fsdp the trainer shards them from there and makes its rollout copy."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    critic_cfg = copy.deepcopy(cfg)
    critic_cfg.num_labels = 1
    infer = getattr(torch, spec.model.dtype) if device.type == "cuda" else torch.float32
    torch.manual_seed(spec.seed)
    with torch.device(device):
        actor = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        critic = AutoModelForTokenClassification.from_config(critic_cfg, dtype=torch.float32)
        ref = None
        if spec.ppo.kl_coef > 0:
            ref = AutoModelForCausalLM.from_config(cfg, dtype=infer)
            ref.load_state_dict(actor.state_dict())
    if spec.model.gradient_checkpointing:
        actor.gradient_checkpointing_enable()
        critic.gradient_checkpointing_enable()
    return actor, critic, ref


def _say(text: str) -> None:
    """Progress on stderr: a measurement takes minutes on a GPU (the static engine
    compiles in its first step), and stdout is the plan."""
    print(f"clab plan --measure: {text}", file=sys.stderr, flush=True)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far: a step that compiled some (a
    compiled layer meeting a new variant of its call) is slow for that reason. It counts
    recompiles too; not CUDA-graph recordings, nor calls run eagerly past dynamo's
    recompile limit."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed_steps(
    step: Callable[[], dict],
    steps: int,
    max_warm: int = 3,
    graphs: Callable[[], int] | None = None,
) -> tuple[list[dict], list[bool], float, int]:
    """``steps`` steps' rows after warm-up steps, with whether each compiled a graph; the
    warm-up's seconds and steps.

    One warm-up step is not always enough: compiled decoder layers get a graph per
    variant of their call (grad mode, whether the input needs a gradient, whether an
    attention mask comes at all: transformers passes none when a micro-batch has no
    padding), and which variants a step meets depends on where its sampled responses
    end. On an H100 the 1.5B service's first timed step after one warm-up step took
    77 s (compiling) against 5.6 and 5.8 s; in a two-step run on that lease the median
    was the mean of a compiling step and a quiet one, and said 32 days a seed instead
    of 9.4. So the warm-up runs until a step compiles nothing (``max_warm`` at most),
    and a timed step that still compiles is flagged, for the caller to leave out. What
    the counter cannot see: CUDA-graph recordings, and calls that run eagerly because
    a function hit dynamo's recompile limit."""
    graphs = graphs or graphs_compiled
    t0 = time.perf_counter()
    warm_steps = 0
    while warm_steps < max_warm:
        g = graphs()
        step()
        warm_steps += 1
        if not graphs() > g:
            break
        if warm_steps < max_warm:
            _say(f"warm-up step {warm_steps} compiled graphs: one more")
        else:
            _say(f"warm-up step {warm_steps} compiled graphs too: timing anyway")
    warm = time.perf_counter() - t0
    rows, compiled = [], []
    for i in range(steps):
        g = graphs()
        rows.append(step())
        compiled.append(graphs() > g)
        note = " (it compiled graphs)" if compiled[-1] else ""
        _say(f"step {i + 1} of {steps}: {rows[-1]['step_time']:.2f} s{note}")
    return rows, compiled, warm, warm_steps


# the step's parts as `clab plan` names them: the trainer's phases (PPOTrainer.step)
PARTS = {"generation": "gen", "scoring": "old_log_prob", "updates": "update"}


def measure(spec, steps: int = 3) -> StepTime:
    """Seconds of one step of the spec's run, from the median of ``steps`` timed steps
    (after warm-up steps, which compile and allocate the optimizer state), with the
    step's parts: the trainer's named phases (generation with the rollout copy's gather,
    the scoring passes, the updates) and the rest."""
    if spec.kind != "countdown-rl" or spec.algorithm != "ppo":
        what = f"{spec.kind}" + (f" ({spec.algorithm})" if spec.kind == "countdown-rl" else "")
        raise ClabError(
            f"--measure times PPO steps (kind countdown-rl, algorithm ppo), not {what}: "
            "give --tokens-per-s N or --step-seconds S"
        )
    if spec.rollout.engine == "vllm":
        raise ClabError(
            "--measure times the hf and hf-static rollout engines, not vllm: give "
            "--tokens-per-s N, or measure with --set rollout.engine=hf-static"
        )
    device, where = _device(spec)
    res = spec.resources
    world = res.num_workers
    fsdp = res.strategy == "fsdp" and world > 1
    group = contextlib.nullcontext()
    if fsdp:
        group = fake_process_group(world)
    with group:
        return _measure(spec, steps, device, where, world, fsdp)


def _measure(spec, steps: int, device, where: str, world: int, fsdp: bool) -> StepTime:
    import torch

    cuda = device.type == "cuda"
    cfg, arch = _architecture(spec)
    tok_size = spec.model.vocab_size if spec.model.preset == "tiny" else 512
    tok, texts = _tokenizer(min(tok_size, cfg.vocab_size))
    if cuda:
        torch.cuda.set_device(device.index or 0)
    _say(f"building random models of {arch} on {where}")
    t0 = time.perf_counter()
    actor, critic, ref = _models(spec, cfg, tok, device)
    compute = spec.model.dtype if cuda and spec.model.dtype != "float32" else None
    ppo = PPOConfig.from_spec(spec, world, compute, fsdp)

    def score(completions, problems):  # varied, so that the advantages are not zero
        return [
            RewardResult(0.1 * (i % 3), False, Reason.WRONG_VALUE) for i in range(len(problems))
        ]

    trainer = PPOTrainer(actor, critic, ref, tok, ppo, score)
    if fsdp:
        for m in (trainer.actor, trainer.critic, trainer.ref):
            if m is not None:
                emulate_comms(m, world)
        emulate_rollout_gather(trainer)
    built = time.perf_counter() - t0
    # prompts of max_prompt_length tokens or more, cut from the left to exactly that
    long = " ".join(texts)
    share = spec.batch.train // world
    problems = [Problem(f"{i} {long}", 0, [], [], None) for i in range(share)]

    cap = spec.resources.gpu_memory_gb
    capped = ""
    if cuda:
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        if cap and cap * GiB < total:
            torch.cuda.set_per_process_memory_fraction(cap * GiB / total)
            capped = f", capped at resources.gpu_memory_gb {cap:g} GiB"
        torch.cuda.reset_peak_memory_stats()
    try:
        what = [
            *(["the static engine"] if cuda and spec.rollout.engine == "hf-static" else []),
            *(["every decoder layer"] if spec.ppo.compile_layers else []),
            *(["the fused head"] if spec.ppo.compile_head and spec.ppo.fused_logprobs else []),
        ]
        _say("warm-up step" + (f" (compiling {', '.join(what)}: a minute or more)" if what else ""))
        rows, compiled, warm, warm_steps = timed_steps(lambda: trainer.step(problems), steps)
    except torch.OutOfMemoryError:
        have = torch.cuda.get_device_properties(device).total_memory / GiB
        raise ClabError(
            f"--measure: out of memory on {where} ({cap or have:.0f} GiB{capped and ' cap'}) "
            "at the spec's shapes; the memory plan above says what one GPU needs"
        ) from None
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    clean = [r for r, c in zip(rows, compiled, strict=True) if not c] or rows
    med = statistics.median
    step = med(r["step_time"] for r in clean)
    part = {name: med(r[f"time/{key}"] for r in clean) for name, key in PARTS.items()}
    length = med(r["response_length_mean"] for r in clean)
    rate = med(r["tokens_per_s"] for r in clean) * world  # every worker at once
    peak = f"; peak {torch.cuda.max_memory_allocated() / GiB:.1f} GiB allocated" if cuda else ""
    n = spec.rollout.responses_per_prompt
    how = (
        f"rank 0 of {world} under fsdp, emulated (no communication)"
        if fsdp
        else ("one replica (ddp's all-reduce not counted)" if world > 1 else "the whole step")
    )
    source = (
        f"measured on {where}{capped}: {share} prompts x {n} response{'s' if n > 1 else ''} "
        f"(responses {length:,.0f} tokens on average), {how}; median of {len(clean)} "
        f"step{'s' if len(clean) > 1 else ''} after a warm-up of {warm:.0f} s in {warm_steps} "
        f"step{'s' if warm_steps > 1 else ''} (models built in {built:.0f} s){peak}; random "
        f"weights of {arch}"
    )
    if all(compiled):
        source += f"; all {len(rows)} timed steps compiled graphs: an upper figure"
    elif any(compiled):
        source += (
            f"; {sum(compiled)} of the {len(rows)} timed steps compiled graphs: left out of "
            "the median"
        )
    if world > 1:
        source += f"; {world} workers compute their shares at once: a step takes one share's time"
    source += f"; {rate:,.0f} tokens/s for the run"
    return StepTime(
        step,
        source,
        {**part, "the rest": max(step - sum(part.values()), 0.0)},
    )
