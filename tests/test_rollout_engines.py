"""The static-cache rollout engine (issue 14) against today's dynamic one on CPU: the
same tokens from the same seed, greedy and sampled, with prompts of unequal length, a
batch that is not a multiple of the static batch and rows that stop early; weights
followed in place; and a PPO step that does not depend on the engine.

CPU runs the static engine uncompiled (it compiles its decode step on CUDA only), so
these tests check the static path's arithmetic and bookkeeping, and one traces the step
as a single graph with dynamo's eager backend; the compiled graph's speed and its reuse
are measured on a GPU by ``benchmarks/bench_rollout.py``."""

from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from clab.data.countdown.reading import read_group
from clab.generation import rollout
from clab.generation.rollout import hf_generate
from clab.models.loading import load_critic, load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model, train_tokenizer
from clab.rewards.countdown import Reason, RewardResult
from clab.training.ppo import PPOConfig, PPOTrainer

PROMPTS = [f"sum {i} and {i * 7} " * (1 + i % 4) + "is" for i in range(7)]  # ragged


@pytest.fixture(scope="module")
def lm():
    tok = train_tokenizer(PROMPTS * 3, 300)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,  # varied greedy tokens, not one token repeated
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # EOS along the mean last hidden state: some rows stop early
        ids = tok(PROMPTS, return_tensors="pt", padding=True)
        h = model(**ids, output_hidden_states=True).hidden_states[-1].mean(dim=(0, 1))
        model.lm_head.weight[tok.eos_token_id] = 4 * h / h.norm()
    return model, tok


def _generate(model, tok, engine, greedy, seed=5):
    torch.manual_seed(seed)
    ro = hf_generate(
        model,
        tok,
        PROMPTS,
        max_prompt_length=40,
        max_new_tokens=10,
        temperature=0.8,
        greedy=greedy,
        batch_size=3,  # 7 prompts: chunks of 3, 3 and 1 (+2 filler rows on the static path)
        engine=engine,
    )
    return ro, torch.rand(4)  # what the random stream gives next


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_static_engine_gives_the_dynamic_engines_tokens(lm, greedy):
    model, tok = lm
    dyn, dyn_next = _generate(model, tok, "hf", greedy)
    sta, sta_next = _generate(model, tok, "hf-static", greedy)
    lengths = dyn.response_mask.sum(dim=1)
    assert lengths.min() < 10 and lengths.max() == 10  # some rows stopped at EOS, some not
    assert len(set(dyn.texts)) > 3
    assert torch.equal(sta.response_ids, dyn.response_ids)
    assert torch.equal(sta.response_mask, dyn.response_mask)
    assert sta.texts == dyn.texts
    # prompts left-padded to max_prompt_length for generation, trimmed back for training
    assert torch.equal(sta.prompt_ids, dyn.prompt_ids)
    assert torch.equal(sta.prompt_mask, dyn.prompt_mask)
    # the filler rows drew nothing: the random stream is where the dynamic path left it
    assert torch.equal(sta_next, dyn_next)
    # and the static path really ran: one generator, its cache (batch 3, 40 + 10 slots)
    (gen,) = rollout._STATIC.values()
    assert tuple(gen.cache.layers[0].keys.shape[::2]) == (3, 50)


def test_static_engine_without_any_padding(lm):
    """Every prompt cut to exactly max_prompt_length: no padding anywhere (a mask of
    all ones, which transformers may drop for SDPA's ``is_causal``), and still each
    decode step attends only to the cache slots written so far."""
    model, tok = lm
    outs = []
    for engine in ("hf", "hf-static"):
        torch.manual_seed(3)
        ro = hf_generate(
            model, tok, PROMPTS[3:6], max_prompt_length=4, max_new_tokens=10,
            temperature=0.8, batch_size=3, engine=engine,
        )  # fmt: skip
        outs.append(ro)
    assert outs[0].prompt_mask.all()
    assert torch.equal(outs[1].response_ids, outs[0].response_ids)
    assert outs[1].texts == outs[0].texts


