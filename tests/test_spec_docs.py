"""docs/specs.md is the spec models written out: fresh, complete, and what `clab validate` says."""

from dataclasses import asdict
from typing import Literal

import pytest
import yaml
from pydantic import Field

from clab.cli import main
from clab.spec_docs import missing_descriptions, render
from clab.specs import KIND_HELP, KINDS, RENAMED, Spec, field_at, spec_class
from conftest import REPO
from rl_spec import TINY

PAGE = REPO / "docs" / "specs.md"


def test_committed_page_is_fresh():
    assert PAGE.read_text() == render(), (
        "docs/specs.md is stale: run `clab specs -o docs/specs.md` and commit it"
    )


def test_every_field_has_a_description():
    missing = missing_descriptions()
    assert not missing, "fields without a description: " + ", ".join(missing)


class Undescribed(Spec):
    """A kind with a field nobody explained."""

    kind: Literal["undescribed"] = Field("undescribed", description=KIND_HELP)
    depth: int = 3


def test_an_undescribed_field_is_named(monkeypatch):
    monkeypatch.setitem(KINDS, "undescribed", "test_spec_docs:Undescribed")
    assert "undescribed: depth" in missing_descriptions()


def _row(kind: str, key: str) -> str:
    """The key's row in the kind's part of the page."""
    part = PAGE.read_text().split(f"\n## {kind}\n")[1].split("\n## ")[0]
    return next(line for line in part.splitlines() if line.startswith(f"| `{key}` |"))


@pytest.mark.parametrize(
    ("service", "override", "key"),
    [
        ("curriculum-trainer-1.5b", "batch.mini=0", "batch.mini"),
        ("k1-trainer", "model.ffn_size=1", "model.ffn_size"),
        ("dpo-trainer", "warmup.lr=0", "warmup.lr"),
        ("mixing-trainer", "lora.dropout=2", "lora.dropout"),
    ],
)
def test_validate_error_says_what_the_page_says(service, override, key, capsys):
    spec = REPO / "services" / f"{service}.yaml"
    assert main(["validate", str(spec), "--set", override]) == 2
    err = capsys.readouterr().err
    kind = yaml.safe_load(spec.read_text())["kind"]
    text = field_at(spec_class(kind), key.split(".")).description
    assert text in err
    assert f"| {text.replace('|', chr(92) + '|')} |" in _row(kind, key)


@pytest.mark.parametrize(
    ("service", "old", "new"),
    [
        ("curriculum-trainer-1.5b", "model.tiny_hidden_size=64", "model.hidden_size"),
        ("k1-trainer", "model.ffn=256", "model.ffn_size"),
        ("dpo-trainer", "model.warmup_steps=10", "warmup.steps"),
    ],
)
def test_an_old_key_names_its_new_name(service, old, new, capsys):
    assert main(["validate", str(REPO / "services" / f"{service}.yaml"), "--set", old]) == 2
    err = capsys.readouterr().err
    assert f"field '{old.split('=')[0]}'" in err and f"write '{new}'" in err


def test_renamed_keys_point_at_real_keys():
    kinds = [spec_class(k) for k in KINDS]
    for old, new in RENAMED.items():
        assert any(field_at(k, new.split(".")) for k in kinds), f"{old} -> {new}: no such key"
        assert not any(field_at(k, old.split(".")) for k in kinds), f"{old} is a key again"


def test_unknown_key_lists_the_section_keys(capsys):
    spec = REPO / "services" / "k1-trainer.yaml"
    assert main(["validate", str(spec), "--set", "optim.lrr=1"]) == 2
    assert "known here: name, lr, weight_decay, momentum" in capsys.readouterr().err


def test_ppo_config_carries_the_spec():
    """Every PPO hyperparameter of a spec reaches the trainer, its batch split by worker."""
    from clab.training.countdown_rl_spec import CountdownRLSpec, PPOSpec
    from clab.training.ppo import PPOConfig

    fixed = {"gamma": 0.5, "lam": 0.5, "clip_ratio_c": 2.5}  # bounded, or None by default
    ppo = {k: fixed[k] if k in fixed else v * 3 for k, v in PPOSpec().model_dump().items()}
    batch = {"train": 8, "mini": 8, "micro": 2}
    spec = CountdownRLSpec.model_validate(
        {**TINY, "ppo": ppo, "batch": batch, "resources": {"num_workers": 2}}
    )
    cfg = asdict(PPOConfig.from_spec(spec, world=2, compute_dtype=None, fsdp=True))
    assert {k: cfg[k] for k in ppo} == ppo
    assert cfg["mini_batch_size"] == 4 and cfg["micro_batch_size"] == 2
    assert cfg["strategy"] == "fsdp" and cfg["max_response_length"] == 8
    defaults = CountdownRLSpec.model_validate({**TINY, "ppo": {}, "batch": {}, "rollout": {}})
    assert PPOConfig() == PPOConfig.from_spec(defaults, 1, None, False)  # said once: the spec


def test_a_run_started_under_the_old_names_resumes():
    """The renames build the same models: a stored fingerprint in the old names is no change."""
    from clab.runs.fingerprint import changed_fields, field_default
    from clab.runs.runner import spec_fingerprint
    from clab.training.k1_lm_spec import K1Spec

    spec = K1Spec(name="k", model={"ffn_size": 64})
    new = spec_fingerprint(spec)
    old = {("model.ffn" if k == "model.ffn_size" else k): v for k, v in new.items()}
    old["model.preset"] = "small"
    default = lambda key: field_default(K1Spec, key)  # noqa: E731
    assert changed_fields(old, new, default) == []
    assert changed_fields({**old, "model.ffn": 32}, new, default) == ["model.ffn_size: 32 -> 64"]
