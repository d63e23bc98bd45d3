"""How much memory one GPU needs for a training spec, before anything is launched.

A run that does not fit fails minutes in, after the model has loaded and the
first rollout ran; ``clab plan SPEC`` and :func:`estimate` say so up front by
adding up what each GPU holds, part by part, in each phase of a step (rollout,
scoring, the backwards, the optimizer step); the peak is the largest phase, as
``torch.cuda.max_memory_allocated`` would report it. Each formula is a small
function below; docs/memory.md has them with the measurements they are checked
against (tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clab.errors import ClabError
from clab.models.shape import (
    DecoderShape,
    causal_lm_params,
    layer_params,
    resolve_shape,
    root_params,
    tiny_shape,
    value_model_params,
)
from clab.specs import read_spec_data, validate_spec
from clab.training.fused_logprobs import CHUNK_BYTES

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# AdamW: fp32 weights, fp32 gradients, two fp32 moments
WEIGHT_BYTES, GRAD_BYTES, ADAM_BYTES = 4, 4, 8
# DDP copies each gradient into an fp32 bucket for the all-reduce
DDP_BUCKET_BYTES = 4
# foreach AdamW (torch's default on CUDA) allocates sqrt(v) for a whole parameter group
ADAM_STEP_TEMP_BYTES = 4
# TRL's fused log-prob head works on tiles of 4096 tokens x 32768 vocabulary entries
TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK = 4096, 32768
# CUDA context, cuBLAS and NCCL workspaces: on the GPU, not in torch's allocator
CUDA_CONTEXT_BYTES = GiB
# the verdict warns when the need is above this share of the GPU (allocator fragmentation)
TIGHT_SHARE = 0.9

ALWAYS = "always"


@dataclass(frozen=True)
class PPOLayout:
    """How a version of clab's PPO trainer lays out a micro-batch in memory."""

    name: str
    # fp32 copies of (micro x response x vocab) alive at the start of the actor's
    # backward, and how many more its backward makes at its peak (measured with
    # torch's MemTracker on the CPU: tests/test_plan.py)
    logits_live: int
    logits_backward: int
    # logits for every position (then sliced), or only where a response token is predicted
    response_logits_only: bool
    # the critic's forward runs before the actor's backward (both graphs alive at once)
    critic_before_actor_backward: bool
    # AdamW fused on CUDA (no foreach temporaries)
    fused_adamw: bool


# clab's PPO trainer: logits at response positions only, log-probs and entropy from one
# log-softmax (2 copies alive: it and its exp), the actor's graph freed before the
# critic's forward, fused AdamW.
PPO_FUSED = PPOLayout("fused", 2, 3, True, False, True)
# The layout the H100 and H200 peaks in docs/memory.md were measured with: logits for
# the whole sequence, separate log-softmaxes for log-probs and entropy, both forwards
# before both backwards, foreach AdamW. Kept so the plan is still checked against them.
PPO_SEPARATE = PPOLayout("separate", 4, 3, False, True, False)


LAYOUT_NOTES = {
    "separate": "whole-sequence logits, two log-softmaxes, both forwards before both backwards",
    "fused": "response logits only, one log-softmax, the actor's backward before the "
    "critic's forward",
}


# -- formulas ------------------------------------------------------------------------------


def training_state_bytes(params: int, strategy: str, world: int) -> dict[str, int]:
    """fp32 weights, gradients and AdamW moments of a trained model on one GPU: divided by
    ``world`` under fsdp; replicated under ddp, which adds its gradient buckets."""
    shard = world if strategy == "fsdp" else 1
    out = {
        "weights": params * WEIGHT_BYTES // shard,
        "gradients": params * GRAD_BYTES // shard,
        "optimizer": params * ADAM_BYTES // shard,
    }
    if strategy == "ddp" and world > 1:
        out["ddp_buckets"] = params * DDP_BUCKET_BYTES
    return out


def matmul_weights(s: DecoderShape) -> int:
    """Weights one decoder layer multiplies by (autocast casts and caches these)."""
    h, q, kv = s.hidden_size, s.q_dim, s.kv_dim
    return h * q + 2 * h * kv + q * h + 3 * h * s.intermediate_size


def head_matmul_weights(s: DecoderShape, value_head: bool) -> int:
    """The output projection's weight (the tied embedding counts here) or the value head's."""
    return s.hidden_size if value_head else s.vocab_size * s.hidden_size


