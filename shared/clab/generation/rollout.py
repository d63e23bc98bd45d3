"""Rollouts: prompts in, response tokens and texts out.

Three engines, chosen by ``rollout.engine`` (training) or ``engine``
(evaluation):

- ``hf``: transformers generate with its dynamic KV cache (left padding).
  Simple and exact, but every decode step is a few hundred small kernel
  launches from Python: on an H100 it reaches a few percent of the memory
  bandwidth bound at batch 64.
- ``hf-static``: transformers generate with a :class:`StaticCache` that this
  module keeps for the whole run, on a copy of the policy in the compute
  dtype (:class:`StaticGenerator`). Prompts are left-padded to
  ``max_prompt_length`` and every call has exactly ``batch_size`` rows (the
  last chunk filled up with rows that stop at once), so every shape is fixed
  and the decode step (the model's forward with its mask building, one token a
  row) is compiled once with CUDA graphs and reused for every rollout,
  validation and evaluation call with those sizes. The copy's weights are
  refreshed in place from the policy before each call, so an optimizer step
  never causes a recompilation. The loop around it is ours, not transformers'
  generate: see :class:`StaticGenerator` for why.
- ``vllm``: a colocated vLLM engine (the optional ``gpu`` extra) whose
  weights are refreshed from the policy before each rollout.

``hf`` and ``hf-static`` give the same tokens from the same seed (where the
arithmetic is the same: fp32 on CPU; on GPU the bf16 copy and the padded
attention round differently), because the static engine draws its samples
with the same random calls on the same shapes as the dynamic one: see
:meth:`StaticGenerator.generate_ids`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StaticCache,
)

from clab.errors import ClabError
from clab.generation import attention
from clab.generation.fused import fuse_projections
from clab.models.loading import empty_copy

HF_ENGINES = ("hf", "hf-static")


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P), left-padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # (B, R), right-padded after the first EOS
    response_mask: torch.Tensor  # 1 up to and including the first EOS
    texts: list[str]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_len: int,
    device: torch.device | str,
    *,
    pad_to_max: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (to the longest prompt, or to ``max_len`` for fixed shapes), and
    truncate from the left: a prompt's end is where the answer starts."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    enc = tokenizer(
        prompts,
        return_tensors="pt",
        padding="max_length" if pad_to_max else True,
        truncation=True,
        max_length=max_len,
        add_special_tokens=False,
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    is_eos = response_ids == eos_id
    # tokens strictly before the first EOS, plus the EOS itself
    before = (is_eos.cumsum(dim=1) - is_eos.long()) == 0
    return before.long()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate uses them."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def sampling_config(
    tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float, greedy: bool
) -> GenerationConfig:
    """Every sampling setting, explicitly: a checkpoint's own generation_config.json
    (repetition penalty, top-k 50, top-p...) must not change what PPO samples, since
    PPO scores the samples as draws from softmax(logits / temperature)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=not greedy,
        temperature=1.0 if greedy else temperature,
        top_k=0 if not greedy else None,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


@torch.no_grad()
def hf_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_prompt_length: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    batch_size: int = 64,
    engine: str = "hf",
) -> Rollout:
    """Responses to ``prompts`` by transformers generate, ``batch_size`` rows a call.

    ``engine`` ``hf-static`` generates from this process's
    :class:`StaticGenerator` for the model's architecture and these sizes (built
    at the first call, then reused with the model's current weights); its copy
    computes in the autocast dtype when the call is made under autocast, as
    training and evaluation make it.
    """
    if engine == "hf-static":
        gen = static_generator(
            model,
            batch_size=batch_size,
            max_prompt_length=max_prompt_length,
            max_new_tokens=max_new_tokens,
        )
        gen.load_weights(model)
        return gen.generate(tokenizer, prompts, temperature=temperature, greedy=greedy)
    if engine != "hf":
        raise ValueError(f"engine {engine!r}: hf_generate runs {' or '.join(HF_ENGINES)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(
            tokenizer, prompts[start : start + batch_size], max_prompt_length, device
        )
        # eagerly, whatever was compiled: a policy whose layers are compiled for training
        # (ppo.compile_layers) would recompile each layer for its dynamic cache's state,
        # one guard a layer, up to dynamo's recompile limit, after which the training
        # passes through those layers would run eagerly too
        with torch.compiler.set_stance("force_eager"):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=sampling_config(tokenizer, max_new_tokens, temperature, greedy),
            )
        parts.append((ids, mask, out[:, ids.shape[1] :]))
    model.train(was_training)
    return _assemble(parts, tokenizer)


