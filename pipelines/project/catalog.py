"""The packaged presets, and which fits a look at the images: folder64 unless it would reject too many
as too small, then gray32 or cifar10 (imagenet128 only by name). Nothing heavy at import (`sagan init --help`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sagan_core.errors import ConfigError

if TYPE_CHECKING:
    from sagan_core.config import Params
    from sagan_core.data.survey import Look

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "folder64"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A packaged preset by name, or a path to a params file."""
    path = PRESETS_DIR / f"{name}.yaml"
    if "/" not in name and path.is_file():
        return path
    if Path(name).is_file():
        return Path(name)
    known = ", ".join(preset_names()) or "none"
    raise ConfigError(f"--preset {name}: no such preset (known: {known}) and no such file")


def look_at(data: Path) -> Look | str:
    from sagan_core.data.survey import look

    try:
        return look(str(data))
    except Exception as e:  # noqa: BLE001 - hostile or odd data: init goes on, prepare will judge
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return text if len(text) <= 200 else text[:200] + "…"


def pick(seen: Look | str | None) -> tuple[str, str]:
    """(preset, why) for the images seen."""
    if seen is None or isinstance(seen, str) or not seen.sizes:
        return DEFAULT_PRESET, "the default"
    if not _too_small(seen, default := _packaged(DEFAULT_PRESET), fatal=True):
        return DEFAULT_PRESET, f"images of {default.data.min_size} px or more"
    if all(seen.gray):
        return "gray32", "small grayscale images"
    return "cifar10", "small color images"


def misfits(seen: Look, params: Params) -> list[str]:
    """What in `params` does not fit the images seen, one phrase each."""
    found = []
    d, n = params.data, len(seen.sizes)
    if small := _too_small(seen, params, fatal=False):
        rejects = f"all {n}" if small == n else f"{small} of the {n}"
        fails = "; prepare would fail" if _too_small(seen, params, fatal=True) else ""
        side = min(map(min, seen.sizes))
        found.append(f"data.min_size {d.min_size} rejects {rejects} looked at ({side} px on the short side{fails})")
    grays = sum(seen.gray)
    if d.channels == 3 and grays == n:
        found.append("data.channels 3 for grayscale images")
    elif d.channels == 1 and grays < n / 2:
        found.append("data.channels 1 for color images (their color is dropped)")
    return found


def line(seen: Look | str | None, preset: str, params: Params, picked: bool) -> str | None:
    """The one line `sagan init --data` prints about the images and the preset (None without --data)."""
    if seen is None:
        return None
    how = f"preset {preset} ({pick(seen)[1]})" if picked else f"preset {preset} (as given)"
    if isinstance(seen, str):
        return f"could not look at the images: {seen}; {how}"
    if not seen.sizes:
        return f"found no image that opens among {seen.num_images} files; {how}: prepare will say why"
    said = _looked(seen)
    wrong = misfits(seen, params)
    if not wrong:
        return f"{said}; picked {how}" if picked else f"{said}; preset {preset} fits them"
    better, _ = pick(seen)
    fix = f"try --preset {better}" if better != preset and not misfits(seen, _packaged(better)) else ""
    fix = fix or "edit those keys in params.yaml"
    return f"warning: {said}; preset {preset} does not fit them: {', '.join(wrong)}; {fix}"


def _too_small(seen: Look, params: Params, fatal: bool) -> int:
    """How many of the sample data.min_size rejects; with `fatal`, 0 unless prepare would fail."""
    n = sum(min(size) < params.data.min_size for size in seen.sizes)
    return n if not fatal or n > params.data.max_rejected_fraction * len(seen.sizes) else 0


def _packaged(name: str) -> Params:
    from sagan_core.params_file import load_params

    return load_params(PRESETS_DIR / f"{name}.yaml")


def _looked(seen: Look) -> str:
    k = seen.num_classes
    classes = f" in {k} class{'' if k == 1 else 'es'}" if k else " (no class folders)"
    by_side = sorted(seen.sizes, key=min)
    (w, h), (big_w, big_h) = by_side[0], by_side[-1]
    size = f"{w}x{h} px" if (w, h) == (big_w, big_h) else f"{w}x{h} to {big_w}x{big_h} px"
    grays = sum(seen.gray)
    kind = {len(seen.gray): "grayscale", 0: "color"}.get(grays, f"{grays} of {len(seen.gray)} grayscale")
    unread = f", {seen.unreadable} unreadable" if seen.unreadable else ""
    return f"looked at {len(seen.sizes)} of {seen.num_images} images{classes}: {size}, {kind}{unread}"
