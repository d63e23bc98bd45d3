"""Specs: the YAML files that say what a service does.

A spec is a YAML mapping with a ``kind:``; the kind picks a pydantic model
(unknown keys rejected) and a recipe that runs it. Users' mistakes become one
:class:`ClabError` naming the file, the field and what is wrong.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from clab.errors import ClabError

_INTEGER = (int, int | None)


class SpecModel(BaseModel):
    """Base for every spec section: strict about keys, so a typo is an error."""

    # no inf or NaN anywhere: an infinite learning rate trained a stage to NaN first
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _integers_are_integers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic's lax mode reads ``true`` as 1, ``4.0`` as 4 and ``"100"`` as 100 for
        an integer field: in a spec each is a slip (a flag in the wrong key, a
        fraction where a count goes, a quoted number), so it is refused."""
        field = cls.model_fields.get(info.field_name or "")
        if (
            field is not None
            and field.annotation in _INTEGER
            and isinstance(value, bool | float | str)
        ):
            raise ValueError("expected an integer")  # the formatter adds "(got ...)"
        return value


KIND_HELP = "what the spec is: picks its keys and what `clab run` does with it"


class Spec(SpecModel):
    """A whole spec file. Subclasses set ``kind`` and implement ``run``."""

    kind: str
    KIND: ClassVar[str]

    def reads(self) -> list[Path]:
        """Volume paths this spec reads; Compose must mount them (tests check)."""
        return []

    def writes(self) -> list[Path]:
        """Volume paths this spec writes."""
        return []

    def run(self) -> None:
        raise NotImplementedError


# kind -> "module:Class"; imported lazily so `clab validate` stays fast and a
# kind's heavy dependencies load only when it runs.
KINDS: dict[str, str] = {
    "countdown": "clab.data.countdown.curriculum:CountdownSpec",
    "countdown-random-split": "clab.data.countdown.random_split:RandomSplitSpec",
    "countdown-rl": "clab.training.countdown_rl_spec:CountdownRLSpec",
    "k1-lm": "clab.training.k1_lm_spec:K1Spec",
    "replay-mixing": "clab.training.mixing_spec:MixingSpec",
    "continual-dpo": "clab.training.dpo_spec:ContinualDPOSpec",
    "evaluate": "clab.evaluation.evaluator:EvaluateSpec",
    "plot": "clab.plotting.plotter:PlotSpec",
}


def spec_class(kind: str) -> type[Spec]:
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ClabError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ClabError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``dotted.key=value`` items; values are YAML (``5``, ``true``, ``[3,4]``)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ClabError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


# Keys renamed when the kinds' model sections became one (clab.models.spec): an old
# spec gets the new name in its error, not only "unknown key".
RENAMED: dict[str, str] = {
    "model.tiny_hidden_size": "model.hidden_size",
    "model.tiny_layers": "model.layers",
    "model.tiny_vocab_size": "model.vocab_size",
    "model.tiny_split_digits": "model.split_digits",
    "model.ffn": "model.ffn_size",
    "model.warmup_steps": "warmup.steps",
    "model.warmup_lr": "warmup.lr",
    "model.warmup_batch_size": "warmup.batch_size",
}


def section_models(annotation: Any) -> list[type[BaseModel]]:
    """The spec sections an annotation holds (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in section_models(arg)]


def field_at(model: type[BaseModel], loc: Sequence[str | int]) -> FieldInfo | None:
    """The field a validation error's location names (list indices skipped), or None.

    The one lookup both `clab validate`'s errors and docs/specs.md read descriptions
    through, so the two say the same thing."""
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        inner = section_models(info.annotation)
        model = inner[0] if inner else None
    return info


def _format_errors(source: str, err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not isinstance(p, int)]
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            dotted = ".".join(str(p) for p in loc)
            if dotted in RENAMED:
                msg = f"unknown key: renamed, write '{RENAMED[dotted]}'"
            else:
                up = field_at(model, loc[:-1]) if loc[:-1] else None
                parent = section_models(up.annotation) if up else [model]
                fields = parent[0].model_fields.items() if parent else []
                known = ", ".join(f.alias or n for n, f in fields)  # as a spec spells them
                msg = f"unknown key (check its spelling; known here: {known})"
        else:
            msg = e["msg"]
            if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
            info = field_at(model, loc) if loc else None
            if info is not None and info.description:
                msg += f". {loc[-1]}: {info.description}"
        lines.append(f"{source}: field '{field}': {msg}")
    return "\n".join(lines)


def read_spec_data(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A spec file's mapping with the overrides applied, not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ClabError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ClabError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ClabError(f"{path}: not a text file (a spec is UTF-8 YAML)") from None
    if not isinstance(data, dict):
        raise ClabError(f"{path}: a spec must be a YAML mapping with a 'kind:' key")
    return apply_overrides(data, overrides)


def validate_spec(source: str | Path, data: dict[str, Any]) -> Spec:
    """The spec model of ``data``'s kind; errors name ``source`` and the field."""
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        raise ClabError(f"{source}: field 'kind': {kind!r} is not a known kind (known: {known})")
    try:
        cls = spec_class(kind)
        return cls.model_validate(data)
    except ValidationError as e:
        raise ClabError(_format_errors(str(source), e, cls)) from None


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read, override and validate a spec file."""
    return validate_spec(path, read_spec_data(path, overrides))