def _weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (tied ones once), gathered in full when sharded
    (FSDP2's DTensors: one parameter at a time, never the whole model twice)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out[name] = t.full_tensor() if isinstance(t, DTensor) else t
    return out


class StaticGenerator:
    """Decoding from one static KV cache with fixed shapes, compiled once per run.

    Owns a copy of the policy in the compute dtype (as veRL keeps a rollout
    engine beside its trainer): decoding from fp32 master weights under
    autocast would cast every weight at every decode step inside the compiled
    graph (about three times the memory traffic of the bf16 weights). The copy
    is refreshed in place by :meth:`load_weights` (parameters keep their
    storage, so the compiled graph and its CUDA graphs stay valid) and the KV
    cache is reset in place before each call. The copy attends with
    :mod:`clab.generation.attention` (grouped heads, each key/value head read
    once), not SDPA.

    The decode loop is ours rather than transformers' generate, which around
    its compiled forward runs its mask building, grows ``input_ids`` and the
    mask by concatenation, applies its logits processors and reads a stop flag
    back from the GPU at every token: about 2 ms a token on an H100 at batch 64
    (transformers' static generate 8.45 ms a token, this loop 6.6 ms, of which
    the compiled forward 5.9). Here every input has one shape for the whole run
    (the mask spans the whole cache from the start), the forward with its mask
    building and its token choice is compiled once with CUDA graphs
    (``torch.compile`` ``reduce-overhead``, as transformers compiles it; one graph
    for the prefill, one for the decode step), what stays eager is drawing the
    sampling noise and writing the token (a few small kernels, no read back to the
    host), and the stop flag is read every ``check_every`` tokens (16 on a GPU, so
    a call may compute up to 15 steps past its last EOS; their tokens are padding
    and are cut off).

    On CPU the same loop runs uncompiled (inductor's CPU compile takes minutes
    and CUDA graphs do not exist there) with the flag read at every token,
    which is how the CPU tests hold it to the dynamic engine's tokens.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        batch_size: int,
        max_prompt_length: int,
        max_new_tokens: int,
        dtype: torch.dtype | None = None,
        compile: bool = True,
        adopt: bool = False,
        fuse: bool = True,
        compile_mode: str | dict = "reduce-overhead",
        attention_kernel: str = "matmul",
    ):
        """``adopt``: generate from ``model`` itself instead of a copy (see
        :func:`static_generator`). ``fuse``: one product for q/k/v and one for
        gate/up (:mod:`clab.generation.fused`). ``compile_mode``: torch.compile's
        (``reduce-overhead``: CUDA graphs; ``max-autotune``: also tuned kernels for
        the matrix products, with minutes more compilation; a dict: inductor's options
        themselves, e.g. ``{"triton.cudagraphs": True, "coordinate_descent_tuning":
        True}``, reduce-overhead's CUDA graphs with tuned block sizes). ``attention_kernel``:
        the grouped attention as two products and a softmax (``matmul``) or as one
        SDPA call (``sdpa``; :mod:`clab.generation.attention`)."""
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.max_new_tokens = max_new_tokens
        self.device = _device_of(model)
        self.compile = compile and self.device.type == "cuda"
        self.check_every = 16 if self.device.type == "cuda" else 1
        self.dtype = dtype or next(model.parameters()).dtype
        # adopt: the caller's frozen copy, which it refreshes in place itself
        copy = model if adopt else empty_copy(model, self.dtype, self.device)
        # a policy trained with gradient checkpointing says use_cache: false, which
        # generate would follow: the cache is the point here
        copy.config.use_cache = copy.generation_config.use_cache = True
        kernels = {"matmul": attention.NAME, "sdpa": attention.SDPA_NAME}
        if attention_kernel not in kernels:
            raise ValueError(
                f"attention_kernel: {attention_kernel!r}, not one of {sorted(kernels)}"
            )
        copy.set_attn_implementation(kernels[attention_kernel])  # see generation/attention.py
        self.fused = fuse_projections(copy) if fuse else 0
        self.model = copy.eval().requires_grad_(False)
        self._targets = {**dict(copy.named_parameters()), **dict(copy.named_buffers())}
        self.load_weights(model)
        self.cache = StaticCache(
            config=copy.config, max_cache_len=max_prompt_length + max_new_tokens
        )
        # one compiled function, two static graphs: the prefill's shapes and the decode
        # step's (dynamic=False: the second shape must not turn the first graph dynamic)
        how = (
            {"options": compile_mode} if isinstance(compile_mode, dict) else {"mode": compile_mode}
        )
        self._step = (
            torch.compile(self._next_token, fullgraph=True, dynamic=False, **how)
            if self.compile
            else self._next_token
        )
        # multinomial's noise, drawn in place each token (see _next_token)
        self._noise = torch.ones(
            batch_size, copy.config.vocab_size, dtype=torch.float32, device=self.device
        )
        if self.compile:  # the graphs read it where it lies, no copy a token
            torch._dynamo.mark_static_address(self._noise)

    @torch.no_grad()
    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s current weights into the rollout copy, in place (nothing
        for an adopted model: it is the copy)."""
        if model is self.model:
            return
        src = _weights_of(model)
        if src.keys() != self._targets.keys():
            missing = sorted(self._targets.keys() ^ src.keys())[:3]
            raise ValueError(f"the model's weights do not match the rollout copy's: {missing}")
        names = list(self._targets)
        torch._foreach_copy_([self._targets[n] for n in names], [src[n] for n in names])

    def _last_logits(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """fp32 logits at each row's last position, the cache extended by ``ids``;
        ``mask`` spans the whole cache and marks the slots written so far and now."""
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _next_token(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        noise: torch.Tensor,
        temperature: float,
        greedy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's next token, and whether all logits were finite.

        Sampling is ``torch.multinomial``'s own algorithm for one sample, which draws
        ``q ~ Exp(1)`` over the probabilities' shape from the generator and takes
        ``argmax(p / q)`` (ATen's ``multinomial``, the Gumbel-max trick): with ``noise``
        drawn by ``exponential_`` from the same generator on the same shape, the same
        tokens come from the same seed. Unlike ``multinomial`` it reads nothing back
        to the host (its checks of the probabilities cost two syncs a token, which kept
        the CPU from queueing the next steps) and it compiles into the step's graph."""
        logits = self._last_logits(ids, positions, mask)
        if greedy:
            chosen = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            chosen = (probs / noise).argmax(dim=-1)
        return chosen, torch.isfinite(logits).all()

    @torch.no_grad()
    def generate_ids(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        n_real: int,
        tokenizer: PreTrainedTokenizerBase,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> torch.Tensor:
        """Response ids of the first ``n_real`` rows of a (batch_size, max_prompt_length)
        left-padded chunk, padded after each row's EOS.

        The token choice is transformers' sampling mode applied to the real rows
        alone: the softmax of the fp32 logits over the temperature, then
        ``torch.multinomial``'s algorithm (:meth:`_next_token`) with its noise drawn
        for the real rows' shape, so the random stream is consumed as the dynamic
        engine consumes it for a batch of those rows; the filler rows start finished
        and never draw. The prefill runs through the compiled step too (its own
        graph); the very first call's prefill runs eagerly first, to create the cache,
        then compiled, so that the first call builds both graphs."""
        if ids.shape != (self.batch_size, self.max_prompt_length):
            shape = (self.batch_size, self.max_prompt_length)
            raise ValueError(f"a static chunk is {shape}, not {tuple(ids.shape)}")
        B, P, N = self.batch_size, self.max_prompt_length, self.max_new_tokens
        pad = tokenizer.pad_token_id
        eos = _first(tokenizer.eos_token_id)
        # the whole cache's length from the start (one shape for the compiled step),
        # each slot switched on as its token is written, as generate grows its mask
        full = torch.zeros(B, P + N, dtype=mask.dtype, device=self.device)
        full[:, :P] = mask
        positions = position_ids(mask)
        out = torch.full((B, N), pad, dtype=torch.long, device=self.device)
        finished = torch.zeros(B, dtype=torch.bool, device=self.device)
        finished[n_real:] = True
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        # a cache not yet created is created by an eager prefill: creating it inside
        # the graph would break it
        first = not _cache_ready(self.cache)
        compiled = self._step != self._next_token  # bound methods: `==`, never `is`
        self.cache.reset()
        with torch.autocast(self.device.type, enabled=False):
            next_pos = positions[:, -1:] + 1
            for t in range(N):
                if not greedy:
                    self._noise[:n_real].exponential_()
                if self.compile:
                    torch.compiler.cudagraph_mark_step_begin()
                if t == 0:
                    step_in = (ids, positions, full, self._noise, temperature, greedy)
                    if first and compiled:
                        # the eager prefill creates the cache; then the prefill's graph is
                        # built now, not in the next call (a run's second step, a
                        # benchmark's first timed one, would time a compilation): the same
                        # prefill again over the cache reset, the same token (the noise is
                        # drawn outside the step)
                        self._next_token(*step_in)
                        self.cache.reset()
                    chosen, ok = self._step(*step_in)
                else:
                    full[:, P + t - 1] = 1
                    step_in = (out[:, t - 1 : t], next_pos + (t - 1), full, self._noise)
                    chosen, ok = self._step(*step_in, temperature, greedy)
                token = torch.where(finished, pad, chosen)
                out[:, t] = token
                finite &= ok
                finished |= token == eos
                if (t + 1) % self.check_every == 0 and bool(finished.all()):
                    break
        if not bool(finite):
            raise RuntimeError(
                "the policy's logits were not finite (inf or nan) while generating: "
                "its weights have diverged"
            )
        # as generate returns them: as many columns as the longest response (its EOS
        # included), which also cuts the steps computed past the last EOS
        resp = out[:n_real]
        return resp[:, : int(response_mask(resp, eos).sum(dim=1).max())]

    def generate(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        *,
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> Rollout:
        """Chunks of exactly ``batch_size`` prompts; the last one filled up with
        copies of its first prompt, whose responses are dropped."""
        parts = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            n = len(chunk)
            ids, mask = encode_prompts(
                tokenizer,
                chunk + chunk[:1] * (self.batch_size - n),
                self.max_prompt_length,
                self.device,
                pad_to_max=True,
            )
            resp = self.generate_ids(
                ids, mask, n, tokenizer, temperature=temperature, greedy=greedy
            )
            parts.append((ids[:n], mask[:n], resp))
        return _assemble(parts, tokenizer)


def _cache_ready(cache: StaticCache) -> bool:
    """Whether every layer of ``cache`` holds its tensors (transformers creates them at
    the first forward)."""
    return all(layer.is_initialized for layer in cache.layers)


def _first(token_id: int | list[int]) -> int:
    return token_id[0] if isinstance(token_id, list) else token_id


def _device_of(model: torch.nn.Module) -> torch.device:
    from torch.distributed.tensor import DTensor

    p = next(model.parameters())
    if isinstance(p, DTensor):  # FSDP2: the local shard's device
        return p.to_local().device
    return p.device


def _architecture(config) -> str:
    """What shapes a model (not where it was loaded from): checkpoints of one run
    share a rollout copy and its compiled graph."""
    d = config.to_dict()
    for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)


# One static generator per process: each holds a model copy and a KV cache, and
# the compiled graph is the expensive part to rebuild.
_STATIC: dict[tuple, StaticGenerator] = {}


def static_generator(
    model: PreTrainedModel, *, batch_size: int, max_prompt_length: int, max_new_tokens: int
) -> StaticGenerator:
    """This process's static generator for ``model``'s architecture and these sizes,
    in the current autocast dtype (else the model's own): built at the first call,
    reused after (a different key replaces it and frees its memory).

    A model that is already such a copy (unsharded, frozen, in that dtype: FSDP's
    rollout copy, which its trainer gathers into in place) is generated from as it
    is, not copied again; its generator is that model's alone."""
    device = _device_of(model)
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    else:
        dtype = next(model.parameters()).dtype
    adopt = _is_rollout_copy(model, dtype)
    key = (
        type(model).__qualname__,
        _architecture(model.config),
        str(device),
        dtype,
        batch_size,
        max_prompt_length,
        max_new_tokens,
        id(model) if adopt else None,  # never refresh an adopted model from another
    )
    if key not in _STATIC:
        _STATIC.clear()
        _STATIC[key] = StaticGenerator(
            model,
            batch_size=batch_size,
            max_prompt_length=max_prompt_length,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            adopt=adopt,
        )
    return _STATIC[key]


def _is_rollout_copy(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    from torch.distributed.tensor import DTensor

    return all(
        not p.requires_grad and not isinstance(p, DTensor) and p.dtype == dtype
        for p in model.parameters()
    )


def _assemble(parts, tokenizer: PreTrainedTokenizerBase) -> Rollout:
    pad = tokenizer.pad_token_id
    P = max(p[0].shape[1] for p in parts)
    R = max(max(p[2].shape[1] for p in parts), 1)

    def left(x, width, value):
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    def right(x, width, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    prompt_ids = torch.cat([left(p[0], P, pad) for p in parts])
    prompt_mask = torch.cat([left(p[1], P, 0) for p in parts])
    # no column of padding alone (static chunks are padded to max_prompt_length):
    # training would compute every one of them
    first = int(prompt_mask.any(dim=0).long().argmax()) if prompt_mask.any() else P - 1
    prompt_ids, prompt_mask = prompt_ids[:, first:], prompt_mask[:, first:]
    response_ids = torch.cat([right(p[2], R, pad) for p in parts])
    rmask = response_mask(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(rmask.bool(), response_ids, torch.full_like(response_ids, pad))
    texts = tokenizer.batch_decode(
        response_ids * rmask + pad * (1 - rmask), skip_special_tokens=True
    )
    return Rollout(prompt_ids, prompt_mask, response_ids, rmask, texts)


def require_vllm(field: str = "rollout.engine") -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ClabError(
            f"{field}: vllm is not installed here; install the GPU extra "
            f"(uv sync --extra gpu, as the Docker image does) or set {field}: hf"
        ) from None


class VLLMRollout:
    """Rollouts from a colocated vLLM engine, through TRL's vLLM machinery.

    TRL's ``VLLMGeneration`` owns the engine, tensor parallelism and the weight
    refresh from the policy; this adapter gives its output our :class:`Rollout`
    shape, so PPO treats both engines alike.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        tensor_parallel_size: int,
        gpu_memory_utilization: float,
        max_model_length: int,
        max_new_tokens: int,
        temperature: float,
    ):
        require_vllm()
        from accelerate import Accelerator
        from trl.generation.vllm_generation import VLLMGeneration

        self.tokenizer = tokenizer
        self.gen = VLLMGeneration(
            model,
            Accelerator(),
            tokenizer,
            mode="colocate",
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_length=max_model_length,
            temperature=temperature,
            max_completion_length=max_new_tokens,
        )

    def generate(self, prompts: list[str], max_prompt_length: int) -> Rollout:
        device = next(self.gen.model.parameters()).device
        ids, mask = encode_prompts(self.tokenizer, prompts, max_prompt_length, device)
        lists = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        self.gen.sync_weights()
        _, completions, _, _ = self.gen.generate(lists, None, 1)
        parts = [
            (
                ids,
                mask,
                torch.nn.utils.rnn.pad_sequence(
                    [torch.tensor(c, dtype=torch.long) for c in completions],
                    batch_first=True,
                    padding_value=self.tokenizer.pad_token_id,
                ).to(device),
            )
        ]
        return _assemble(parts, self.tokenizer)
