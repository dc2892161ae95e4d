"""A class by name or index, for `sagan sample --class`: the served model's own rule.

Serving reads a request's "class" field with GeneratorModel.class_id (generator_pyfunc.py, which
the logged model carries and sagan cannot change without refusing older models): a class name
first (the data's class folders, which the checkpoint and the logged model carry), then an index
0..N-1 (classes are numbered in the sorted order of their names). `class_index` calls that same
method, so the CLI and serving cannot disagree; a folder named like a number keeps its name:
among folders "1", "10", "2", ..., `--class 10` is the folder "10". What it does not know is one
line naming a few classes (and the class differing only in case: `c` for the folder `C`).
"""

from __future__ import annotations

import contextlib

from sagan_core.errors import ConfigError, shown

SHOWN = 8  # class names a refusal lists


def class_index(value: str, num_classes: int, names: list[str], model: str) -> int:
    """`--class VALUE` of `model` (num_classes classes named `names`, or unnamed) as an index."""
    from pipelines.tracking.generator_pyfunc import GeneratorModel

    if not num_classes:
        raise ConfigError(f"--class: {model} is an unconditional generator")
    rule = GeneratorModel()  # only its class_id: no network is loaded
    rule.num_classes, rule.class_names = num_classes, list(names)
    with contextlib.suppress(ValueError):
        return rule.class_id(value)
    text = str(value).strip()
    close = [c for c in names if c.casefold() == text.casefold()]
    hint = f"; did you mean {shown(close[0], 40)}?" if close else ""
    few = ", ".join(shown(c, 20) for c in names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
    known = f"a class name ({few}) or " if names else ""
    raise ConfigError(
        f"--class {shown(text, 40)}: no such class; expected {known}an index 0..{num_classes - 1}{hint}"
    )


def class_name(k: int, names: list[str]) -> str:
    """Class k as the served model answers it: its name, else its index."""
    return names[k] if k < len(names) else str(k)