def compute_copy_bytes(s: DecoderShape, compute_bytes: int, value_head: bool = False) -> int:
    """A model's matmul weights in the compute dtype: autocast's cache over a whole forward
    or generate (embeddings and norms are not cast)."""
    return compute_bytes * (s.num_layers * matmul_weights(s) + head_matmul_weights(s, value_head))


def fsdp_gathered_bytes(
    s: DecoderShape, compute_bytes: int, *, value_head: bool = False, backward: bool = True
) -> int:
    """What fully_shard holds unsharded at once (every layer a unit, resharded after its
    forward, the root too): the root unit's parameters, the current and the prefetched
    layer; in backward also the root's unsharded gradient, which accumulates until the
    end."""
    root = root_params(s, value_head=value_head)
    return compute_bytes * ((2 if backward else 1) * root + 2 * layer_params(s))


def layer_activation_bytes(s: DecoderShape, residual_bytes: int, compute_bytes: int) -> int:
    """Bytes one decoder layer saves for backward, per token (see the module docstring)."""
    h, q, i = s.hidden_size, s.q_dim, s.intermediate_size
    norms = 2 * (4 + residual_bytes) * h
    casts = (5 if residual_bytes != compute_bytes else 2) * compute_bytes * h
    attention = 4 * compute_bytes * q + 4 * s.num_heads
    mlp = 4 * compute_bytes * i
    return norms + casts + attention + mlp


def forward_working_bytes(
    s: DecoderShape, tokens: int, residual_bytes: int, compute_bytes: int
) -> int:
    """A no-grad layer's largest moment (prefill, scoring): the MLP's gate, up and SiLU
    outputs beside the residual stream going in and out."""
    return tokens * (3 * compute_bytes * s.intermediate_size + 2 * residual_bytes * s.hidden_size)


def attention_bias_bytes(micro: int, seq: int, compute_bytes: int) -> int:
    """The padding mask SDPA turns into an additive bias, saved by each layer."""
    return micro * seq * seq * compute_bytes


def recomputed_layer_bytes(
    s: DecoderShape, micro: int, seq: int, residual_bytes: int, compute_bytes: int
) -> int:
    """One decoder layer's saved tensors for a micro-batch: what every layer keeps without
    checkpointing, and what checkpointing rebuilds for one layer at a time in backward."""
    tokens = micro * seq
    return layer_activation_bytes(s, residual_bytes, compute_bytes) * tokens + attention_bias_bytes(
        micro, seq, compute_bytes
    )


def model_activation_bytes(
    s: DecoderShape,
    micro: int,
    seq: int,
    *,
    checkpointing: bool,
    residual_bytes: int,
    compute_bytes: int,
) -> int:
    """What one forward saves for its backward: every layer's tensors (with checkpointing
    only each layer's input), the rotary tables, the final norm and the head's input.
    A checkpointed layer recomputed in backward is :func:`recomputed_layer_bytes`."""
    tokens = micro * seq
    if checkpointing:
        layers = s.num_layers * residual_bytes * s.hidden_size * tokens
    else:
        layers = s.num_layers * recomputed_layer_bytes(s, micro, seq, residual_bytes, compute_bytes)
    rotary = 2 * s.head_dim * residual_bytes * tokens
    final_norm = (4 + residual_bytes) * s.hidden_size * tokens
    head_input = compute_bytes * s.hidden_size * tokens
    return layers + rotary + final_norm + head_input


def ppo_logits_bytes(micro: int, response: int, vocab: int, layout: PPOLayout) -> int:
    """PPO's actor loss at its backward's peak: fp32 copies of micro x response x vocab
    (5 in the fused layout, 7 in the separate one)."""
    return (layout.logits_live + layout.logits_backward) * 4 * micro * response * vocab


def scoring_logits_bytes(
    micro: int,
    prompt: int,
    response: int,
    vocab: int,
    compute_bytes: int,
    layout: PPOLayout,
    temperature: float = 1.0,
) -> int:
    """A no-grad scoring forward's logits at their peak. Fused layout: logits at the
    response positions (R + 1), their fp32 copy (and its scaled copy when the temperature
    is not 1), or later the copy and its log-softmax, whichever is larger. Separate: the
    whole sequence's logits in the compute dtype, beside the response's fp32 copy and its
    temperature-scaled copy."""
    if not layout.response_logits_only:
        return micro * vocab * (compute_bytes * (prompt + response) + 8 * response)
    copies = 2 if temperature != 1.0 else 1
    forward = compute_bytes * (response + 1) + 4 * copies * response
    return micro * vocab * max(forward, 8 * response)


