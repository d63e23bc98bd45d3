"""docs/specs.md, written from the spec models: every kind's keys, types, defaults,
bounds and descriptions.

The page is generated (``clab specs -o docs/specs.md``) and a test compares it with
a fresh rendering, so it cannot drift from the models `clab validate` checks
against; the same test refuses a field without a description.
"""

from __future__ import annotations

import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from clab.specs import KINDS, section_models, spec_class

HEADER = """# Spec reference

Every key of every spec kind, generated from the pydantic models by
`clab specs -o docs/specs.md` (do not edit by hand: a test regenerates it and
fails when it differs). A spec file is YAML with a `kind:`; any key below may be
set in the file or with `--set dotted.key=value`, and an unknown key is an error.
`clab validate SPEC` prints a spec with every default filled in.
"""


def _type(annotation: Any) -> str:
    """A field's type as a spec writer reads it: null for None, quoted choices."""
    if annotation is NoneType:
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(_type(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo, owner: BaseModel | None, name: str) -> str:
    """The default as YAML would show it; within a section whose default is not its
    class's own (mixing's task_a), the section's value."""
    if owner is not None:
        value = getattr(owner, name)
    elif info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "see below"
    value = TypeAdapter(info.annotation).dump_python(value, mode="json", by_alias=True)
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = [{k: v for k, v in item.items() if v is not None} for item in value]
    text = str(value).replace("'", "").replace("|", "\\|")
    return f"`{text}`"


_BOUNDS = {at.Ge: (">=", "ge"), at.Gt: (">", "gt"), at.Le: ("<=", "le"), at.Lt: ("<", "lt")}


def _constraints(info: FieldInfo) -> str:
    out = []
    for m in info.metadata:
        for kind, (sign, attr) in _BOUNDS.items():
            if isinstance(m, kind):
                out.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, at.MinLen):
            out.append(f"at least {m.min_length} item")
        if getattr(m, "pattern", None):
            out.append(f"pattern `{m.pattern}`")
    return ", ".join(out).replace("|", "\\|")


def sections(
    model: type[BaseModel], prefix: str = "", value: BaseModel | None = None
) -> list[tuple[str, type[BaseModel], BaseModel | None]]:
    """(dotted prefix, model, its default value or None) for a spec and every section
    in it, depth first; a list of sections is ``key[]``."""
    out = [(prefix, model, value)]
    for name, info in model.model_fields.items():
        for inner in section_models(info.annotation):
            if typing.get_origin(info.annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(info.annotation)
            ):
                out += sections(inner, f"{prefix}{name}[].")
                continue
            if value is not None:
                child = getattr(value, name)
            elif info.default_factory is not None:
                child = info.default_factory()
            else:
                child = None
            out += sections(inner, f"{prefix}{name}.", child if isinstance(child, inner) else None)
    return out


def missing_descriptions() -> list[str]:
    """``kind: dotted.key`` of every field without a description."""
    return [
        f"{kind}: {prefix}{name}"
        for kind in KINDS
        for prefix, model, _ in sections(spec_class(kind))
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]


def _table(prefix: str, model: type[BaseModel], value: BaseModel | None) -> list[str]:
    rows = ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        key = f"`{prefix}{name}`"
        if info.alias:
            key = f"`{prefix}{info.alias}`"
        desc = (info.description or "").replace("|", "\\|").replace("<", "&lt;")
        rows.append(
            f"| {key} | {_type(info.annotation)} | {_default(info, value, name)} | "
            f"{_constraints(info)} | {desc} |"
        )
    return rows


def render() -> str:
    """The whole page."""
    lines = [HEADER, "Kinds: " + ", ".join(f"[`{k}`](#{k})" for k in KINDS) + ".", ""]
    for kind in KINDS:
        cls = spec_class(kind)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines += [f"## {kind}", "", f"{doc} (`{cls.__module__}.{cls.__name__}`)", ""]
        for prefix, model, value in sections(cls):
            if prefix:
                lines += [f"### `{prefix.rstrip('.')}`", ""]
            lines += [*_table(prefix, model, value), ""]
    return "\n".join(lines)
