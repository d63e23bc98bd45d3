"""The model shapes the GPU benchmarks build with random weights: the same compute as
the real model, no download. Qwen2.5-1.5B's sizes are the published config's
(``clab.models.shape.PUBLISHED_CONFIGS``, which ``clab plan`` reads too)."""

from __future__ import annotations

from clab.models.shape import PUBLISHED_CONFIGS

QWEN25_15B = {
    **{k: v for k, v in PUBLISHED_CONFIGS["Qwen/Qwen2.5-1.5B"].items() if k != "model_type"},
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
}
# a CPU-sized model for checking a benchmark before it spends device time
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
