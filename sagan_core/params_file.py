"""params.yaml (or a preset) + `--set key.path=value` overrides → validated `Params`, or one line
`key.path: expected ..., got ...`. Overrides apply to the raw YAML, so they are checked like the file.
Files over MAX_PARAMS_BYTES and YAML aliases (&/*: "billion laughs") are refused before parsing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sagan_core.config import Params
from sagan_core.errors import ConfigError, shown

MAX_PARAMS_BYTES = 1 << 20


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a params file may not hold."""


class _ParamsLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: a 1 MiB list 4 s, not 17
    """SafeLoader whose values Python cannot build (a 5,000-digit integer, 2020-13-01) are YAML errors."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # raised by int(), datetime.date(), ...
            why = str(e).split(";")[0]  # Python's reason, without its advice (sys.set_int_max_str_digits)
            problem = f"cannot read {shown(node.value, 40)} ({why if len(why) <= 100 else type(e).__name__})"
            raise _Refused(problem=problem, problem_mark=node.start_mark) from None


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values; anchors and aliases are refused from the events, before anything
    is composed (nine levels of nine aliases are 10^9 values from 400 bytes)."""
    for event in yaml.parse(text, Loader=_ParamsLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                problem="aliases (&/*) are not allowed in params files", problem_mark=event.start_mark
            )
    return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader)


def read_params_text(path: Path, what: str = "--params") -> str:
    """The text of a params file of at most MAX_PARAMS_BYTES (stat, then at most one byte more: a
    file growing meanwhile, /dev/zero); one ConfigError otherwise."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1) if size <= MAX_PARAMS_BYTES else b""
        if size > MAX_PARAMS_BYTES or len(data) > MAX_PARAMS_BYTES:
            got = f"{size:,} bytes" if size > MAX_PARAMS_BYTES else "it grew while read"
            raise ConfigError(
                f"{what} {path}: too large for a params file ({got}; at most {MAX_PARAMS_BYTES:,} bytes)"
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else f"not UTF-8 text, byte {e.start}"
        raise ConfigError(f"{what} {path}: cannot read it ({why})") from None


def parse_params_text(text: str, path: Path) -> Any:
    try:
        return parse_yaml(text)
    except _Refused as e:
        raise ConfigError(f"{path}: line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None


# pydantic error types -> what was expected, in plain words
_EXPECTED = {
    **dict.fromkeys(("int_parsing", "int_type", "int_from_float"), "an integer"),
    **dict.fromkeys(("float_parsing", "float_type"), "a number"),
    **dict.fromkeys(("bool_parsing", "bool_type"), "true or false"),
    **dict.fromkeys(("dict_type", "model_type"), "a mapping of keys"),
    **{"finite_number": "a finite number", "string_type": "a string", "list_type": "a list"},
}
_PLAIN = {"extra_forbidden": "unknown key", "missing": "missing key"}
_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind in _OPS:
        op = _OPS[kind]
        bound = next(iter(ctx.values()))
        what = "a positive number" if kind == "greater_than" and bound == 0 else f"a number {op} {bound}"
        return f"expected {what}, got {shown(got)}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {shown(got)}"
    if kind in ("too_long", "string_too_long"):  # the size only: the string may hold a password
        unit = "characters" if kind == "string_too_long" else "items"
        return f"expected at most {ctx['max_length']:,} {unit}, got {len(got):,}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown(got)}"
    msg = err["msg"].removeprefix("Value error, ")
    return msg if "got" in msg else f"{msg}, got {shown(got)}"


def _key(key: str, limit: int = 80) -> str:
    """A user's key path, cut and escaped when odd (1 MiB, a newline)."""
    return key if key.isprintable() and len(key) <= limit else shown(key, limit)


def validate(raw: dict[str, Any]) -> Params:
    """Params, or one line: the first error naming its key path, plus how many more there are."""
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        path = ".".join(_key(str(p), 60) for p in err["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError((f"{path}: " if path else "") + _describe(err) + more) from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML, like `dvc exp run -S`)."""
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {shown(assignment)}: expected key.path=value")
    parts = key.split(".")
    node = raw
    for i, p in enumerate(parts[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {_key(key)}: {_key('.'.join(parts[: i + 1]))} is not a section")
        node = child
    try:
        node[parts[-1]] = parse_yaml(value) if value.strip() else None
    except _Refused as e:
        raise ConfigError(f"--set {_key(key)}: {e.problem.replace('params files', 'params')}") from None
    except yaml.YAMLError:  # not YAML (`a: b: c`): the string itself, as `dvc exp run -S` takes it
        node[parts[-1]] = value


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] | None = ()) -> Params:
    """Read, override and validate params; a missing default params.yaml means all defaults."""
    path, raw = Path(path), {}
    if not path.exists() and str(path) != "params.yaml":
        raise ConfigError(f"--params {path}: no such file")
    if path.exists():
        raw = parse_params_text(read_params_text(path), path)
        # Empty is most likely truncated or the wrong file: training on the defaults would hide that.
        if raw is None:
            raise ConfigError(f"{path}: empty (no params in it); delete it to use the built-in defaults")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, eval, registry)")
    for assignment in overrides or ():
        apply_override(raw, assignment)
    return validate(raw)
