"""Load policies, critics and tokenizers from a local folder or a hub id.

Tiny models carry a locally trained tokenizer. transformers 5 rebuilds Qwen's
own tokenizer for any folder whose config says ``qwen2`` when loaded with
``AutoTokenizer``, which silently changes a local tokenizer's ids; folders
clab writes are marked (:data:`TINY_MARKER`) and loaded with
``PreTrainedTokenizerFast`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from clab.errors import ClabError

TINY_MARKER = "clab_tiny.json"
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT (LoRA) checkpoint: adapter weights only
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_source(name_or_path: str) -> None:
    """A path-like source must exist; say which mount is missing if not."""
    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or os.path.sep in name_or_path
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        hint = ""
        if name_or_path.startswith("/models/"):
            hint = (
                f" In Compose this folder is a read-only mount of the host's model folder "
                f"(e.g. ~/model/{Path(name_or_path).name}, or the variable that overrides it): "
                "download the weights there, or set model.name_or_path."
            )
        raise ClabError(f"model.name_or_path: model folder {name_or_path} does not exist.{hint}")
    if looks_local and not (Path(name_or_path).expanduser() / "config.json").is_file():
        raise ClabError(
            f"model.name_or_path: {name_or_path} has no config.json: not a Hugging Face model "
            "folder (is the mount pointing one level too high?)"
        )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(name_or_path)
    if (path / TINY_MARKER).is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation appends on the right
    return tok


def _no_dropout_config(name_or_path: str | Path, **extra):
    """The model's config with every dropout at 0.

    RL scores the same tokens twice, once to record old log-probs and values
    (eval mode) and once to train (train mode); any dropout makes the two
    disagree by more than the update itself (transformers' token-classification
    head adds a 0.1 dropout by default). veRL turns dropout off likewise.
    """
    config = AutoConfig.from_pretrained(str(name_or_path), **extra)
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    config.classifier_dropout = 0.0  # read by the token-classification head, when present
    return config


def _zero_dropout_modules(model: PreTrainedModel) -> PreTrainedModel:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter checkpoint was trained on (a folder or a hub id)."""
    import json

    path = Path(folder) / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as e:
        raise ClabError(f"{path}: not a readable adapter config ({e})") from None
    if not base:
        raise ClabError(f"{path}: base_model_name_or_path is empty")
    return base


def load_adapter_model(
    folder: str | Path,
    dtype: str = "float32",
    trainable: bool = True,
    adapter_dropout: bool = False,
):
    """A PeftModel: the base model (dropout off) with the adapter saved in ``folder``.

    The base is read from the adapter's own config, so a stage checkpoint of a
    LoRA run is a few megabytes and still names everything needed to load it.
    ``adapter_dropout``: keep the adapter's own ``lora_dropout`` (SFT trains with
    it, as the public mixing run's 0.05); off, every dropout is 0, as RL and DPO
    (TRL's ``disable_dropout``) need it.
    """
    from peft import PeftModel

    base = load_policy(adapter_base(folder), dtype)  # its own dropout already 0
    model = PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
    return model if adapter_dropout else _zero_dropout_modules(model)


def holds_adapter(model, folder: str | Path) -> bool:
    """Whether ``model`` (a PeftModel) holds exactly the adapter weights saved in
    ``folder``: what a result keyed to that folder's files was computed with."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("adapter_model*.safetensors"))
    if not files:
        return False
    saved: dict[str, torch.Tensor] = {}
    for f in files:
        saved.update(load_file(f))
    live = get_peft_model_state_dict(model)
    if saved.keys() != live.keys():
        return False
    return all(torch.equal(live[k].detach().cpu().to(v.dtype), v) for k, v in saved.items())


def load_policy(name_or_path: str | Path, dtype: str = "float32") -> PreTrainedModel:
    """A causal LM with every dropout at 0. An adapter checkpoint is loaded onto its base
    and merged: scoring and generation then run at the base model's speed."""
    if is_adapter(name_or_path):
        return load_adapter_model(name_or_path, dtype, trainable=False).merge_and_unload()
    config = _no_dropout_config(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), config=config, dtype=DTYPES[dtype]
    )
    return _zero_dropout_modules(model)


def load_critic(
    name_or_path: str | Path, dtype: str = "float32", seed: int | None = None
) -> PreTrainedModel:
    """A value model: the policy's backbone with a one-output token head, no dropout.

    From a policy checkpoint the head is new: initialised by transformers from
    ``seed`` (when given), so two runs from the same folder start alike; from a
    saved critic it is restored.
    """
    config = _no_dropout_config(name_or_path, num_labels=1)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = AutoModelForTokenClassification.from_pretrained(
            str(name_or_path), config=config, dtype=DTYPES[dtype]
        )
    model.config.pad_token_id = model.config.pad_token_id or model.config.eos_token_id
    return _zero_dropout_modules(model)


def empty_copy(model: PreTrainedModel, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    """A model of ``model``'s class and config with unfilled tensors on ``device``
    (a tied head tied), for a copy filled in place: built from the config, not
    deep-copied, so none of the training model's state (hooks, checkpointing,
    sharding) comes along, and with a config of its own (``_from_config`` would
    otherwise share the model's and retype it)."""
    import copy

    with torch.device("meta"):
        out = type(model)._from_config(copy.deepcopy(model.config), dtype=dtype)
    out.to_empty(device=device)
    out.tie_weights()
    return out


def check_weights(folder: str | Path) -> None:
    """Every safetensors file under ``folder`` opens and its header fits the file.

    Checked before loading, so that a truncated or corrupt checkpoint is named
    in one line instead of surfacing as a traceback deep inside transformers.
    """
    from safetensors import SafetensorError, safe_open

    for f in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError) as e:
            raise ClabError(f"{f}: not a readable safetensors file ({e})") from None


def check_model_folder(folder: str | Path) -> None:
    """A local model folder has a config transformers can read, and sound weights."""
    from transformers import AutoConfig

    if is_adapter(folder):
        check_weights(folder)
        base = adapter_base(folder)
        if Path(base).is_dir():
            check_model_folder(base)
        return
    try:
        AutoConfig.from_pretrained(str(folder))
    except (ValueError, OSError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClabError(
            f"{Path(folder) / 'config.json'}: not a usable model config ({first})"
        ) from None
    check_weights(folder)