def test_grouped_attention_is_sdpa(monkeypatch):
    """The rollout copy's attention, both forms, against transformers' SDPA path on
    grouped heads (3 query heads a key/value head): with a padding mask, with no mask
    for one query, and with no mask for a prefill (SDPA's top-left causal); the SDPA
    form also when SDPA returns the GPU's memory-efficient kernel's layout."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from clab.generation.attention import grouped_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    B, H, Hkv, kv, d = 2, 6, 2, 9, 8
    key, value = torch.randn(B, Hkv, kv, d), torch.randn(B, Hkv, kv, d)
    padded = torch.ones(B, 1, 4, kv, dtype=torch.bool).tril(diagonal=kv - 4)
    padded[0, :, :, :2] = False  # row 0 left-padded by two
    for q, mask in [(4, padded), (1, None), (4, None), (1, padded[:, :, -1:])]:
        query = torch.randn(B, H, q, d)
        want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
        for sdpa in (False, True):
            got, _ = grouped_attention(module, query, key, value, mask, scaling=0.3, sdpa=sdpa)
            assert got.shape == want.shape == (B, q, H, d)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # on a GPU a mask selects the memory-efficient kernel, whose output is strided as
        # (B, rows, heads, d): the same values in that layout give the same result
        real = torch.nn.functional.scaled_dot_product_attention
        with monkeypatch.context() as m:
            m.setattr(
                torch.nn.functional, "scaled_dot_product_attention",
                lambda *a, real=real, **k: real(*a, **k).transpose(1, 2).contiguous()
                .transpose(1, 2),
            )  # fmt: skip
            got, _ = grouped_attention(module, query, key, value, mask, scaling=0.3, sdpa=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _dynamic_tokens(model, tok) -> torch.Tensor:
    """The dynamic engine's tokens for the first three prompts, sampled from seed 5 at
    temperature 0.8 (what the static builds below are held to)."""
    torch.manual_seed(5)
    return hf_generate(
        model, tok, PROMPTS[:3], max_prompt_length=40, max_new_tokens=10,
        temperature=0.8, batch_size=3,
    ).response_ids  # fmt: skip


def test_the_sdpa_attention_kernel_gives_the_dynamic_engines_tokens(lm):
    """``attention_kernel="sdpa"`` (one SDPA call a layer for the grouped heads): the
    same sampled tokens as the dynamic engine, left-padded prompts of several lengths
    (prefill rows with padding) and rows stopping at EOS; an unknown kernel is named."""
    model, tok = lm
    gen = rollout.StaticGenerator(
        model, batch_size=3, max_prompt_length=40, max_new_tokens=10, attention_kernel="sdpa"
    )
    assert gen.model.config._attn_implementation == "clab_grouped_sdpa"
    ids, mask = rollout.encode_prompts(tok, PROMPTS[:3], 40, "cpu", pad_to_max=True)
    assert not mask.all()  # left padding in the prefill
    torch.manual_seed(5)
    out = gen.generate_ids(ids, mask, 3, tok, temperature=0.8)
    assert torch.equal(out, _dynamic_tokens(model, tok))
    with pytest.raises(ValueError, match="attention_kernel: 'flash', not one of"):
        rollout.StaticGenerator(
            model, batch_size=3, max_prompt_length=40, max_new_tokens=10,
            attention_kernel="flash",
        )  # fmt: skip


def test_static_engine_follows_the_weights_in_place(lm):
    """An optimizer step on the model reaches the next static rollout through the same
    generator, the same tensors (a compiled graph stays valid) and the same cache."""
    model, tok = lm
    model = Qwen2ForCausalLM(model.config).eval()
    model.load_state_dict(lm[0].state_dict())
    _generate(model, tok, "hf-static", greedy=True)
    (gen,) = rollout._STATIC.values()
    ptrs = [p.data_ptr() for p in gen.model.parameters()] + [gen.cache.layers[0].keys.data_ptr()]

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = tok(PROMPTS[:2], return_tensors="pt", padding=True)["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()

    dyn, _ = _generate(model, tok, "hf", greedy=True)
    sta, _ = _generate(model, tok, "hf-static", greedy=True)
    assert torch.equal(sta.response_ids, dyn.response_ids)
    assert list(rollout._STATIC.values()) == [gen]
    assert [p.data_ptr() for p in gen.model.parameters()] + [
        gen.cache.layers[0].keys.data_ptr()
    ] == ptrs
    for name, p in model.named_parameters():
        assert torch.equal(dict(gen.model.named_parameters())[name], p.detach()), name


@pytest.mark.parametrize("greedy", [True, False])
def test_the_gpu_settings_traced_whole_once_and_stopping_late_give_the_same_tokens(lm, greedy):
    """What runs on a GPU, checked on CPU: the prefill and the decode step, each with
    its token choice, traced as one graph each (``fullgraph``: a graph break would
    fail here) and reused at every token and call without compiling again; sampling
    in the graph gives ``torch.multinomial``'s tokens from the same seed; and the stop
    flag read only every 4 tokens, whose extra steps past the last EOS are cut off."""
    model, tok = lm
    dyn, _ = _generate(model, tok, "hf", greedy=greedy)
    _generate(model, tok, "hf-static", greedy=greedy)  # builds the generator and its cache
    (gen,) = rollout._STATIC.values()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    gen._step = torch.compile(gen._next_token, backend="eager", fullgraph=True, dynamic=False)
    gen.check_every = 4
    sta, _ = _generate(model, tok, "hf-static", greedy=greedy)
    assert torch.equal(sta.response_ids, dyn.response_ids)
    assert torch.equal(sta.response_mask, dyn.response_mask)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # prefill, decode
    again, _ = _generate(model, tok, "hf-static", greedy=greedy)
    assert torch.equal(again.response_ids, dyn.response_ids)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # nothing new


def test_the_first_static_call_builds_both_graphs_and_the_next_compiles_nothing(lm, monkeypatch):
    """On a GPU the first call's prefill creates the KV cache eagerly; it must also
    build the prefill's graph then, else the second call (a run's second step, a
    benchmark's first timed one) pays that compilation. Traced here as on a GPU, one
    call of one chunk: two graphs (prefill, decode), the dynamic engine's tokens; a
    second call compiles nothing and gives them again."""
    model, tok = lm

    class Traced(rollout.StaticGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._step = torch.compile(
                self._next_token, backend="eager", fullgraph=True, dynamic=False
            )

    def once(engine):
        torch.manual_seed(5)
        return hf_generate(
            model, tok, PROMPTS[:3], max_prompt_length=40, max_new_tokens=10,
            temperature=0.8, batch_size=3, engine=engine,
        )  # fmt: skip

    dyn = once("hf")
    monkeypatch.setattr(rollout, "StaticGenerator", Traced)
    rollout._STATIC.clear()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    first = once("hf-static")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # prefill, decode
    assert torch.equal(first.response_ids, dyn.response_ids)
    second = once("hf-static")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert torch.equal(second.response_ids, dyn.response_ids)
    rollout._STATIC.clear()  # no traced generator left for the other tests


def test_an_uncompiled_static_engine_runs_its_first_prefill_once(lm, monkeypatch):
    """The first call's second prefill is there to build the compiled prefill's graph;
    an uncompiled engine (a CPU) has none to build, and ran the prefill twice."""
    model, tok = lm
    prefills = []

    class Counted(rollout.StaticGenerator):
        def _next_token(self, ids, *rest):
            if ids.shape[1] > 1:
                prefills.append(ids.shape)
            return super()._next_token(ids, *rest)

    monkeypatch.setattr(rollout, "StaticGenerator", Counted)
    rollout._STATIC.clear()
    torch.manual_seed(5)
    hf_generate(
        model, tok, PROMPTS[:3], max_prompt_length=40, max_new_tokens=4,
        temperature=0.8, batch_size=3, engine="hf-static",
    )  # fmt: skip
    assert len(prefills) == 1
    rollout._STATIC.clear()


def test_a_policy_whose_logits_are_not_finite_is_refused_while_generating(lm):
    """``torch.multinomial`` refused non-finite probabilities at every token (two host
    reads a token); the static engine checks once a call and says what happened."""
    model, tok = lm
    broken = Qwen2ForCausalLM(model.config).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.lm_head.weight[3, 0] = float("nan")
    gen = rollout.StaticGenerator(broken, batch_size=3, max_prompt_length=40, max_new_tokens=4)
    ids, mask = rollout.encode_prompts(tok, PROMPTS[:3], 40, "cpu", pad_to_max=True)
    with pytest.raises(RuntimeError, match="logits were not finite"):
        gen.generate_ids(ids, mask, 3, tok)


def _products_a_step(gen) -> int:
    """Matrix products in the decode step's traced graph (linears and matmuls)."""
    seen = []

    def backend(gm, example_inputs):
        seen.append(
            sum(
                n.op == "call_function"
                and n.target in (torch.nn.functional.linear, torch.matmul, torch.bmm)
                for n in gm.graph.nodes
            )
        )
        return gm.forward

    torch._dynamo.reset()
    gen._step = torch.compile(gen._next_token, backend=backend, fullgraph=True, dynamic=False)
    return seen  # the first call's prefill is eager (it creates the cache): [decode step]


