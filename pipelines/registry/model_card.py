"""Model cards: the markdown description of every registered version and of the registered model.

A version's card answers what a reader of the registry page asks: what data (source, content_hash,
images, classes), what training (steps, the params that shape the model, hardware, time), how it was
evaluated and what it scored (protocol, FID/KID/IS), why it was or was not promoted, and how to
sample it. Everything comes from records already made: the run (params, tags), eval.record.json and the
prepared data's manifest; a missing piece reads "unknown", never a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.quoting import json_sh, md, md_code, sh
from sagan_core.config import Params


def _manifest(params: Params) -> dict[str, Any]:
    try:
        return json.loads((Path(params.data.prepared_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _num(value: Any, fmt: str = ".4g") -> str:
    return format(float(value), fmt) if isinstance(value, (int, float)) else "unknown"


def _duration(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return "unknown"
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s"


def _classes(manifest: dict[str, Any]) -> str:
    names = manifest.get("class_names") or []
    if not names:
        return "none (unconditional)" if manifest else "unknown"
    shown = ", ".join(md(n) for n in names[:20]) + (", …" if len(names) > 20 else "")
    return f"{len(names)}: {shown}"


def _data(params: Params, run_params: dict[str, str], tags: dict[str, str]) -> list[str]:
    m = _manifest(params)
    res = f"{m['resolution']} px, {m['channels']} channel(s)" if "resolution" in m else "unknown"
    return [
        "## Data",
        "",
        "| | |",
        "|---|---|",
        f"| source | {md_code(run_params.get('data.source', params.data.source))} |",
        f"| content_hash | {md_code(tags.get('sagan.data.content_hash', m.get('content_hash', 'unknown')))} |",
        f"| images | {m['num_images']:,} |" if "num_images" in m else "| images | unknown |",
        f"| classes | {_classes(m)} |",
        f"| resolution | {res} |",
    ]


def _attention(run_params: dict[str, str], tags: dict[str, str]) -> str:
    """Where the attention blocks were: the run's model spec (params' null/auto resolved by the
    trainer, lineage.py's `sagan.spec` tag), else the params as written."""
    try:
        spec = json.loads(tags["sagan.spec"])
        g, d = (", ".join(f"{r}×{r}" for r in spec[k]) or "none" for k in ("g_attn", "d_attn"))
    except (KeyError, ValueError, TypeError):
        return f"G {run_params.get('model.g_attn', '?')} / D {run_params.get('model.d_attn', '?')} (params)"
    return f"G at {g}, D at {d} (feature maps)"


def _training(run_params: dict[str, str], tags: dict[str, str], step: Any) -> list[str]:
    p = run_params.get
    arch = f"z_dim {p('model.z_dim', '?')}, g_ch {p('model.g_ch', '?')}, d_ch {p('model.d_ch', '?')}"
    opt = f"Adam lr_G {p('train.lr_g', '?')}, lr_D {p('train.lr_d', '?')}, β=({p('train.beta1', '?')}, "
    opt += f"{p('train.beta2', '?')}), n_dis {p('train.n_dis', '?')}, hinge loss"
    ema = f"decay {p('train.ema_decay', '?')} from step {p('train.ema_start', '?')} (the EMA generator is registered)"
    device, world = tags.get("sagan.device", "unknown"), tags.get("sagan.world_size", "1")
    # what ran (lineage.py's tags); a run logged before they existed: the setting, marked as such
    precision = tags.get("sagan.precision") or f"setting {p('train.precision', '?')}"
    return [
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {step} of {p('train.steps', '?')} (batch {p('train.batch_size', '?')} per process) |",
        f"| architecture | {arch} |",
        f"| self-attention | {_attention(run_params, tags)} |",
        f"| optimizer | {opt} |",
        f"| EMA | {ema} |",
        f"| seed | {p('train.seed', '?')} |",
        f"| hardware | {device} × {world} process(es) |",
        f"| precision | {precision} |",
        f"| training time | {_duration(tags.get('sagan.train_seconds'))} (last training session) |",
        f"| code | git `{tags.get('sagan.git_commit', 'unknown')[:12]}`"
        + (" (uncommitted changes)" if tags.get("sagan.git_dirty") == "true" else "")
        + " |",
    ]


