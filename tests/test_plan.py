"""clab plan: the memory model's formulas against hand-computed figures, against memory
measured on the CPU (torch's MemTracker) and on GPUs (docs/benchmarks.md), and the CLI."""

import json

import pytest
import torch
import yaml
from torch.distributed._tools.mem_tracker import MemTracker

from clab.cli import main
from clab.errors import ClabError
from clab.models.shape import (
    PUBLISHED_CONFIGS,
    causal_lm_params,
    resolve_shape,
    shape_from_config,
    tiny_shape,
    value_model_params,
)
from clab.training.countdown_rl_spec import CountdownRLSpec
from clab.training.memory_plan import (
    CUDA_CONTEXT_BYTES,
    PPO_FUSED,
    PPO_SEPARATE,
    GiB,
    compute_copy_bytes,
    estimate,
    kv_cache_bytes,
    layer_activation_bytes,
    model_activation_bytes,
    plan_file,
    ppo_logits_bytes,
    scoring_logits_bytes,
    training_state_bytes,
)
from conftest import REPO
from rl_spec import TINY

SPEC_15B = REPO / "services/curriculum-trainer-1.5b.yaml"
SPEC_3B = REPO / "services/curriculum-trainer-3b.yaml"
QWEN15 = shape_from_config(PUBLISHED_CONFIGS["Qwen/Qwen2.5-1.5B"])


# -- parameter counts -------------------------------------------------------------------


def test_qwen25_15b_parameter_count_by_hand():
    embeddings = 151_936 * 1_536  # tied: the head adds nothing
    attention = (1_536 * 1_536 + 1_536) + 2 * (1_536 * 256 + 256) + 1_536 * 1_536  # q k v o
    mlp = 3 * 1_536 * 8_960
    layer = attention + mlp + 2 * 1_536  # two RMS norms
    assert layer == 46_797_824
    assert causal_lm_params(QWEN15) == embeddings + 28 * layer + 1_536 == 1_543_714_304
    # the critic: no output head, a value head of hidden + 1
    assert value_model_params(QWEN15) == 1_543_714_304 + 1_536 + 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Qwen/Qwen2.5-0.5B", 494_032_768),
        ("Qwen/Qwen2.5-3B", 3_085_938_688),
        ("Qwen/Qwen2.5-7B", 7_615_616_512),  # untied: 2 x 152,064 x 3,584 of embeddings
    ],
)
def test_published_parameter_counts(name, expected):
    shape = shape_from_config(PUBLISHED_CONFIGS[name])
    assert causal_lm_params(shape) == expected
    # the table states every value its models' config.json files state
    assert shape == shape_from_config(_config(PUBLISHED_CONFIGS[name]))


def _config(config: dict, **extra):
    from transformers import AutoConfig

    cfg = dict(config)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg, **extra)


def _meta_counts(config: dict) -> tuple[int, int]:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(_config(config))
        critic = AutoModelForTokenClassification.from_config(_config(config, num_labels=1))
    return sum(p.numel() for p in lm.parameters()), sum(p.numel() for p in critic.parameters())


SMALL = dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=3)


