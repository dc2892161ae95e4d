"""`sagan sample --class`: a class by name, else by index 0..N-1, with the served model's own rule
(GeneratorModel.class_id), so the CLI and serving cannot disagree; an unknown one is one line
naming a few classes (and one differing only in case).
"""

from __future__ import annotations

import contextlib

from sagan_core.errors import ConfigError, shown

SHOWN = 8  # class names a refusal lists


def class_index(value: str, num_classes: int, names: list[str], model: str) -> int:
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
    raise ConfigError(f"--class {shown(text, 40)}: no such class; expected {known}an index 0..{num_classes - 1}{hint}")


def class_name(k: int, names: list[str]) -> str:
    return names[k] if k < len(names) else str(k)
