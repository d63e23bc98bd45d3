"""What a run was started with, so that a rerun cannot silently train something else.

The fingerprint is the spec's own values (every field, defaults filled in)
less the ones a rerun may change safely. A rerun whose fingerprint differs
stops with the list of fields; ``--restart`` moves the old run aside.
``rounds`` may grow (a longer run continues the same one) but not shrink.
"""

from __future__ import annotations

from typing import Any


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


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Fields whose value differs, as 'field: old -> new'; a grown ``rounds`` is allowed."""
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a == b:
            continue
        if key == "rounds" and isinstance(a, int) and isinstance(b, int) and b > a:
            continue
        out.append(f"{key}: {a!r} -> {b!r}")
    return out