def _evaluation(ev: dict[str, Any]) -> list[str]:
    ref = ev.get("reference_size")
    ref_text = "all prepared images" if ref is None else f"{ref} prepared images (fixed seeded subset)"
    if ev.get("reference_split") not in (None, "prepared"):
        ref_text = f"statistics file {md_code(ev['reference_split'])}"
    official = ev.get("weights_official")
    weights = {True: "pytorch-fid's official FID weights", False: "**unofficial** weights"}.get(
        official, "unknown weights"
    )
    lines = [
        "## Evaluation",
        "",
        f"Protocol: {ev.get('num_samples', '?')} generated images (EMA generator, seed {ev.get('seed', '?')},"
        f" class-balanced) against {ref_text}; pytorch-fid InceptionV3, {ev.get('dims', '?')}-d pool features,"
        f" {weights}; KID over {ev.get('kid_subsets', '?')} subsets of {ev.get('kid_subset_size', '?')}."
        " FIDs from different protocols are not comparable.",
        "",
        "| FID | KID (mean ± std) | IS (mean ± std) |",
        "|---|---|---|",
        f"| {_num(ev.get('fid'))} | {_num(ev.get('kid_mean'))} ± {_num(ev.get('kid_std'))} "
        f"| {_num(ev.get('is_mean'))} ± {_num(ev.get('is_std'))} |",
    ]
    if "precision" in ev:  # evaluations before precision/recall/density/coverage existed lack them
        lines += [
            "",
            f"How it fails, {ev.get('prdc_k', 5)}-NN on the same features (precision/density: fidelity;"
            " recall/coverage: variety, low when modes are dropped):",
            "",
            "| precision | recall | density | coverage |",
            "|---|---|---|---|",
            f"| {_num(ev.get('precision'))} | {_num(ev.get('recall'))} | {_num(ev.get('density'))}"
            f" | {_num(ev.get('coverage'))} |",
        ]
    if official is False:
        lines += [
            "",
            "**Unofficial Inception weights**: this FID was computed with a file other than"
            " pytorch-fid's official weights; it is not comparable with published FIDs.",
        ]
    return lines


def _how_to_sample(name: str, decision: str, manifest: dict[str, Any]) -> list[str]:
    names = [str(c) for c in manifest.get("class_names") or []]
    request = ({"class": names[0]} if names else {}) | {"n": 4, "seed": 0, "truncation": 1.0}
    # `--class` as the request's class, by name; a name with a line break cannot stay on the line,
    # so its index then (unless a class is named "0": names come first)
    klass = names[0] if names and names[0].isprintable() else "0" if names and "0" not in names else None
    # the alias this version got when registered: what users load (a version number never moves)
    alias = decision if decision in ("champion", "challenger") else "champion"
    uri = sh(f"models:/{name}@{alias}")  # pasted into a shell: the model name is one word
    return [
        "## How to sample",
        "",
        f"While this version holds `@{alias}` (aliases move: the version page lists its current ones):",
        "",
        "```bash",
        f"sagan sample --model {uri} --n 64 --out grid.png" + (f" --class {sh(klass)}" if klass else ""),
        f"sagan sample --model {uri} --verified-copy served/  # only a model this sagan logged",
        "mlflow models serve -m served/ --env-manager local -p 5001",
        "curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\",
        f"  -d {json_sh({'dataframe_records': [request]})}",
        "```",
        "",
        "The answer has one row per image: `class`, `class_id`, `seed`, `index`, `image` (base64 PNG).",
    ]


@dataclass(frozen=True)
class Grid:
    """Run artifact paths of the registered step's sample pictures (callback.py's image series)."""

    pages: tuple[str, ...]  # the full grid, every class a row, page 1 first
    preview: str | None = None  # a few of its rows, small: the picture the card shows


def _link(run, path: str) -> str:
    """A relative link to the MLflow UI's own get-artifact endpoint: it resolves against whatever
    host the page was opened from (local `mlflow ui` or a team server) and needs no copy of the
    image. (An inline data: image is not shown: MLflow 3.17's description renderer drops data: URIs.)
    Quoted: the series' file names hold "+", which a query string would read as a space."""
    from urllib.parse import quote

    return f"get-artifact?path={quote(path, safe='/')}&run_uuid={run.info.run_id}"


