"""The fused head (log-probs and entropy without the logits tensor) against the
plain computation: values and gradients, chunked or not, tempered or not, in
fp32 and under bf16 autocast, inside a real model and through a PPO step."""

import pytest
import torch

from clab.data.countdown.reading import read_group
from clab.models.loading import load_critic, load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model
from clab.rewards.countdown import Reason, RewardResult
from clab.training import fused_logprobs
from clab.training.fused_logprobs import fused_head, linear_logprobs_and_entropy
from clab.training.ppo import PPOConfig, PPOTrainer
from clab.training.ppo_core import logprobs_and_entropy


def _plain(h, w, tok, T):
    return logprobs_and_entropy((h @ w.T).float() / T, tok)


def _case(n=37, hidden=16, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64).float().requires_grad_()
    w = torch.randn(vocab, hidden, generator=g).mul(0.5).requires_grad_()
    tok = torch.randint(0, vocab, (n,), generator=g)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return h, w, tok, a, b


def _grads(fn, h, w, tok, a, b, T):
    lp, ent = fn(h, w, tok, T)
    ((a * lp).sum() + (b * ent).sum()).backward()
    out = (lp.detach(), ent.detach(), h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    return out


@pytest.mark.parametrize("T", [1.0, 0.7])
@pytest.mark.parametrize("chunk_tokens", [1, 5, 1000])
def test_values_and_gradients_equal_the_plain_path_in_fp32(monkeypatch, T, chunk_tokens):
    monkeypatch.setattr(fused_logprobs, "CHUNK_BYTES", chunk_tokens * 4 * 50)
    h, w, tok, a, b = _case()
    want = _grads(_plain, h, w, tok, a, b, T)
    got = _grads(linear_logprobs_and_entropy, h, w, tok, a, b, T)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_even_chunks_cover_every_token_within_the_chunk_size_and_differ_by_one_at_most(
    monkeypatch,
):
    """The compiled path's chunks: no one-token tail (a compiled function specialises on
    a length of 1 and would compile again)."""
    monkeypatch.setattr(fused_logprobs, "CHUNK_BYTES", 441 * 4 * 151936)
    assert fused_logprobs._even_chunks(0, 151936) == []
    for n in (1, 2, 441, 442, 883, 4112, 8224):
        sizes = [c.stop - c.start for c in fused_logprobs._even_chunks(n, 151936)]
        assert sum(sizes) == n and max(sizes) <= 441 and max(sizes) - min(sizes) <= 1, n
        assert min(sizes) > 1 or n == 1
    assert len(fused_logprobs._even_chunks(442, 151936)) == 2  # 221 + 221, not 441 + 1


def test_the_compiled_chunk_path_gives_the_plain_path_values_and_gradients(monkeypatch):
    """``compiled=True`` (``ppo.compile_head``): each chunk's statistics and gradient
    through torch.compile, here inductor on the CPU. Tempered and not, chunks of
    unequal lengths, another token count, and gradients of other strides (a sum's
    stride 0): the plain path's numbers, one graph for each of the two functions."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(fused_logprobs, "_COMPILED", {})
    monkeypatch.setattr(fused_logprobs, "CHUNK_BYTES", 16 * 4 * 50)  # 16 tokens a chunk

    def compiled(h, w, tok, T):
        return linear_logprobs_and_entropy(h, w, tok, T, compiled=True)

    for n, T in ((37, 1.0), (29, 0.7)):
        h, w, tok, a, b = _case(n=n)
        want = _grads(_plain, h, w, tok, a, b, T)
        got = _grads(compiled, h, w, tok, a, b, T)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    h, w, tok, _, _ = _case(n=37)
    ones = torch.ones(37)
    want = _grads(_plain, h, w, tok, ones, ones, 0.7)
    got = _grads(compiled, h, w, tok, ones, ones, 0.7)  # the same, through plain sums:
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    lp, ent = compiled(h, w, tok, 0.7)
    (lp.sum() + ent.sum()).backward()  # gradients of stride 0
    torch.testing.assert_close(h.grad, want[2], rtol=1e-5, atol=1e-5)
    assert len(fused_logprobs._COMPILED) == 2
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_the_compiled_chunk_path_in_bf16_matches_the_eager_one_within_rounding(monkeypatch):
    """The GPU's case: bf16 matmuls, fp32 statistics. Compiled and eager agree to bf16
    rounding in values and gradients."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused_logprobs, "_COMPILED", {})
    monkeypatch.setattr(fused_logprobs, "CHUNK_BYTES", 16 * 4 * 50)
    h, w, tok, a, b = _case(n=37)
    runs = []
    for flag in (False, True):

        def fn(h, w, tok, T, flag=flag):
            return linear_logprobs_and_entropy(h, w, tok, T, torch.bfloat16, compiled=flag)

        runs.append(_grads(fn, h, w, tok, a, b, 1.0))
    for x, y in zip(*runs, strict=True):
        torch.testing.assert_close(x, y, rtol=2e-2, atol=2e-2)


def test_a_bf16_head_gradient_summed_over_many_chunks_is_as_close_as_one_chunks(monkeypatch):
    """FSDP gathers the head's weight in bf16, so its gradient is bf16: summed over
    the chunks in bf16 it drifted (here 4.7e-3 from the fp32 gradient at 16 chunks,
    against 2.9e-3 at one); summed in fp32 and rounded once it is as close as one
    chunk's, as veRL's kernel (one matmul over all tokens) makes it."""
    g = torch.Generator().manual_seed(0)
    n, hidden, vocab, T = 1000, 128, 4096, 0.7
    h32 = torch.randn(n, hidden, generator=g)
    w32 = torch.randn(vocab, hidden, generator=g) * 0.05
    tok = torch.randint(0, vocab, (n,), generator=g)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    want = _grads(_plain, h32.requires_grad_(), w32.requires_grad_(), tok, a, b, T)[3]

    def error(chunk_tokens: int) -> float:
        monkeypatch.setattr(fused_logprobs, "CHUNK_BYTES", chunk_tokens * 4 * vocab)
        h = h32.detach().bfloat16().requires_grad_()
        w = w32.detach().bfloat16().requires_grad_()
        got = _grads(linear_logprobs_and_entropy, h, w, tok, a, b, T)[3]
        assert got.dtype == torch.bfloat16
        return ((got.float() - want).norm() / want.norm()).item()

    one = error(n)
    assert one < 3e-3
    assert error(64) < 1.25 * one  # 16 chunks


@pytest.mark.parametrize("compiled", [False, True])
def test_an_entropy_term_alone_or_a_log_prob_term_alone_backpropagates(compiled, monkeypatch):
    """A loss that uses only one of the two outputs (the scoring passes, or a zero
    entropy coefficient) gets the other's gradient as None, not a crash, eager or
    compiled."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused_logprobs, "_COMPILED", {})
    h, w, tok, _, _ = _case()
    for pick in (0, 1):  # the log-probs alone, the entropy alone
        out = linear_logprobs_and_entropy(h, w, tok, compiled=compiled)
        out[pick].sum().backward()
        got = h.grad.clone()
        h.grad = w.grad = None
        _plain(h, w, tok, 1.0)[pick].sum().backward()
        torch.testing.assert_close(got, h.grad, rtol=1e-5, atol=1e-5)
        h.grad = w.grad = None


def test_bf16_matmuls_match_the_plain_path_under_autocast_within_rounding():
    h, w, tok, a, b = _case(n=64, hidden=32, vocab=80)

    def plain_autocast(h, w, tok, T):
        with torch.autocast("cpu", torch.bfloat16):
            z = torch.nn.functional.linear(h, w)
        return logprobs_and_entropy(z.float(), tok)

    def fused_bf16(h, w, tok, T):
        return linear_logprobs_and_entropy(h, w, tok, T, torch.bfloat16)

    want = _grads(plain_autocast, h, w, tok, a, b, 1.0)
    got = _grads(fused_bf16, h, w, tok, a, b, 1.0)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=2e-2, atol=2e-2)
    assert got[3].dtype == torch.float32  # fp32 master weights get fp32 gradients


@pytest.fixture
def tiny(tmp_path, dataset):
    probs = read_group(dataset, 0, "train", 8)
    build_tiny_model(tmp_path / "m", [p.prompt for p in probs], vocab_size=300, hidden_size=32)
    return tmp_path / "m"


def test_inside_a_model_the_head_gives_log_probs_and_entropy_and_the_same_gradients(tiny):
    model = load_policy(tiny)
    ids = torch.randint(0, 300, (3, 12))
    targets = torch.randint(0, 300, (3, 5))
    with fused_head(model, targets, 0.8):
        out = model(input_ids=ids, logits_to_keep=5).logits
    assert out.shape == (3, 5, 2)
    out[..., 0].sum().add(out[..., 1].sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    lp, ent = logprobs_and_entropy(model(input_ids=ids, logits_to_keep=5).logits / 0.8, targets)
    torch.testing.assert_close(out[..., 0], lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[..., 1], ent, rtol=1e-5, atol=1e-5)
    (lp.sum() + ent.sum()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    # and after the block the head is the plain linear head again
    assert model(input_ids=ids, logits_to_keep=5).logits.shape == (3, 5, 300)


def test_a_target_width_that_does_not_match_the_kept_positions_is_refused(tiny):
    model = load_policy(tiny)
    with pytest.raises(ValueError, match="targets"), fused_head(model, torch.zeros(1, 4).long()):
        model(input_ids=torch.zeros(1, 8).long(), logits_to_keep=5)


def _score(texts, problems):
    return [RewardResult(len(t) % 3 / 2, False, Reason.WRONG_VALUE) for t in texts]


def _step(model_dir, problems, fused: bool, compile_head: bool = False) -> dict:
    torch.manual_seed(0)
    tr = PPOTrainer(
        load_policy(model_dir),
        load_critic(model_dir, seed=0),
        load_policy(model_dir),
        load_tokenizer(model_dir),
        PPOConfig(
            actor_lr=1e-3,
            critic_lr=1e-3,
            mini_batch_size=2,
            micro_batch_size=2,
            max_response_length=6,
            max_prompt_length=160,
            temperature=0.9,
            entropy_coef=0.01,
            fused_logprobs=fused,
            compile_head=compile_head,
        ),
        _score,
    )
    out = [tr.step(problems) for _ in range(2)]  # the second step sees the first's update
    return {k: v for row in out for k, v in row.items() if "time" not in k and "per_s" not in k}


@pytest.mark.parametrize("compile_head", [False, True])
def test_a_ppo_step_gives_the_same_losses_fused_or_plain(tiny, dataset, compile_head, monkeypatch):
    """Two PPO steps (tempered, with the entropy bonus) through the fused head, its
    chunk math eager or compiled (``ppo.compile_head``), against the plain path."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused_logprobs, "_COMPILED", {})
    problems = read_group(dataset, 0, "train", 4)
    fused = _step(tiny, problems, True, compile_head)
    assert len(fused_logprobs._COMPILED) == (2 if compile_head else 0)  # it ran compiled
    plain = _step(tiny, problems, False)
    assert fused.keys() == plain.keys()
    for k in fused:
        assert fused[k] == pytest.approx(plain[k], rel=1e-4, abs=1e-5), k
