"""The failures a user meets, each a one-line message: ConfigError (an invalid request, exit 2),
SaganError (valid, but the work failed, exit 1), WriteError (a file not written). Anything else
escaping is a bug and keeps its traceback."""

from __future__ import annotations

import errno
import os
import reprlib


class SaganError(RuntimeError):
    exit_code = 1


class ConfigError(SaganError):
    exit_code = 2


def shown(value: object, limit: int = 100) -> str:
    """A user's value in a one-line message: its repr, cut at `limit` with its type and size; bounded
    work too (reprlib never builds the whole repr of a huge value)."""
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


_REPR = reprlib.Repr()  # Python 3.11's takes no arguments
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 120, 120, 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 20
_REPR.maxarray = 20


# errnos of a disk that refuses a write: full, over quota, file too large, read-only, failing
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def os_cause(error: OSError) -> str:
    """`ENOSPC: No space left on device`."""
    code = errno.errorcode.get(error.errno or 0)
    text = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    return f"{code}: {text}" if code else f"{type(error).__name__}: {text}"


def storage_cause(e: BaseException | None) -> OSError | None:
    """The OSError of a disk that refused a write behind `e`, which libraries wrap (torch, MLflow)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


class WriteError(SaganError):
    """`<path>: could not write (ENOSPC: ...); <kept>`, `kept` saying what is still there."""

    def __init__(self, path: object, error: OSError, kept: str = ""):
        self.path, self.error = path, error
        super().__init__(f"{path}: could not write ({os_cause(error)})" + (f"; {kept}" if kept else ""))