@pytest.mark.parametrize(
    "config",
    [
        *PUBLISHED_CONFIGS.values(),
        dict(model_type="llama", **SMALL, num_attention_heads=8, num_key_value_heads=2),
        dict(
            model_type="llama",
            **SMALL,
            num_attention_heads=4,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
        dict(model_type="qwen3", **SMALL, num_attention_heads=4, head_dim=32),
        dict(model_type="mistral", **SMALL, num_attention_heads=4, num_key_value_heads=1),
    ],
    ids=lambda c: f"{c['model_type']}-{c['hidden_size']}",
)
def test_counts_equal_transformers_models_built_on_the_meta_device(config):
    lm, critic = _meta_counts(config)
    shape = shape_from_config(_config(config))  # as read from a folder: defaults filled in
    assert causal_lm_params(shape) == lm
    assert value_model_params(shape) == critic


# -- where the config comes from ----------------------------------------------------------


def test_config_read_from_a_local_model_folder(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(
        **{k: v for k, v in PUBLISHED_CONFIGS["Qwen/Qwen2.5-3B"].items() if k != "model_type"}
    ).save_pretrained(tmp_path)
    shape, source = resolve_shape(str(tmp_path))
    assert causal_lm_params(shape) == 3_085_938_688
    assert source == str(tmp_path / "config.json")


def test_service_mounts_and_hub_ids_resolve_offline_from_the_table():
    for name in ("/models/qwen1.5b", "Qwen/Qwen2.5-1.5B-Instruct", "/somewhere/Qwen2.5-1.5B"):
        shape, source = resolve_shape(name)
        assert shape == QWEN15 and "built-in table" in source


def test_unknown_models_name_the_field(tmp_path):
    with pytest.raises(ClabError, match=r"model.name_or_path: no model config for '/nowhere/x'"):
        resolve_shape("/nowhere/x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ClabError, match=r"model.name_or_path: .*config.json"):
        resolve_shape(str(tmp_path))


# -- formulas against hand-computed figures ------------------------------------------------


def test_training_state_bytes_by_hand():
    p = 1_543_714_304
    ddp = training_state_bytes(p, "ddp", 8)
    assert ddp == {
        "weights": 6_174_857_216,  # fp32 master weights: 4 B
        "gradients": 6_174_857_216,  # fp32: 4 B
        "optimizer": 12_349_714_432,  # AdamW m and v: 8 B
        "ddp_buckets": 6_174_857_216,  # DDP's gradient buckets: 4 B
    }
    assert training_state_bytes(p, "fsdp", 8) == {
        "weights": 771_857_152,
        "gradients": 771_857_152,
        "optimizer": 1_543_714_304,
    }
    assert "ddp_buckets" not in training_state_bytes(p, "ddp", 1)  # no DDP on one worker


def test_activation_kv_and_logits_formulas_by_hand():
    # one Qwen2.5-1.5B layer, per token, autocast over fp32 weights (fp32 residual stream):
    # norms 2 x (4 + 4) x 1536, casts 5 x 2 x 1536, attention 4 x 2 x 1536 + 4 x 12 heads,
    # MLP 4 x 2 x 8960
    assert layer_activation_bytes(QWEN15, 4, 2) == 24_576 + 15_360 + 12_336 + 71_680
    # under fsdp's bf16 params: norms 2 x (4 + 2) x 1536, norm outputs 2 x 2 x 1536
    assert layer_activation_bytes(QWEN15, 2, 2) == 18_432 + 6_144 + 12_336 + 71_680
    # checkpointing keeps each layer's fp32 input: 28 x 8 x 1280 x 1536 x 4, plus rotary
    # tables (2 x 128 x 4), the final norm (8 x 1536) and the head's bf16 input (2 x 1536)
    tokens = 8 * 1280
    assert model_activation_bytes(
        QWEN15, 8, 1280, checkpointing=True, residual_bytes=4, compute_bytes=2
    ) == 28 * tokens * 1536 * 4 + tokens * (2 * 128 * 4 + 8 * 1536 + 2 * 1536)
    # KV cache: 2 x 28 layers x 2 KV heads x 128 x 2 B per token, 64 sequences x 384
    assert kv_cache_bytes(QWEN15, 64, 384, 2) == 28_672 * 64 * 384 == 704_643_072
    # PPO's loss: 7 fp32 copies of micro x response x vocabulary (the earlier trainer),
    # 5 with one log-softmax for log-probs and entropy (issue 14's)
    assert ppo_logits_bytes(8, 1024, 151_936, PPO_SEPARATE) == 7 * 4 * 8 * 1024 * 151_936
    assert ppo_logits_bytes(8, 1024, 151_936, PPO_FUSED) == 5 * 4 * 8 * 1024 * 151_936
    # scoring: whole-sequence bf16 logits + 2 fp32 response copies (earlier); response
    # logits only: the fp32 copy and its log-softmax (8 B) outweigh bf16 + copy (2 + 4 B),
    # unless a temperature adds a scaled copy (2 + 8 B)
    assert scoring_logits_bytes(8, 256, 1024, 151_936, 2, PPO_SEPARATE) == 8 * 151_936 * (
        2 * 1280 + 8 * 1024
    )
    assert scoring_logits_bytes(8, 256, 1024, 151_936, 2, PPO_FUSED) == 8 * 151_936 * 8 * 1024
    assert scoring_logits_bytes(8, 256, 1024, 151_936, 2, PPO_FUSED, 0.7) == 8 * 151_936 * (
        2 * 1025 + 8 * 1024
    )
    # autocast's bf16 copy: every layer's matmul weights and the (tied) head
    layer_matmuls = 2 * 1536 * 1536 + 2 * 1536 * 256 + 3 * 1536 * 8960
    assert compute_copy_bytes(QWEN15, 2) == 2 * (28 * layer_matmuls + 151_936 * 1536)


# -- measured on the CPU ----------------------------------------------------------------


class PeakTracker(MemTracker):
    """torch's MemTracker without its per-module statistics, which refuse a module called
    twice (generate calls the model once per token): only the totals are needed."""

    def _pre_fw_hook(self, *args):
        pass

    def _post_fw_hook(self, *args):
        pass

    def _pre_bw_hook(self, *args):
        pass

    def _post_bw_hook(self, *args):
        pass

    def peak(self) -> dict:
        return self.get_tracker_snapshot("peak")[torch.device("cpu")]


def _tiny_qwen(shape, **extra):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

    cfg = dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        tie_word_embeddings=True,
        **extra,
    )
    return Qwen2ForCausalLM(Qwen2Config(**cfg)), Qwen2ForTokenClassification(
        Qwen2Config(**cfg, num_labels=1)
    )


def test_weights_gradients_and_adamw_measured_exactly():
    shape = tiny_shape(64, 2, 512)
    torch.manual_seed(0)
    model, _ = _tiny_qwen(shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        model(input_ids=torch.randint(0, 512, (2, 16))).logits.float().mean().backward()
        opt.step()
        now = tracker.get_tracker_snapshot("current")[torch.device("cpu")]
    n = causal_lm_params(shape)
    state = training_state_bytes(n, "ddp", 1)
    by_kind = {str(k.value) if hasattr(k, "value") else k: v for k, v in now.items()}
    assert by_kind["Parameter"] == state["weights"] == 4 * n
    assert by_kind["Gradient"] == state["gradients"]
    # AdamW's moments, plus one fp32 step counter per tensor
    tensors = len(list(model.parameters()))
    assert by_kind["Optstate"] == state["optimizer"] + 4 * tensors


@pytest.mark.parametrize("checkpointing", [False, True])
def test_saved_activations_measured(checkpointing):
    """What one forward under CPU bf16 autocast saves for backward (every stored tensor
    that is not a parameter or an index), against the formula."""
    shape = tiny_shape(128, 2, 2048)
    torch.manual_seed(0)
    model, _ = _tiny_qwen(shape)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    b, s = 4, 96
    ids = torch.randint(0, shape.vocab_size, (b, s))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding: the masked attention path, as in PPO
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and t.is_floating_point():
            saved[st.data_ptr()] = st.nbytes()
        return t

    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model(input_ids=ids, attention_mask=mask, position_ids=positions)
    acts = model_activation_bytes(
        shape, b, s, checkpointing=checkpointing, residual_bytes=4, compute_bytes=2
    )
    head = 2 * shape.vocab_size * shape.hidden_size  # the head's bf16 weight cast
    casts = head if checkpointing else compute_copy_bytes(shape, 2)
    if checkpointing:
        # the checkpoint keeps the rotary tables as a tuple argument: alive, but not
        # through the saved-tensor hooks
        acts -= 2 * shape.head_dim * 4 * b * s
    assert sum(saved.values()) == pytest.approx(acts + casts, rel=0.01)


def _measured_ppo_step(
    checkpointing,
    fused=False,
    vocab=4096,
    response=8,
    score_micro=None,
    hidden=128,
    measure_rollout=True,
):
    """The real PPOTrainer step (scoring, actor and critic micro-batches, AdamW) under
    CPU bf16 autocast over fp32 weights, as on a GPU: the rollout's and the rest's
    measured peaks, and the plan of the same run. ``measure_rollout=False``: the rollout
    is not measured (None), and the measured step reuses the first step's."""
    from clab.data.countdown.prompts import render_prompt
    from clab.data.countdown.reading import Problem
    from clab.models.tiny import train_tokenizer
    from clab.rewards.countdown import Reason, RewardResult
    from clab.training.ppo import PPOConfig, PPOTrainer

    layers, batch = 2, 4
    texts = [render_prompt([i % 97 + 1, 7, 13], i + 20, ["+", "-"]) for i in range(40)]
    tok = train_tokenizer(texts, 512)
    size, decode = len(tok), tok.batch_decode
    tok.batch_decode = lambda ids, **kw: decode((ids % size).tolist(), **kw)
    prompt = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts[:batch])
    shape = tiny_shape(hidden, layers, vocab)
    torch.manual_seed(0)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    actor, critic = _tiny_qwen(shape, **ids)
    ref, _ = _tiny_qwen(shape, **ids)
    ref = ref.to(torch.bfloat16)
    if checkpointing:
        actor.gradient_checkpointing_enable()
        critic.gradient_checkpointing_enable()
    cfg = PPOConfig(
        mini_batch_size=batch // 2,
        micro_batch_size=batch // 2,
        score_micro_batch_size=score_micro,
        max_prompt_length=prompt,
        max_response_length=response,
        compute_dtype="bfloat16",
        fused_logprobs=fused,
    )
    trainer = PPOTrainer(
        actor,
        critic,
        ref,
        tok,
        cfg,
        lambda c, p: [RewardResult(0.1, False, Reason.WRONG_VALUE) for _ in c],
    )
    problems = [Problem(t, 0, [], [], None) for t in texts[:batch]]
    generate, first = trainer._rollout, []
    trainer._rollout = lambda prompts: first.append(generate(prompts)) or first[-1]
    trainer.step(problems)  # gradients and AdamW state exist from here on
    models = (actor, critic, ref, trainer.actor_opt, trainer.critic_opt)
    if measure_rollout:
        rollout_tracker = PeakTracker()
        rollout_tracker.track_external(*models)
        with rollout_tracker:
            ro = generate([p.prompt for p in problems])
        rollout_peak = rollout_tracker.peak()["Total"]
    else:
        (ro,), rollout_peak = first, None
    assert ro.response_ids.shape[1] == response  # a random model never stops early
    trainer._rollout = lambda prompts: ro  # the step below measures the rest
    tracker = PeakTracker()
    tracker.track_external(*models)
    with tracker:
        trainer.step(problems)

    spec = CountdownRLSpec.model_validate(
        {
            **TINY,
            "model": dict(
                preset="tiny",
                hidden_size=hidden,
                layers=layers,
                vocab_size=vocab,
                gradient_checkpointing=checkpointing,
            ),
            "rollout": dict(max_prompt_length=prompt, max_response_length=response),
            "batch": dict(train=batch, mini=batch // 2, micro=batch // 2, score_micro=score_micro),
            "resources": dict(use_gpu=True),
            "ppo": dict(fused_logprobs=fused),
        }
    )
    return rollout_peak, tracker.peak()["Total"], estimate(spec)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_ppo_step_peak_measured(checkpointing):
    rollout, rest, plan = _measured_ppo_step(checkpointing)
    assert plan.phase_bytes("rollout") == pytest.approx(rollout, rel=0.1)
    assert max(plan.phase_bytes(p) for p in plan.phases if p != "rollout") == pytest.approx(
        rest, rel=0.1
    )


@pytest.mark.parametrize("chunk_mib", [256, 16])
def test_fused_head_step_peak_measured(chunk_mib, monkeypatch):
    """ppo.fused_logprobs at a shape where the logits dominate (vocabulary 16,384 over a
    64-wide model, 256 response tokens): the plan follows the measured peak, chunked in
    one piece or in several, scoring in single sequences so that the actor's backward is
    the peak. The plain path at the same shape needs far more, in the plan as measured.
    (The head is 69% of the fused peak here, 83% of the plain one: a wrong head formula
    shows; the rollout is not measured, only the rest.)"""
    import clab.training.fused_logprobs as fused_module
    import clab.training.memory_plan as plan_module

    for module in (fused_module, plan_module):
        monkeypatch.setattr(module, "CHUNK_BYTES", chunk_mib << 20)
    shape = dict(vocab=16384, hidden=64, response=256, score_micro=1, measure_rollout=False)
    _, rest, plan = _measured_ppo_step(True, fused=True, **shape)
    assert plan.peak_bytes == pytest.approx(rest, rel=0.05)
    assert plan.part("actor fused log-prob head (backward)")
    if chunk_mib == 256:  # one chunk: the backward is the peak; the plain path's logits
        assert plan.peak_phase == "actor backward"
        _, plain, plain_plan = _measured_ppo_step(True, **shape)
        assert plain > 1.5 * rest
        assert plain_plan.peak_bytes == pytest.approx(plain, rel=0.05)


# -- measured on GPUs (docs/benchmarks.md: bench_gpu_ppo.py, one GPU) ---------------------


def _bench_spec(response: int) -> CountdownRLSpec:
    """bench_gpu_ppo.py's setting: Qwen2.5-1.5B's shape, 64 prompts of 134 tokens, one GPU,
    mini-batch 32, micro-batch 8, checkpointing, bf16 reference, HF generate."""
    return CountdownRLSpec.model_validate(
        {
            **TINY,
            "model": dict(name_or_path="Qwen/Qwen2.5-1.5B", gradient_checkpointing=True),
            "rollout": dict(max_prompt_length=134, max_response_length=response),
            "batch": dict(train=64, mini=32, micro=8),
            "resources": dict(use_gpu=True),
        }
    )


def test_reproduces_the_peak_measured_on_an_h100():
    """fp32 weights under bf16 autocast, 128-token responses: 61.1 GiB measured, while the
    benchmark also held an fp32 copy of the actor (4 B x P) to count changed weights."""
    plan = estimate(_bench_spec(128), layout=PPO_SEPARATE)  # the trainer measured then
    measured = 61.1 * GiB - 4 * plan.params["actor"]
    assert plan.peak_bytes == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize(
    ("response", "clone", "measured_gib"),
    [(128, True, 33.3), (256, False, 34.4)],  # H100 (with the clone), H200 (before it)
)
def test_reproduces_the_peaks_measured_with_bf16_weights(response, clone, measured_gib):
    """The old path (bf16 weights stepped directly: 2 + 2 + 4 B per parameter, no autocast,
    bf16 residual stream), from the same formulas: the actor's backward is the peak."""
    actor, critic = causal_lm_params(QWEN15), value_model_params(QWEN15)
    state = 8 * (actor + critic) + 2 * actor + (2 * actor if clone else 0)
    saved = model_activation_bytes(  # each of actor and critic: checkpoints
        QWEN15, 8, 134 + response, checkpointing=True, residual_bytes=2, compute_bytes=2
    )
    peak = state + 2 * saved + ppo_logits_bytes(8, response, QWEN15.vocab_size, PPO_SEPARATE)
    assert peak == pytest.approx(measured_gib * GiB, rel=0.03)


# -- the plan and its verdict -----------------------------------------------------------


def test_service_plans_under_ddp_and_fsdp():
    # the service trains under fsdp with the fused head, micro-batches of 4 and static HF
    # rollouts; first as it was: ddp, the logits path, micro-batches of 8, vLLM over 2 GPUs
    vllm_tp2 = [
        "rollout.engine=vllm",
        "rollout.tensor_parallel_size=2",
        "batch.micro=8",
        "ppo.fused_logprobs=false",
    ]
    ddp = plan_file(str(SPEC_15B), ["resources.strategy=ddp", *vllm_tp2])
    assert ddp.part("actor AdamW moments (fp32)").bytes == 12_349_714_432
    assert ddp.part("actor DDP gradient buckets").bytes == 6_174_857_216
    assert ddp.part("vLLM engine (weights + KV cache)").bytes == int(0.4 * 24 * GiB)
    assert ddp.peak_phase == "actor backward" and ddp.fits is False
    fsdp = plan_file(str(SPEC_15B), vllm_tp2)
    assert fsdp.part("actor AdamW moments (fp32)").bytes == 12_349_714_432 // 8
    assert not any("DDP" in p.name for p in fsdp.parts)
    vllm = int(0.4 * 24 * GiB)
    actor, critic = ddp.params["actor"], ddp.params["critic"]
    # during a vLLM rollout: ddp holds 16 B + 4 B of buckets per trained parameter and
    # the bf16 reference; fsdp a 1/8 share of the 16 B and of the reference
    assert ddp.phase_bytes("rollout") - vllm == 20 * (actor + critic) + 2 * actor
    # fsdp: a 1/8 share of the 16 B and of the reference, and the full bf16 copy of the
    # policy that rollouts generate from
    assert fsdp.phase_bytes("rollout") - vllm == pytest.approx(
        (16 * (actor + critic) + 2 * actor) / 8 + 2 * actor
    )
    # the actor's loss over 8 x 1024 x 151,936 fp32 logits (4.6 GiB a copy, 5 or 7 copies
    # as the trainer computes it) is what does not fit in 24 GiB
    assert fsdp.fits is False
    assert fsdp.part("actor logits (loss and its backward)").bytes > 20 * GiB
    # HF rollouts instead of vLLM's 0.4 of the GPU, and micro-batches of 2: it fits
    hf = ["rollout.engine=hf", "rollout.tensor_parallel_size=1", "ppo.fused_logprobs=false"]
    small = plan_file(str(SPEC_15B), [*hf, "batch.micro=2"])
    assert small.fits is True and small.required_bytes == small.peak_bytes + CUDA_CONTEXT_BYTES
    # as shipped, micro-batches of 4 through the fused head: no logits tensor, about
    # 13.5 GiB; the logits path at micro 4 would need 10 GiB more, at the edge of 24
    shipped = plan_file(str(SPEC_15B))
    assert shipped.fits is True and shipped.required_bytes < 14 * GiB
    assert not any(p.name.startswith(("logits", "actor logits")) for p in shipped.parts)
    logits = plan_file(str(SPEC_15B), ["ppo.fused_logprobs=false"])
    assert logits.required_bytes - shipped.required_bytes > 10 * GiB


def test_verdict_needs_the_gpu_memory():
    plan = plan_file(str(SPEC_3B), ["resources.gpu_memory_gb=null"])
    assert plan.fits is None and any("gpu_memory_gb is not stated" in n for n in plan.notes)
    assert plan_file(str(SPEC_3B), ["resources.gpu_memory_gb=1000"]).fits is True
    big = estimate(_bench_spec(128), gpu_memory_gb=1000)
    assert big.fits is True


def test_gradients_follow_accumulation():
    """PPO frees gradients at each mini-batch: without accumulation the actor's backward
    starts with none; with it, both models' gradients are there."""
    one = estimate(_bench_spec(128))  # 32 / 8 = 4 micro-batches per mini-batch
    assert "actor backward" in one.part("critic gradients (fp32)").phases
    spec = _bench_spec(128).model_copy(
        update={"batch": _bench_spec(128).batch.model_copy(update={"micro": 32})}
    )
    alone = estimate(spec)
    assert "actor backward" not in alone.part("critic gradients (fp32)").phases
    assert "rollout" in alone.part("critic gradients (fp32)").phases


def test_static_rollouts_keep_their_copy_and_cache():
    """hf-static (issue 14) keeps a bf16 copy of the policy and a KV cache for the whole
    run; hf holds autocast's copy and a growing cache during the rollout only."""
    spec = _bench_spec(128)
    hf = estimate(spec)
    static = estimate(
        spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"engine": "hf-static"})})
    )
    assert hf.part("KV cache").phases == ("rollout",)
    assert static.part("KV cache (static)").phases == ("always",)
    assert static.part("KV cache (static)").bytes == kv_cache_bytes(QWEN15, 64, 262, 2)
    assert static.part("policy bf16 copy (hf-static)").bytes == 2 * 1_543_714_304
    assert static.part("policy bf16 copy (hf-static)").phases == ("always",)


