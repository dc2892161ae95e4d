"""The two kinds of failure a user can meet, mapped to exit codes by the CLI.

ConfigError: the user asked for something invalid (bad params, bad flag, missing input) -> exit 2.
SaganError: the request was valid but the work failed (diverged training, corrupt data) -> exit 1.
Both carry a one-line, human message; anything else escaping is a bug and keeps its traceback.
`shown` is how a user's value appears in such a line: bounded, whatever the value.
"""

import reprlib


class SaganError(RuntimeError):
    """A runtime failure with a message meant for the user (exit code 1)."""

    exit_code = 1


class ConfigError(SaganError):
    """A usage or configuration mistake (exit code 2)."""

    exit_code = 2


def shown(value: object, limit: int = 100) -> str:
    """A user's value as a one-line message shows it: its repr, or when longer than `limit` the
    first `limit` characters, "…" and the value's type and size, whatever the input (a 1 MiB string,
    a list of millions). The work is bounded too: reprlib never builds the whole repr of a huge value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"an integer of {value.bit_length():,} bits"  # repr refuses ints over 4300 digits
    if isinstance(value, str) and len(value) > limit:
        return f"{repr(value[:limit])[:limit]}… (a string of {len(value):,} characters)"
    text = _REPR.repr(value)  # "..." where reprlib left out items or nesting
    if len(text) <= limit and "..." not in text:
        return text
    n = len(value) if isinstance(value, (list, tuple, dict, set)) else None
    size = "" if n is None else f" of {n:,} item{'' if n == 1 else 's'}"
    return f"{text[:limit]}… ({type(value).__name__}{size})"


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()  # Python 3.11's takes no arguments
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 120, 120, 120
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 20
    return r


_REPR = _bounded_repr()
