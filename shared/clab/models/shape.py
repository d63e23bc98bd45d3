"""The shape of a decoder-only language model and its parameter count, from its config.

``clab plan`` needs a model's sizes before anything is loaded, often on a
machine that has neither the weights nor a network: the config is read from
the model folder's ``config.json`` when it is there, from transformers' local
cache for a hub id, or from a small table of published configs (the Qwen2.5
base models the services train), so that ``clab plan`` on a service spec
works anywhere.

Parameter counts, for Qwen2 / Llama-style models (``h`` hidden size, ``q`` =
heads x head_dim, ``kv`` = key-value heads x head_dim, ``I`` the MLP width,
``V`` the vocabulary):

- embeddings: ``V h``; the output head another ``V h`` unless tied;
- attention per layer: ``h q + 2 h kv + q h`` (+ ``q + 2 kv`` biases on
  q, k, v for Qwen2, + ``h`` on o as well for Llama with ``attention_bias``);
- gated MLP per layer: ``3 h I`` (+ ``2 I + h`` with ``mlp_bias``);
- RMS norms: ``2 h`` per layer, ``h`` at the end (+ ``2 head_dim`` per layer
  for Qwen3's q/k norms);
- a critic (``AutoModelForTokenClassification``, one label): the backbone
  without the output head, plus a value head of ``h + 1``.

Qwen2.5-1.5B: 151,936 x 1,536 + 28 x 46,797,824 + 1,536 = 1,543,714,304.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clab.errors import ClabError


@dataclass(frozen=True)
class DecoderShape:
    """What the memory model needs to know about a decoder-only transformer."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def attention_params(s: DecoderShape) -> int:
    """q, k, v and o projections of one layer, with their biases."""
    h, q, kv = s.hidden_size, s.q_dim, s.kv_dim
    weights = h * q + 2 * h * kv + q * h
    biases = (q + 2 * kv if s.qkv_bias else 0) + (h if s.o_bias else 0)
    norms = 2 * s.head_dim if s.qk_norm else 0
    return weights + biases + norms


def mlp_params(s: DecoderShape) -> int:
    """The gated MLP of one layer: gate and up (h -> I), down (I -> h)."""
    h, i = s.hidden_size, s.intermediate_size
    return 3 * h * i + (2 * i + h if s.mlp_bias else 0)


def layer_params(s: DecoderShape) -> int:
    """One decoder layer: attention, MLP and its two RMS norms."""
    return attention_params(s) + mlp_params(s) + 2 * s.hidden_size


def embedding_params(s: DecoderShape) -> int:
    return s.vocab_size * s.hidden_size


def lm_head_params(s: DecoderShape) -> int:
    """The output projection's own parameters: none when tied to the embeddings."""
    return 0 if s.tied_embeddings else s.vocab_size * s.hidden_size


def value_head_params(s: DecoderShape) -> int:
    """A critic's head: one linear output with a bias."""
    return s.hidden_size + 1


def backbone_params(s: DecoderShape) -> int:
    """Embeddings, every layer and the final norm: what policy and critic share in shape."""
    return embedding_params(s) + s.num_layers * layer_params(s) + s.hidden_size


def causal_lm_params(s: DecoderShape) -> int:
    """A policy (``AutoModelForCausalLM``); tied weights are counted once, as torch does."""
    return backbone_params(s) + lm_head_params(s)


def value_model_params(s: DecoderShape) -> int:
    """A critic (``AutoModelForTokenClassification`` with one label)."""
    return backbone_params(s) + value_head_params(s)


def root_params(s: DecoderShape, *, value_head: bool = False) -> int:
    """Parameters outside the decoder layers: what FSDP's root unit holds when each
    layer is its own unit (embeddings, final norm, the output or value head)."""
    head = value_head_params(s) if value_head else lm_head_params(s)
    return embedding_params(s) + s.hidden_size + head


# -- reading a config -------------------------------------------------------------------

SUPPORTED_TYPES = ("qwen2", "qwen3", "llama", "mistral")