def kv_cache_bytes(s: DecoderShape, batch: int, seq: int, compute_bytes: int) -> int:
    """Keys and values of every layer for ``batch`` sequences of ``seq`` tokens."""
    return 2 * s.num_layers * s.num_kv_heads * s.head_dim * compute_bytes * batch * seq


def sampling_bytes(batch: int, vocab: int) -> int:
    """The next token's fp32 logits and probabilities while sampling."""
    return 2 * 4 * batch * vocab


def fused_head_bytes(s: DecoderShape, tokens: int, compute_bytes: int) -> int:
    """TRL's chunked log-prob head: its fp32 gradient of the head weight and of the
    hidden states, and one tile of logits."""
    return (
        4 * s.vocab_size * s.hidden_size
        + 4 * tokens * s.hidden_size
        + (compute_bytes * min(tokens, TRL_TOKEN_CHUNK) * TRL_VOCAB_CHUNK)
    )


def fused_logprob_bytes(
    s: DecoderShape, tokens: int, compute_bytes: int, weight_bytes: int, backward: bool
) -> int:
    """``ppo.fused_logprobs``' head (training/fused_logprobs.py) at its peak: two fp32
    vocabulary-sized buffers of one chunk of tokens, the head weight cast to the
    compute dtype where it is not in it already (an FSDP-gathered weight is), and in
    the backward the head's gradient (summed over several chunks in fp32, then
    rounded to the weight's dtype) with one chunk's part of it (compute dtype) beside
    the chunk's gradient of the logits (compute dtype)."""
    v, h = s.vocab_size, s.hidden_size
    chunk = min(tokens, max(1, CHUNK_BYTES // (4 * v)))
    cast = compute_bytes * v * h if weight_bytes != compute_bytes else 0
    if not backward:
        return cast + 8 * chunk * v
    several = tokens > chunk
    acc = 4 if several else weight_bytes  # the gradient's sum over the chunks
    rounding = (acc + weight_bytes) * v * h if acc != weight_bytes else 0
    return cast + max(
        8 * chunk * v + (acc * v * h if several else 0),  # the earlier chunks' sum
        compute_bytes * chunk * v + (compute_bytes + acc) * v * h,
        rounding,
    )


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One thing on the GPU: its size, the phases of a step it is alive in, and how it was
    computed (printed beside it)."""

    name: str
    bytes: int
    phases: tuple[str, ...]
    how: str = ""


@dataclass
class MemoryPlan:
    """Per-GPU bytes of each part of a training step and the verdict against the GPU."""

    model: str
    params: dict[str, int]
    setup: list[str]
    phases: list[str]
    parts: list[Part] = field(default_factory=list)
    gpu_memory_bytes: int | None = None
    device: str = "GPU"
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, nbytes: int, phases: tuple[str, ...], how: str = "") -> None:
        if nbytes > 0:
            self.parts.append(Part(name, int(nbytes), phases, how))

    def phase_bytes(self, phase: str) -> int:
        return sum(p.bytes for p in self.parts if ALWAYS in p.phases or phase in p.phases)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def peak_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` would report at the step's peak."""
        return self.phase_bytes(self.peak_phase)

    @property
    def required_bytes(self) -> int:
        """The peak plus the CUDA context the allocator does not count."""
        extra = CUDA_CONTEXT_BYTES if self.device == "GPU" else 0
        return self.peak_bytes + extra

    @property
    def fits(self) -> bool | None:
        """None when the GPU's memory is not stated."""
        if self.gpu_memory_bytes is None:
            return None
        return self.required_bytes <= self.gpu_memory_bytes

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


def gib(n: int | float) -> str:
    return f"{n / GiB:.2f}"


def gradient_phases(model: str, algorithm: str, accumulation: int) -> tuple[str, ...]:
    """Phases a model's gradients are alive in.

    PPO frees them at the start of each mini-batch (``zero_grad(set_to_none=True)``),
    so they outlive the step into the next rollout and scoring; within a mini-batch
    they exist from the first micro-batch's backward on, so the actor's backward sees
    them only when micro-batches accumulate, and the critic's backward sees the
    actor's. HF's Trainer (GRPO) frees them after each optimizer step.
    """
    if algorithm != "ppo":
        if accumulation > 1:
            return ("backward", "recompute", "optimizer step")
        return ("optimizer step",)
    phases = ["rollout", "scoring", "optimizer step"]
    if model == "actor":
        phases.append("critic backward")
        if accumulation > 1:
            phases += ["actor backward", "actor recompute"]
    elif accumulation > 1:
        phases += ["actor backward", "actor recompute", "critic backward"]
    return tuple(phases)


def _rollout_batch(spec, per_worker: int) -> int:
    """Sequences one GPU generates at once: the rollout's own batch size when the spec has
    one (``rollout.batch_size``; ``hf-static`` pads every call to it), else all
    of its share of the step."""
    size = getattr(spec.rollout, "batch_size", None)
    if not size:
        return per_worker
    return size if spec.rollout.engine == "hf-static" else min(size, per_worker)


def model_shape(spec) -> tuple[DecoderShape, str]:
    """The spec's model shape: the tiny preset from its fields, else the named model's."""
    m = spec.model
    if getattr(m, "preset", None) == "tiny":
        shape = tiny_shape(m.hidden_size, m.layers, m.vocab_size, m.heads)
        return shape, (
            f"preset tiny (hidden {m.hidden_size}, {m.layers} layers, "
            f"vocabulary at most {m.vocab_size})"
        )
    return resolve_shape(m.name_or_path)


def estimate(spec, gpu_memory_gb: float | None = None, layout: PPOLayout = PPO_FUSED) -> MemoryPlan:
    """The per-GPU memory plan of a training spec (kind ``countdown-rl``: PPO or GRPO).

    ``gpu_memory_gb`` overrides ``resources.gpu_memory_gb`` (GiB, as nvidia-smi's MiB /
    1024: a "24 GB" card has 24); ``layout`` the PPO trainer's (default: clab's; GRPO
    ignores it)."""
    if getattr(spec, "kind", None) != "countdown-rl":
        raise ClabError(
            f"clab plan covers kind countdown-rl (PPO and GRPO) only; "
            f"{getattr(spec, 'kind', type(spec).__name__)!r} is not planned yet"
        )
    shape, source = model_shape(spec)
    plan = _estimate_countdown_rl(spec, shape, source, gpu_memory_gb, layout)
    if spec.algorithm == "ppo" and not spec.ppo.fused_logprobs and layout is PPO_FUSED:
        # the logits are often the largest thing on the GPU: say what the option buys
        ppo = spec.ppo.model_copy(update={"fused_logprobs": True})
        fused = _estimate_countdown_rl(
            spec.model_copy(update={"ppo": ppo}), shape, source, gpu_memory_gb, layout
        )
        saved = plan.required_bytes - fused.required_bytes
        if saved >= max(GiB // 4, plan.required_bytes // 10):
            plan.notes.append(
                f"ppo.fused_logprobs: true would need {gib(fused.required_bytes)} GiB, "
                f"{gib(saved)} less: log-probs without the logits tensor (the same numbers "
                "within bf16 rounding; docs/memory.md)"
            )
    return plan


@dataclass(frozen=True)
class _Run:
    """What the formulas need from a countdown-rl spec, derived once."""

    s: DecoderShape
    ppo: bool
    world: int
    fsdp: bool
    gpu: bool
    compute: int  # bytes of the compute dtype
    cname: str
    residual: int  # bytes of the residual stream
    autocast: bool  # fp32 weights cast by autocast (ddp on a GPU)
    ckpt: bool
    prompt: int
    response: int
    micro: int
    rollout_batch: int
    accumulation: int  # micro-batches per optimizer step on one GPU
    engine: str
    layout: PPOLayout
    score_micro: int  # sequences per no-grad scoring pass
    temperature: float
    fused: bool  # ppo.fused_logprobs: no logits tensor

    @property
    def head_weight_bytes(self) -> int:
        """The head weight the fused head reads: FSDP's gathered one in the compute
        dtype, else the fp32 weight itself."""
        return self.compute if self.fsdp else 4

    @property
    def seq(self) -> int:
        return self.prompt + self.response

    @property
    def shard(self) -> int:
        return self.world if self.fsdp else 1

    @property
    def per(self) -> str:
        return f" / {self.world}" if self.fsdp else ""


def _run(spec, s: DecoderShape, layout: PPOLayout) -> _Run:
    res, ro, b = spec.resources, spec.rollout, spec.batch
    ppo, fsdp, gpu = spec.algorithm == "ppo", res.strategy == "fsdp", res.use_gpu
    compute = DTYPE_BYTES[spec.model.dtype] if gpu else 4  # CPU runs fp32
    per_worker = b.train // res.num_workers * ro.responses_per_prompt
    return _Run(
        s=s,
        ppo=ppo,
        world=res.num_workers,
        fsdp=fsdp,
        gpu=gpu,
        compute=compute,
        cname={"bfloat16": "bf16", "float16": "fp16"}.get(spec.model.dtype, "fp32")
        if compute == 2
        else "fp32",
        # fp32 under autocast over fp32 weights; fsdp's param dtype otherwise
        residual=compute if fsdp else 4,
        autocast=not fsdp and compute != 4,
        ckpt=spec.model.gradient_checkpointing,
        prompt=ro.max_prompt_length,
        response=ro.max_response_length,
        micro=b.micro,
        rollout_batch=_rollout_batch(spec, per_worker),
        accumulation=(b.mini // res.num_workers if ppo else per_worker) // b.micro,
        engine=ro.engine,
        layout=layout,
        score_micro=getattr(b, "score_micro", None) or b.micro,
        temperature=ro.temperature,
        fused=ppo and spec.ppo.fused_logprobs,
    )


def _phases(r: _Run) -> list[str]:
    if r.ppo:
        backward = ["actor backward", "actor recompute"] if r.ckpt else ["actor backward"]
        return ["rollout", "scoring", *backward, "critic backward", "optimizer step"]
    backward = ["backward", "recompute"] if r.ckpt else ["backward"]
    return ["rollout", "scoring", *backward, "optimizer step"]


def _estimate_countdown_rl(
    spec, s: DecoderShape, source: str, gpu_gb: float | None, layout: PPOLayout
) -> MemoryPlan:
    r = _run(spec, s, layout)
    actor_p = causal_lm_params(s)
    params = {"actor" if r.ppo else "policy": actor_p}
    if r.ppo:
        params["critic"] = value_model_params(s)
    ref_on = spec.ppo.kl_coef > 0 if r.ppo else spec.grpo.beta > 0
    if ref_on:
        params["reference"] = actor_p
    stated = gpu_gb if gpu_gb is not None else getattr(spec.resources, "gpu_memory_gb", None)
    gpu_bytes = int(stated * GiB) if r.gpu and stated is not None else None
    compute = f"{r.cname} compute over fp32 weights" if r.compute != 4 else "fp32 throughout"
    setup = [
        f"{spec.algorithm}, {spec.resources.strategy} over {r.world} "
        f"{'GPUs' if r.gpu else 'CPU workers'}; {compute}; "
        + ("activation checkpointing" if r.ckpt else "no activation checkpointing"),
        f"sequence {r.prompt} + {r.response} = {r.seq} tokens (every response at its "
        f"maximum); micro-batch {r.micro}; rollout {r.engine}, {r.rollout_batch} sequences "
        f"at once per {'GPU' if r.gpu else 'worker'}",
    ]
    if r.ppo:
        note = (
            "ppo.fused_logprobs: log-probs and entropy from the hidden states chunk by "
            "chunk, no logits tensor"
            if r.fused
            else LAYOUT_NOTES[layout.name]
        )
        setup.append(f"PPO trainer's memory layout: {layout.name} ({note})")
    plan = MemoryPlan(
        model=source,
        params=params,
        setup=setup,
        phases=_phases(r),
        gpu_memory_bytes=gpu_bytes,
        device="GPU" if r.gpu else "CPU",
    )
    _add_model_state(plan, r, params, ref_on)
    if r.fsdp:  # PPO's and GRPO's: rollouts and validation generate from it
        plan.add(
            f"policy {r.cname} rollout copy (fsdp)",
            r.compute * actor_p,
            (ALWAYS,),
            f"{actor_p:,} x {r.compute} B, gathered in place once per step",
        )
    if r.engine == "vllm":
        if gpu_bytes is None:
            plan.notes.append(
                "the vLLM engine takes rollout.gpu_memory_utilization of the GPU's memory: "
                "not counted, since resources.gpu_memory_gb is not stated"
            )
        else:
            util = spec.rollout.gpu_memory_utilization
            plan.add(
                "vLLM engine (weights + KV cache)",
                int(util * gpu_bytes),
                (ALWAYS,),
                f"{util} x {stated:g} GiB",
            )
    else:
        _add_rollout(plan, r, actor_p)
    _add_scoring(plan, r)
    _add_backward(plan, r)
    if r.ppo and r.gpu and not r.layout.fused_adamw:  # foreach on CUDA; HF's is fused
        plan.add(
            "AdamW step temporary",
            actor_p * ADAM_STEP_TEMP_BYTES // r.shard,
            ("optimizer step",),
            f"{actor_p:,} x 4 B{r.per} (foreach sqrt(v))",
        )
    if not r.gpu:
        plan.notes.append("resources.use_gpu is false: a CPU run, fp32 throughout, per worker")
    elif gpu_bytes is None:
        plan.notes.append(
            "resources.gpu_memory_gb is not stated: no verdict (set it in the spec or with "
            "--set resources.gpu_memory_gb=24)"
        )
    return plan


def _add_model_state(plan: MemoryPlan, r: _Run, params: dict[str, int], ref_on: bool) -> None:
    """Trained models' weights, gradients, AdamW moments (and DDP buckets); the reference."""
    strategy = "fsdp" if r.fsdp else "ddp"
    for name in ("actor", "critic", "policy"):
        if name not in params:
            continue
        n = params[name]
        st = training_state_bytes(n, strategy, r.world)
        plan.add(f"{name} weights (fp32)", st["weights"], (ALWAYS,), f"{n:,} x 4 B{r.per}")
        plan.add(
            f"{name} gradients (fp32)",
            st["gradients"],
            gradient_phases(name, "ppo" if r.ppo else "grpo", r.accumulation),
            f"{n:,} x 4 B{r.per}",
        )
        plan.add(f"{name} AdamW moments (fp32)", st["optimizer"], (ALWAYS,), f"{n:,} x 8 B{r.per}")
        if "ddp_buckets" in st:
            plan.add(f"{name} DDP gradient buckets", st["ddp_buckets"], (ALWAYS,), f"{n:,} x 4 B")
    if ref_on:
        n = params["reference"]
        nbytes = r.compute if r.ppo else 4  # TRL loads its reference in fp32
        plan.add(
            f"reference weights ({r.cname if nbytes == 2 else 'fp32'})",
            n * nbytes // r.shard,
            (ALWAYS,),
            f"{n:,} x {nbytes} B{r.per}",
        )


def _add_rollout(plan: MemoryPlan, r: _Run, actor_p: int) -> None:
    """HF generate: the policy's compute copy, the KV cache, prefill and sampling. The
    ``hf-static`` engine keeps its own copy of the policy and a KV cache for
    ``rollout.batch_size`` sequences padded to full length for the whole run."""
    s, rb = r.s, r.rollout_batch
    static = r.engine == "hf-static"  # PPO's rollouts, and GRPO's through TRL's rollout hook
    if static and r.fsdp:
        pass  # the static engine generates from fsdp's rollout copy itself (counted there)
    elif static:
        plan.add(
            f"policy {r.cname} copy (hf-static)",
            r.compute * actor_p,
            (ALWAYS,),
            f"{actor_p:,} x {r.compute} B, refreshed in place",
        )
    elif r.autocast:
        plan.add(
            f"policy {r.cname} copy for generation",
            compute_copy_bytes(s, r.compute),
            ("rollout",),
            "autocast's cached casts of the matmul weights",
        )
    plan.add(
        "KV cache" + (" (static)" if static else ""),
        kv_cache_bytes(s, rb, r.seq, r.compute),
        (ALWAYS,) if static else ("rollout",),
        f"2 x {s.num_layers} layers x {s.num_kv_heads} x {s.head_dim} x {r.compute} B x "
        f"{rb} x {r.seq}",
    )
    plan.add(
        "prefill (one layer)",
        forward_working_bytes(s, rb * r.prompt, r.residual, r.compute),
        ("rollout",),
        f"{rb} x {r.prompt} prompt tokens",
    )
    plan.add(
        "sampling logits",
        sampling_bytes(rb, s.vocab_size),
        ("rollout",),
        f"2 x 4 B x {rb} x {s.vocab_size:,}",
    )


def _add_scoring(plan: MemoryPlan, r: _Run) -> None:
    """No-grad forwards: PPO's old log-probs, reference log-probs and values (the actor's
    is the largest); GRPO's reference log-probs through TRL's fused head."""
    s = r.s
    if r.fsdp:
        plan.add(
            f"gathered {r.cname} units (scoring)",
            fsdp_gathered_bytes(s, r.compute, backward=False),
            ("scoring",),
            "root unit + 2 layers",
        )
    elif r.autocast and r.ppo:
        plan.add(
            f"actor {r.cname} copy (scoring)",
            compute_copy_bytes(s, r.compute),
            ("scoring",),
            "autocast's cached casts",
        )
    if r.fused:
        plan.add(
            "fused log-prob head (scoring)",
            fused_logprob_bytes(
                s, r.score_micro * (r.response + 1), r.compute, r.head_weight_bytes, False
            ),
            ("scoring",),
            "two fp32 buffers of one chunk of tokens x the vocabulary",
        )
    elif r.ppo:
        positions = r.response + 1 if r.layout.response_logits_only else r.seq
        plan.add(
            "logits (scoring)",
            scoring_logits_bytes(
                r.score_micro,
                r.prompt,
                r.response,
                s.vocab_size,
                r.compute,
                r.layout,
                r.temperature,
            ),
            ("scoring",),
            f"{r.score_micro} x {positions} positions x {s.vocab_size:,}",
        )
    else:
        plan.add(
            "one layer's forward (scoring)",
            forward_working_bytes(s, r.micro * r.seq, r.residual, r.compute),
            ("scoring",),
            f"{r.micro} x {r.seq} tokens",
        )


def _add_backward(plan: MemoryPlan, r: _Run) -> None:
    """A micro-batch's backward, at its moments: the start of the actor's (policy's)
    backward, where its loss's vocabulary-sized tensors peak; with checkpointing the
    recompute of its top layer; PPO's critic backward. Where the layout runs the critic's
    forward before the actor's backward, the critic's saved tensors are alive in all three."""
    s, c = r.s, r.compute
    start = "actor backward" if r.ppo else "backward"
    recompute = ("actor recompute" if r.ppo else "recompute") if r.ckpt else None
    saved_how = f"{r.micro} x {r.seq} tokens, " + (
        "each layer's input" if r.ckpt else f"{s.num_layers} layers"
    )
    models = [("actor", False), ("critic", True)] if r.ppo else [("policy", False)]
    for name, value_head in models:
        if value_head and r.layout.critic_before_actor_backward:
            saved_in = ("actor backward", "critic backward") + ((recompute,) if r.ckpt else ())
            own: tuple[str, ...] = ("critic backward",)
        elif value_head:
            saved_in = own = ("critic backward",)
        else:
            saved_in = (start,) + ((recompute,) if r.ckpt else ())
            own = (recompute,) if recompute else (start,)
        plan.add(
            f"{name} saved activations",
            model_activation_bytes(
                s,
                r.micro,
                r.seq,
                checkpointing=r.ckpt,
                residual_bytes=r.residual,
                compute_bytes=c,
            ),
            saved_in,
            saved_how,
        )
        if r.ckpt:
            if not value_head and not r.fsdp and r.accumulation == 1:
                plan.add(
                    f"{name} head gradient (fp32)",
                    4 * head_matmul_weights(s, value_head),
                    own,
                    "the first gradient its backward makes",
                )
            plan.add(
                f"{name} recomputed layer",
                recomputed_layer_bytes(s, r.micro, r.seq, r.residual, c),
                own,
                f"one layer, {r.micro} x {r.seq} tokens",
            )
        if r.fsdp:
            plan.add(
                f"{name} gathered {r.cname} units",
                fsdp_gathered_bytes(s, c, value_head=value_head),
                own if value_head else saved_in,
                "root unit and its gradient + 2 layers",
            )
        elif r.autocast and r.ckpt:
            # (a value head's cast is a few kilobytes; the fused head casts its own)
            if not value_head and not r.fused:
                plan.add(
                    f"{name} {r.cname} head weight (saved cast)",
                    c * head_matmul_weights(s, value_head),
                    saved_in,
                    "autocast's cast",
                )
            plan.add(
                f"{name} {r.cname} recomputed layer's weights",
                c * matmul_weights(s),
                own,
                "autocast's casts",
            )
        elif r.autocast:
            plan.add(
                f"{name} {r.cname} weight copy",
                compute_copy_bytes(s, c, value_head),
                saved_in,
                "autocast's casts, saved for backward",
            )
    if r.fused:
        plan.add(
            "actor fused log-prob head (backward)",
            fused_logprob_bytes(
                s, r.micro * (r.response + 1), c, r.head_weight_bytes, backward=True
            ),
            ("actor backward",),
            "one chunk's two fp32 buffers, the head's gradient",
        )
    elif r.ppo:
        brv = f"{r.micro} x {r.response} x {s.vocab_size:,}"
        copies = r.layout.logits_live + r.layout.logits_backward
        plan.add(
            "actor logits (loss and its backward)",
            ppo_logits_bytes(r.micro, r.response, s.vocab_size, r.layout),
            ("actor backward",),
            f"{copies} fp32 copies of {brv}",
        )
        if r.layout.critic_before_actor_backward:  # the scaled logits outlive the loss
            plan.add(
                "actor logits (kept)",
                4 * r.micro * r.response * s.vocab_size,
                ((recompute,) if recompute else ()) + ("critic backward",),
                f"1 fp32 copy of {brv}",
            )
    else:
        plan.add(
            "fused log-prob head (TRL)",
            fused_head_bytes(s, r.micro * r.response, c),
            ("backward",),
            "fp32 head-weight gradient + one tile",
        )


# -- printing ------------------------------------------------------------------------------


def render(plan: MemoryPlan, title: str = "") -> str:
    """The plan as ``clab plan`` prints it: parts, phase totals, peak and verdict."""
    unit = "per GPU" if plan.device == "GPU" else "per worker"
    lines = []
    if title:
        lines.append(title)
    lines.append(f"model     {plan.model}")
    lines.append("          " + "; ".join(f"{k} {v:,} parameters" for k, v in plan.params.items()))
    for i, line in enumerate(plan.setup):
        lines.append(("run       " if i == 0 else "          ") + line)
    lines.append("")
    width = max(len(p.name) for p in plan.parts)

    def alive(p: Part) -> str:
        phases = [ph for ph in plan.phases if ALWAYS in p.phases or ph in p.phases]
        if len(phases) == len(plan.phases):
            return "every phase"
        missing = [ph for ph in plan.phases if ph not in phases]
        if len(missing) < len(phases) and len(missing) <= 2:
            return "all but " + " and ".join(missing)
        return ", ".join(phases)

    where_width = max(len(alive(p)) for p in plan.parts)
    lines.append(f"{unit:<{width}}  {'GiB':>6}  {'alive in':<{where_width}}  how")
    for p in plan.parts:
        row = f"{p.name:<{width}}  {gib(p.bytes):>6}  {alive(p):<{where_width}}  {p.how}"
        lines.append(row.rstrip())
    lines.append("")
    totals = ", ".join(f"{ph} {gib(plan.phase_bytes(ph))}" for ph in plan.phases)
    lines.append(f"phases    {totals} GiB")
    peak = f"peak      {gib(plan.peak_bytes)} GiB ({plan.peak_phase})"
    if plan.device == "GPU":
        peak += f" + {gib(CUDA_CONTEXT_BYTES)} GiB CUDA context = {gib(plan.required_bytes)} GiB"
    lines.append(peak)
    lines.append(verdict(plan))
    for note in plan.notes:
        lines.append(f"note      {note}")
    return "\n".join(lines)


def verdict(plan: MemoryPlan) -> str:
    need = plan.required_bytes
    if plan.fits is None:
        return "verdict   unknown: the GPU's memory is not stated"
    have = plan.gpu_memory_bytes
    phase = plan.peak_phase
    top = sorted(
        (p for p in plan.parts if ALWAYS in p.phases or phase in p.phases),
        key=lambda p: -p.bytes,
    )[:3]
    largest = ", ".join(f"{p.name} {gib(p.bytes)}" for p in top)
    if not plan.fits:
        return (
            f"verdict   DOES NOT FIT: {gib(need)} GiB needed per GPU, {gib(have)} GiB there "
            f"({gib(need - have)} GiB over); largest at the peak: {largest}"
        )
    share = need / have
    if share > TIGHT_SHARE:
        return (
            f"verdict   fits, tightly: {gib(need)} of {gib(have)} GiB ({share:.0%}); the "
            "allocator's fragmentation may take the rest"
        )
    return f"verdict   fits: {gib(need)} of {gib(have)} GiB ({share:.0%})"


# -- from a spec file ----------------------------------------------------------------------


def plan_file(path: str, overrides: list[str] | tuple[str, ...] = ()) -> MemoryPlan:
    """Load a spec as ``clab run`` does (same ``--set`` overrides) and estimate it."""

    return estimate(validate_spec(path, read_spec_data(path, overrides)))
