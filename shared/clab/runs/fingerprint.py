"""What a run was started with, so that a rerun cannot silently train something else.

The fingerprint is the spec's own values (every field, defaults filled in)
less the ones a rerun may change safely. A rerun whose fingerprint differs
stops with the list of fields; ``--restart`` moves the old run aside.
``rounds`` may grow (a longer run continues the same one) but not shrink.
A field that a newer clab added (absent from the stored fingerprint) is no
change while it holds its default: a key is only ever added with a default
that keeps the old behaviour, so runs started before it can still resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter

from clab.specs import RENAMED

NO_DEFAULT = object()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: fields named as a user writes them in --set."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def fingerprint(spec_values: dict[str, Any], safe: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in flatten(spec_values).items() if k not in safe and k != "name"}


def field_default(model: type[BaseModel], key: str) -> Any:
    """The JSON value of a dotted field's default in a spec class, or NO_DEFAULT."""
    *path, last = key.split(".")
    for part in path:
        field = model.model_fields.get(part)
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return NO_DEFAULT
        model = sub
    field = model.model_fields.get(last)
    if field is None or field.is_required():
        return NO_DEFAULT
    return TypeAdapter(Any).dump_python(field.get_default(call_default_factory=True), mode="json")


def in_todays_names(old: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint stored before keys were renamed (:data:`clab.specs.RENAMED`) in
    today's names: the renames build the same models, so such a run still resumes."""
    out = {RENAMED.get(k, k): v for k, v in old.items()}
    if out.get("model.preset") == "small":  # K-1's preset, the same model, now named tiny
        out["model.preset"] = "tiny"
    return out


def changed_fields(
    old: dict[str, Any],
    new: dict[str, Any],
    default: Callable[[str], Any] = lambda key: NO_DEFAULT,
) -> list[str]:
    """Fields whose value differs, as 'field: old -> new'; a grown ``rounds`` is allowed,
    and so is a field new since the run started that holds its ``default``."""
    old, out = in_todays_names(old), []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a == b:
            continue
        if key not in old and key in new and default(key) == b:
            continue
        if key == "rounds" and isinstance(a, int) and isinstance(b, int) and b > a:
            continue
        out.append(f"{key}: {a!r} -> {b!r}")
    return out