def _samples(run, grid: Grid | None, classes: int) -> list[str]:
    """A few rows of the sample grid (the preview), linked to the whole grid, whose pages follow as
    links: the card's text stays on the first screen, the full grid is one click away."""
    if not grid or not grid.pages:
        return []
    full = _link(run, grid.pages[0])
    if len(grid.pages) == 1:
        link = f"[the full sample grid]({full})"
    else:
        link = "the full sample grid, " + " · ".join(
            f"[page {k}]({_link(run, p)})" for k, p in enumerate(grid.pages, start=1)
        )
    every = f"all {classes} classes, a row each" if classes else "64 images"
    picture = [f"[![a few rows of the sample grid]({_link(run, grid.preview)})]({full})", ""]
    return ["", *(picture if grid.preview else []), f"Samples of this step: {link} ({every}).", ""]


def sample_grid(client, run_id: str, step: int) -> Grid | None:
    """The run's sample pictures at `step` (the `samples`, `samples_pK` and `preview` image series,
    callback.py), else its latest grid (`samples/latest*.png`, `samples/preview.png`); None when the
    run has neither."""
    try:
        series = [f.path for f in client.list_artifacts(run_id, "images")]
        plain = {f.path for f in client.list_artifacts(run_id, "samples")}
    except Exception:  # noqa: BLE001 - the picture is a convenience; the card is written without it
        return None

    def at_step(key: str) -> str | None:
        found = sorted(p for p in series if p.startswith(f"images/{key}+step+{step}+") and p.endswith(".png"))
        return found[-1] if found else None

    if at_step("samples"):
        pages, preview = [at_step("samples")], at_step("preview")
        while page := at_step(f"samples_p{len(pages) + 1}"):
            pages.append(page)
    elif "samples/latest.png" in plain:
        pages = ["samples/latest.png"]
        preview = "samples/preview.png" if "samples/preview.png" in plain else None
        while (page := f"samples/latest_p{len(pages) + 1}.png") in plain:
            pages.append(page)
    else:
        return None
    return Grid(tuple(pages), preview)


def promotion_line(decision: str, reason: str) -> str:
    """The card's one promotion line (promotion.restate rewrites it): the reason may hold a
    person's words and names, shown as text on one line."""
    return f"**Promotion: {decision}.** {md(reason)}."


def version_card(
    params: Params,
    name: str,
    version: int,
    run,
    ev: dict[str, Any],
    decision: str,
    reason: str,
    grid: Grid | None = None,
) -> str:
    """The markdown description of version `version` of `name`, registered from `run`; `grid`: the
    run's sample pictures of that step (`sample_grid`), when the run has them. It opens with the
    decision and the scores, then a small picture linked to the full grid, then the details."""
    run_params, tags = dict(run.data.params), dict(run.data.tags)
    step = ev.get("generator_step", "?")
    manifest = _manifest(params)
    lines = [
        f"# {md(name)} v{version}: SAGAN generator (EMA) at step {step}",
        "",
        promotion_line(decision, reason),
        "",
        f"FID {_num(ev.get('fid'))} · KID {_num(ev.get('kid_mean'))} · IS {_num(ev.get('is_mean'))} · "
        f"run `{run.info.run_id}`",
        *_samples(run, grid, len(manifest.get("class_names") or [])),
        "",
        *_data(params, run_params, tags),
        "",
        *_training(run_params, tags, step),
        "",
        *_evaluation(ev),
        "",
        *_how_to_sample(name, decision, manifest),
    ]
    return "\n".join(lines) + "\n"


def model_description(params: Params, name: str) -> str:
    """The registered model's description: what its versions are and how its aliases move."""
    uri = sh(f"models:/{name}@champion")
    return "\n".join(
        [
            f"# {md(name)}",
            "",
            "Self-Attention GAN generators (the EMA copy of G), trained, evaluated and registered by"
            f" the `sagan` pipeline from {md_code(params.data.source)} data. Each version's description is its"
            " model card: data, training, evaluation protocol and scores, promotion decision.",
            "",
            f"- `@champion`: the best FID so far (a new version takes it only when its FID is lower by more"
            f" than {params.registry.min_improvement:g} under the same protocol; after the data changed,"
            " the champion is scored again under the new version's protocol first), or the version a"
            " person promoted (`sagan models promote`). Tags `promotion.*` say who, when and why.",
            "- `@challenger`: the latest version that did not beat the champion.",
            "",
            f"Sample: {md_code(f'sagan sample --model {uri} --out grid.png')}; serve its checked"
            f" copy: {md_code(f'sagan sample --model {uri} --verified-copy served/')}, then"
            " `mlflow models serve -m served/ --env-manager local` (input rows: class, n, seed,"
            " truncation; output: base64 PNGs).",
        ]
    )