def test_grpo_static_rollouts_keep_their_copy_and_cache_too():
    """GRPO's hf-static generates through the same engine (TRL's rollout hook): the
    same copy and static cache, for a step's 64 x 2 sequences."""
    spec = _bench_spec(128).model_copy(
        update={"algorithm": "grpo", "rollout": _bench_spec(128).rollout.model_copy(
            update={"engine": "hf-static", "responses_per_prompt": 2})}
    )  # fmt: skip
    plan = estimate(spec)
    assert plan.part("policy bf16 copy (hf-static)").phases == ("always",)
    assert plan.part("KV cache (static)").bytes == kv_cache_bytes(QWEN15, 128, 262, 2)


def test_grpo_under_fsdp_keeps_one_rollout_copy_and_shards_the_rest():
    """GRPO on the 1.5B service's 8 GPUs under fsdp: the policy's fp32 weights,
    gradients and AdamW moments are 16 bytes a parameter over 8 workers, and one
    bf16 copy of the whole policy stays on each for rollouts and validation
    (the static engine generates from it: no second copy)."""
    data = yaml.safe_load(SPEC_15B.read_text())
    data["algorithm"] = "grpo"
    data["rollout"]["responses_per_prompt"] = 2
    plan = estimate(CountdownRLSpec.model_validate(data))
    n = 1_543_714_304
    assert plan.part("policy weights (fp32)").bytes == n * 4 // 8
    assert plan.part("policy AdamW moments (fp32)").bytes == n * 8 // 8
    assert plan.part("policy bf16 rollout copy (fsdp)").bytes == 2 * n
    assert plan.part("policy bf16 rollout copy (fsdp)").phases == ("always",)
    assert not any("hf-static" in p.name for p in plan.parts)


