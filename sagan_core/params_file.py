"""params.yaml (or a preset) → validated `Params`: reading, `--set key.path=value` overrides, validation.

Overrides are applied to the raw YAML before validation, so they are checked exactly like the file.
A validation error becomes the one line a user reads: `key.path: expected ..., got ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sagan_core.config import Params
from sagan_core.errors import ConfigError

# pydantic error types -> what was expected, in plain words
_EXPECTED = {
    **dict.fromkeys(("int_parsing", "int_type", "int_from_float"), "an integer"),
    **dict.fromkeys(("float_parsing", "float_type"), "a number"),
    **dict.fromkeys(("bool_parsing", "bool_type"), "true or false"),
    **dict.fromkeys(("dict_type", "model_type"), "a mapping of keys"),
    **{"finite_number": "a finite number", "string_type": "a string", "list_type": "a list"},
}
_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error -> 'expected ..., got ...' in plain words."""
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing key"
    if kind in _OPS:
        op = _OPS[kind]
        bound = next(iter(ctx.values()))
        what = "a positive number" if kind == "greater_than" and bound == 0 else f"a number {op} {bound}"
        return f"expected {what}, got {got!r}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {got!r}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return msg if "got" in msg else f"{msg}, got {got!r}"


def one_line(e: ValidationError) -> str:
    """The first error, naming its key path, plus how many more there are."""
    err = e.errors()[0]
    path = ".".join(str(p) for p in err["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    msg = _describe(err)
    return f"{path}: {msg}{more}" if path else f"{msg}{more}"


def validate(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line(e)) from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML, like `dvc exp run -S`)."""
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    parts = key.split(".")
    node = raw
    for i, p in enumerate(parts[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = value


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read, override and validate params. A missing default params.yaml means all defaults; every
    way a given file can be unusable (a directory, not UTF-8, empty, not YAML) is one ConfigError."""
    path, raw = Path(path), {}
    if not path.exists() and str(path) != "params.yaml":
        raise ConfigError(f"--params {path}: no such file")
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else f"not UTF-8 text, byte {e.start}"
            raise ConfigError(f"--params {path}: cannot read it ({why})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
        # Empty is most likely truncated or the wrong file: training on the defaults would hide that.
        if raw is None:
            raise ConfigError(f"{path}: empty (no params in it); delete it to use the built-in defaults")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, eval, registry)")
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw)
