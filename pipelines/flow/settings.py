"""The flow's typed parameters: a form of params.yaml overrides the Prefect UI can render.

`FlowSettings` has one optional field per params.yaml key, section by section, with the key's type
(a number box, a checkbox, a drop-down for choices) and no default value: an empty field keeps
params.yaml's value. Bounds are left to `Params` on purpose, so a wrong value fails the flow run
with the same one-line message as `--set` (`train.lr_d: expected a positive number, got -1`) instead
of a JSON-schema error. A null value cannot be told apart from "not overridden" here; the flow's
`overrides` list (`key.path=value` strings, as `--set`) takes those.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

from sagan_core.config import Params


def _section_form(name: str, section: type[BaseModel]) -> type[BaseModel]:
    fields = {
        key: (info.annotation | None, Field(None, description=f"{name}.{key} (empty: params.yaml)"))
        for key, info in section.model_fields.items()
    }
    config = ConfigDict(extra="forbid", title=f"{name} overrides")
    return create_model(f"{name.capitalize()}Overrides", __config__=config, **fields)


_SECTIONS = {name: info.annotation for name, info in Params.model_fields.items()}
FlowSettings = create_model(
    "FlowSettings",
    __config__=ConfigDict(extra="forbid", title="params.yaml overrides"),
    **{
        name: (_section_form(name, cls), Field(default_factory=_section_form(name, cls)))
        for name, cls in _SECTIONS.items()
    },
)
FlowSettings.__doc__ = "params.yaml overrides, section by section; empty fields keep the file's values."


def to_overrides(settings: BaseModel | dict | None) -> list[str]:
    """`key.path=value` strings (as `--set` takes them) for every field that is set."""
    if settings is None:
        return []
    data = settings.model_dump() if isinstance(settings, BaseModel) else dict(settings)
    out = []
    for section, values in data.items():
        for key, value in (values or {}).items():
            if value is not None:
                out.append(f"{section}.{key}={json.dumps(value)}")  # JSON is YAML: read back exactly
    return out


def split_overrides(assignments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`--set` strings as (typed settings for the form, what the form cannot hold: nulls)."""
    settings: dict[str, dict[str, Any]] = {}
    rest = []
    for assignment in assignments:
        path, _, value = assignment.partition("=")
        section, _, key = path.strip().partition(".")
        parsed = yaml.safe_load(value) if value.strip() else None
        if (
            parsed is None
            or section not in _SECTIONS
            or "." in key
            or key not in _SECTIONS[section].model_fields
        ):
            rest.append(assignment)
        else:
            settings.setdefault(section, {})[key] = parsed
    return FlowSettings.model_validate(settings).model_dump(exclude_none=True), rest