def test_the_fused_copy_runs_three_products_fewer_a_layer_and_gives_the_same_tokens(lm):
    """q/k/v as one product and gate/up as one (``clab.generation.fused``): the decode
    step's graph has three matrix products fewer a decoder layer than the unfused
    copy's, and generates the dynamic engine's tokens, also after the policy's
    weights change (the fused weight is what the copy's parameters view)."""
    model, tok = lm
    layers = model.config.num_hidden_layers
    counts = {}
    for fuse in (False, True):
        gen = rollout.StaticGenerator(
            model, batch_size=3, max_prompt_length=40, max_new_tokens=10, fuse=fuse
        )
        assert gen.fused == (2 * layers if fuse else 0)
        seen = _products_a_step(gen)
        ids, mask = rollout.encode_prompts(tok, PROMPTS[:3], 40, "cpu", pad_to_max=True)
        torch.manual_seed(5)
        out = gen.generate_ids(ids, mask, 3, tok, temperature=0.8)
        counts[fuse] = seen[0]
        assert torch.equal(out, _dynamic_tokens(model, tok))
    assert counts[False] - counts[True] == 3 * layers
    assert counts[True] == 6 * layers + 1  # qkv, two attention products, o, gate_up, down; head

    attn = gen.model.model.layers[0].self_attn
    weight, _, _ = attn.clab_qkv
    assert attn.q_proj.weight.data_ptr() == weight.data_ptr()  # a view, refreshed in place
    with torch.no_grad():
        changed = Qwen2ForCausalLM(model.config).eval()
    gen.load_weights(changed)
    assert torch.equal(
        weight,
        torch.cat([changed.model.layers[0].self_attn.q_proj.weight,
                   changed.model.layers[0].self_attn.k_proj.weight,
                   changed.model.layers[0].self_attn.v_proj.weight]),
    )  # fmt: skip