# -- the command ------------------------------------------------------------------------


def test_cli_plans_the_service_spec(capsys):
    assert main(["plan", str(SPEC_15B)]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-1.5B (built-in table" in out
    assert "actor 1,543,714,304 parameters; critic 1,543,715,841" in out
    # as written: fsdp, micro-batches of 2, static HF rollouts from the rollout copy
    assert "fits: " in out and "of 24.00 GiB" in out and "fsdp over 8 GPUs" in out
    assert "1,543,714,304 x 8 B / 8" in out and "copy (hf-static)" not in out
    assert main(["plan", str(SPEC_15B), "--set", "resources.strategy=ddp"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "24.00 GiB there" in out


def test_cli_plans_a_cpu_spec(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(TINY))
    assert (
        main(
            [
                "plan",
                str(spec),
                "--set",
                "algorithm=grpo",
                "--set",
                "rollout.responses_per_prompt=2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "per worker" in out and "CPU run" in out and "policy weights (fp32)" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "resources.gpu_memory_gb=-4"], "field 'resources.gpu_memory_gb'"),
        (["--set", "model.name_or_path=/nowhere/model"], "model.name_or_path: no model config"),
        (["--set", "batch.micro=7"], "batch.micro"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_field(args, expected, capsys):
    assert main(["plan", str(SPEC_15B), *args]) == 2
    assert expected in capsys.readouterr().err


def test_cli_refuses_kinds_that_do_not_train(capsys):
    assert main(["plan", str(REPO / "services/data-generator.yaml")]) == 2
    err = capsys.readouterr().err
    assert "training kind 'countdown' is not known" in err and len(err.splitlines()) == 1


def test_memory_is_modelled_for_countdown_rl_only():
    from clab.specs import load_spec

    with pytest.raises(ClabError, match="covers kind countdown-rl"):
        estimate(load_spec(REPO / "services/k1-trainer.yaml"))


def test_the_plan_says_what_the_fused_head_would_save_where_the_logits_weigh():
    # the 3B service trains on the logits path: 8 x 1,024 x 151,936 fp32 logits
    plain = plan_file(str(SPEC_3B))
    (note,) = [n for n in plain.notes if n.startswith("ppo.fused_logprobs: true")]
    fused = plan_file(str(SPEC_3B), ["ppo.fused_logprobs=true"])
    assert f"would need {fused.required_bytes / GiB:.2f} GiB" in note
    assert fused.required_bytes < plain.required_bytes - 15 * GiB
    # already on (the 1.5B service), or GRPO: nothing to suggest
    assert not any("fused_logprobs" in n for n in plan_file(str(SPEC_15B)).notes)
    grpo = plan_file(str(SPEC_3B), ["algorithm=grpo", "rollout.responses_per_prompt=4"])
    assert not any("fused_logprobs" in n for n in grpo.notes)
