"""A tiny random Qwen2-architecture model with a tokenizer trained on the task.

Tests and the demo cannot download Qwen. A byte-level BPE tokenizer trained
on the task's own text keeps sequences short, and a Qwen2 model with hidden
size 64 and 2 layers runs RL steps on a CPU in well under a second, through
exactly the code paths the real model takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from clab.models.loading import TINY_MARKER
from clab.storage.atomic import atomic_dir

EOS = "<|endoftext|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``.

    ``split_digits``: every digit a token of its own, as Qwen's and Llama's
    tokenizers split numbers. Without it a number is one token together with the
    space before it, so the 12 of a prompt's ``[12, 15, 1]`` (no space after the
    bracket) is the token ``12`` and the answer's `` 12`` another one: a tiny model
    then copies the second and third numbers of a Countdown problem into its
    answer but never the first (docs/demo.md)."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.padding_side = "left"
    return fast


def build_tiny_model(
    out_dir: Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = True,
    architecture: str = "qwen2",
    initializer_range: float = 0.02,
    split_digits: bool = False,
) -> Path:
    """Write a tiny model and its tokenizer to ``out_dir`` (atomically) and return it.

    ``architecture`` is ``qwen2`` (the RL services' Qwen2.5) or ``llama`` (the
    mixing trainer's TinyLlama), so a tiny stand-in takes the real model's code path.
    """
    tokenizer = train_tokenizer(texts, vocab_size, split_digits=split_digits)
    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out_dir) as d:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        (d / TINY_MARKER).write_text(json.dumps({"vocab_size": len(tokenizer)}) + "\n")
    return out_dir