def test_under_autocast_the_static_copy_computes_in_the_autocast_dtype(lm):
    model, tok = lm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _generate(model, tok, "hf-static", greedy=True)
    (gen,) = rollout._STATIC.values()
    assert gen.model.dtype == torch.bfloat16
    assert model.dtype == torch.float32  # the model itself is untouched


@pytest.fixture
def tiny(tmp_path, dataset) -> Path:
    probs = read_group(dataset, 0, "train", 8)
    build_tiny_model(tmp_path / "m", [p.prompt for p in probs], vocab_size=300, hidden_size=32)
    return tmp_path / "m"


def test_a_ppo_step_is_the_same_on_either_engine(tiny, dataset):
    """Rollouts of 6 prompts in calls of 4 (the static engine fills the second call up
    to 4): same tokens, so the same losses, values and gradient norms."""

    def score(texts, problems):
        return [RewardResult(len(t) % 3 / 2, False, Reason.WRONG_VALUE) for t in texts]

    def step(engine):
        torch.manual_seed(0)
        cfg = PPOConfig(
            actor_lr=1e-3,
            critic_lr=1e-3,
            mini_batch_size=6,
            micro_batch_size=3,
            max_response_length=6,
            max_prompt_length=160,
            rollout_engine=engine,
            rollout_batch_size=4,
        )
        tr = PPOTrainer(
            load_policy(tiny),
            load_critic(tiny, seed=0),
            load_policy(tiny),
            load_tokenizer(tiny),
            cfg,
            score,
        )
        rows = read_group(dataset, 0, "train", 6)
        return [tr.step(rows) for _ in range(2)]  # the second after an optimizer step

    timing = {"tokens_per_s", "step_time", "generation_time"}
    dyn, sta = step("hf"), step("hf-static")
    for d, s in zip(dyn, sta, strict=True):

        def same(row: dict) -> dict:  # everything but the clocks (time/<phase> too)
            return {k: v for k, v in row.items() if k not in timing and not k.startswith("time/")}

        assert same(s) == same(d)