def shape_from_config(config: Any) -> DecoderShape:
    """A :class:`DecoderShape` from a transformers config object or its ``config.json`` dict.

    Qwen2 always has q/k/v biases; Llama and Mistral follow ``attention_bias`` and
    ``mlp_bias``; Qwen3 has q/k norms and follows ``attention_bias``.
    """
    c = config if isinstance(config, dict) else config.to_dict()
    model_type = c.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not one the memory model knows "
            f"({', '.join(SUPPORTED_TYPES)})"
        )
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    attention_bias = bool(c.get("attention_bias", False))
    return DecoderShape(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=c["intermediate_size"],
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type != "qwen2" and attention_bias,
        mlp_bias=bool(c.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
    )


def _qwen25(hidden: int, inter: int, layers: int, heads: int, kv: int, **extra) -> dict:
    return {
        "model_type": "qwen2",
        "vocab_size": extra.pop("vocab_size", 151936),
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "tie_word_embeddings": extra.pop("tie_word_embeddings", True),
    }


# The published config.json values (the Instruct models share them).
PUBLISHED_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": _qwen25(896, 4864, 24, 14, 2),
    "Qwen/Qwen2.5-1.5B": _qwen25(1536, 8960, 28, 12, 2),
    "Qwen/Qwen2.5-3B": _qwen25(2048, 11008, 36, 16, 2),
    "Qwen/Qwen2.5-7B": _qwen25(
        3584, 18944, 28, 28, 4, vocab_size=152064, tie_word_embeddings=False
    ),
}
# The model folders the service specs mount (/models/<name>), by the model they hold.
FOLDER_NAMES = {
    "qwen0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen3b": "Qwen/Qwen2.5-3B",
    "qwen7b": "Qwen/Qwen2.5-7B",
}


def published_config(name_or_path: str) -> tuple[str, dict] | None:
    """The table's entry for a hub id (``Qwen/Qwen2.5-1.5B``, its ``-Instruct`` twin) or a
    folder whose last name is a table name or a service's mount name (``qwen1.5b``)."""
    key = name_or_path.rstrip("/").lower().removesuffix("-instruct")
    base = key.rsplit("/", 1)[-1]
    for name, cfg in PUBLISHED_CONFIGS.items():
        if key == name.lower() or base == name.lower().rsplit("/", 1)[-1]:
            return name, cfg
    if base in FOLDER_NAMES:
        name = FOLDER_NAMES[base]
        return name, PUBLISHED_CONFIGS[name]
    return None


def _looks_local(name_or_path: str) -> bool:
    """A path, not a hub id (``org/name``)."""
    return name_or_path.startswith(("/", "./", "../", "~"))


def resolve_shape(name_or_path: str, field: str = "model.name_or_path") -> tuple[DecoderShape, str]:
    """The shape of the model ``name_or_path`` names, and where it was read from.

    In order: a local folder's ``config.json``; a hub id in transformers' local
    cache (never downloaded); the built-in table. Anything else is the user's to
    fix: a :class:`ClabError` naming ``field``.
    """
    config_file = Path(name_or_path).expanduser() / "config.json"
    if config_file.is_file():
        from transformers import AutoConfig

        try:  # through transformers, which fills in the class defaults config.json omits
            config = AutoConfig.from_pretrained(str(config_file.parent), local_files_only=True)
            return shape_from_config(config), str(config_file)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClabError(
                f"{field}: {config_file}: not a usable model config ({first})"
            ) from None
    if not _looks_local(name_or_path):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
        except (OSError, ValueError, KeyError):
            pass
        else:
            try:
                return shape_from_config(config), f"{name_or_path} (transformers' local cache)"
            except ValueError as e:
                raise ClabError(f"{field}: {name_or_path}: {e}") from None
    known = published_config(name_or_path)
    if known is not None:
        name, cfg = known
        where = "has no config.json here" if _looks_local(name_or_path) else "is not cached here"
        source = f"{name} (built-in table of published configs; {name_or_path} {where})"
        return shape_from_config(cfg), source
    names = ", ".join(PUBLISHED_CONFIGS)
    raise ClabError(
        f"{field}: no model config for {name_or_path!r}: not a folder with config.json, not "
        f"in transformers' local cache, not in the built-in table ({names}); point it at the "
        f"model folder, or plan with a known one, e.g. --set {field}=Qwen/Qwen2.5-1.5B"
    )


def tiny_shape(
    hidden_size: int, num_layers: int, vocab_size: int, num_heads: int = 4
) -> DecoderShape:
    """The ``tiny`` preset (``clab.models.tiny``): half as many key-value heads, MLP 4 x
    hidden, tied embeddings; ``vocab_size`` is the tokenizer's upper bound."""
    return DecoderShape(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=max(1, num_heads // 2),
        head_dim=hidden_size // num_heads,
        intermediate_size=4 * hidden_size,
        tied_embeddings=True,
        qkv_bias=True,
    )
