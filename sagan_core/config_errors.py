"""A pydantic validation error as the one line a user reads: `key.path: expected ..., got ...`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

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
