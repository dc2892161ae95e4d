"""Model cards: the markdown descriptions of each registered version and of the registered model.

A version's card says what data, what training, how it was evaluated and scored, why it was or was
not promoted and how to sample it, from records already made (the run, eval.record.json, the
prepared manifest); a missing piece reads "unknown", never a guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.quoting import json_sh, md, md_code, sh
from sagan_core.config import Params


def _manifest(params: Params) -> dict[str, Any]:
    try:
        return json.loads((Path(params.data.prepared_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _num(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) else "unknown"


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


def _table(title: str, rows: dict[str, str]) -> str:
    return f"## {title}\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def _data(params: Params, m: dict[str, Any], run_params: dict[str, str], tags: dict[str, str]) -> str:
    return _table("Data", {
        "source": md_code(run_params.get("data.source", params.data.source)),
        "content_hash": md_code(tags.get("sagan.data.content_hash", m.get("content_hash", "unknown"))),
        "images": f"{m['num_images']:,}" if "num_images" in m else "unknown",
        "classes": _classes(m),
        "resolution": f"{m['resolution']} px, {m['channels']} channel(s)" if "resolution" in m else "unknown",
    })


def _attention(run_params: dict[str, str], tags: dict[str, str]) -> str:
    """Where the attention blocks were: the run's resolved spec (callback.py), else the params."""
    try:
        spec = json.loads(tags["sagan.spec"])
        g, d = (", ".join(f"{r}×{r}" for r in spec[k]) or "none" for k in ("g_attn", "d_attn"))
    except (KeyError, ValueError, TypeError):
        return f"G {run_params.get('model.g_attn', '?')} / D {run_params.get('model.d_attn', '?')} (params)"
    return f"G at {g}, D at {d} (feature maps)"


def _training(run_params: dict[str, str], tags: dict[str, str], step: Any) -> str:
    p = run_params.get
    dirty = " (uncommitted changes)" if tags.get("sagan.git_dirty") == "true" else ""
    return _table("Training", {
        "steps": f"{step} of {p('train.steps', '?')} (batch {p('train.batch_size', '?')} per process)",
        "architecture": f"z_dim {p('model.z_dim', '?')}, g_ch {p('model.g_ch', '?')}, d_ch {p('model.d_ch', '?')}",
        "self-attention": _attention(run_params, tags),
        "optimizer": f"Adam lr_G {p('train.lr_g', '?')}, lr_D {p('train.lr_d', '?')}, β=({p('train.beta1', '?')}, "
                     f"{p('train.beta2', '?')}), n_dis {p('train.n_dis', '?')}, hinge loss",
        "EMA": f"decay {p('train.ema_decay', '?')} from step {p('train.ema_start', '?')} (the EMA generator is registered)",
        "seed": p("train.seed", "?"),
        "hardware": f"{tags.get('sagan.device', 'unknown')} × {tags.get('sagan.world_size', '1')} process(es)",
        # what ran (callback.py's tags), else the setting, marked as such
        "precision": tags.get("sagan.precision") or f"setting {p('train.precision', '?')}",
        "training time": f"{_duration(tags.get('sagan.train_seconds'))} (last training session)",
        "code": f"git `{tags.get('sagan.git_commit', 'unknown')[:12]}`{dirty}",
    })


def _evaluation(ev: dict[str, Any]) -> str:
    ref = ev.get("reference_size")
    ref_text = "all prepared images" if ref is None else f"{ref} prepared images (fixed seeded subset)"
    if ev.get("reference_split") not in (None, "prepared"):
        ref_text = f"statistics file {md_code(ev['reference_split'])}"
    official = ev.get("weights_official")
    weights = {True: "pytorch-fid's official FID weights", False: "**unofficial** weights"}.get(official, "unknown weights")
    text = f"""## Evaluation

Protocol: {ev.get('num_samples', '?')} generated images (EMA generator, seed {ev.get('seed', '?')}, class-balanced) \
against {ref_text}; pytorch-fid InceptionV3, {ev.get('dims', '?')}-d pool features, {weights}; KID over \
{ev.get('kid_subsets', '?')} subsets of {ev.get('kid_subset_size', '?')}. FIDs from different protocols are not comparable.

| FID | KID (mean ± std) | IS (mean ± std) |
|---|---|---|
| {_num(ev.get('fid'))} | {_num(ev.get('kid_mean'))} ± {_num(ev.get('kid_std'))} \
| {_num(ev.get('is_mean'))} ± {_num(ev.get('is_std'))} |"""
    if "precision" in ev:  # evaluations before precision/recall/density/coverage existed lack them
        keys = ("precision", "recall", "density", "coverage")
        text += f"""

How it fails, {ev.get('prdc_k', 5)}-NN on the same features (precision/density: fidelity; recall/coverage: \
variety, low when modes are dropped):

| {' | '.join(keys)} |
|---|---|---|---|
| {' | '.join(_num(ev.get(k)) for k in keys)} |"""
    if official is False:
        text += ("\n\n**Unofficial Inception weights**: this FID was computed with a file other than"
                 " pytorch-fid's official weights; it is not comparable with published FIDs.")
    return text


def _how_to_sample(name: str, decision: str, manifest: dict[str, Any]) -> str:
    names = [str(c) for c in manifest.get("class_names") or []]
    request = ({"class": names[0]} if names else {}) | {"n": 4, "seed": 0, "truncation": 1.0}
    # `--class` by name; a name that cannot stay on the line by its index (unless a class is named "0")
    klass = names[0] if names and names[0].isprintable() else "0" if names and "0" not in names else None
    alias = decision if decision in ("champion", "challenger") else "champion"
    uri = sh(f"models:/{name}@{alias}")  # pasted into a shell: the model name is one word
    return f"""## How to sample

While this version holds `@{alias}` (aliases move: the version page lists its current ones):

```bash
sagan sample --model {uri} --n 64 --out grid.png{f" --class {sh(klass)}" if klass else ""}
sagan sample --model {uri} --verified-copy served/  # only a model this sagan logged
mlflow models serve -m served/ --env-manager local -p 5001
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
  -d {json_sh({'dataframe_records': [request]})}
```

The answer has one row per image: `class`, `class_id`, `seed`, `index`, `image` (base64 PNG)."""


class Grid(NamedTuple):
    """Run artifact paths of the registered step's sample grid (page 1 first) and its small preview."""

    pages: tuple[str, ...]
    preview: str | None = None


def _link(run, path: str) -> str:
    # relative to the MLflow UI (any host; MLflow 3.17's renderer drops data: URIs); the names hold "+"
    from urllib.parse import quote

    return f"get-artifact?path={quote(path, safe='/')}&run_uuid={run.info.run_id}"


def _samples(run, grid: Grid | None, classes: int) -> str:
    """The small preview linked to the whole grid, its pages as links: the text stays on the first screen."""
    if not grid or not grid.pages:
        return ""
    full = _link(run, grid.pages[0])
    pages = [f"[page {k}]({_link(run, p)})" for k, p in enumerate(grid.pages, start=1)]
    link = f"[the full sample grid]({full})" if len(pages) == 1 else "the full sample grid, " + " · ".join(pages)
    every = f"all {classes} classes, a row each" if classes else "64 images"
    picture = f"[![a few rows of the sample grid]({_link(run, grid.preview)})]({full})\n\n" if grid.preview else ""
    return f"\n{picture}Samples of this step: {link} ({every}).\n\n"


def sample_grid(client, run_id: str, step: int) -> Grid | None:
    """The run's sample grid at `step` (image series, callback.py), else its latest one; None if neither."""
    try:
        found = {f.path for folder in ("images", "samples") for f in client.list_artifacts(run_id, folder)}
    except Exception:  # noqa: BLE001 - the picture is a convenience; the card is written without it
        return None

    for pattern, stem in ((f"images/{{}}+step+{step}+", "samples"), ("samples/{}.png", "latest")):
        def find(key: str, pattern: str = pattern) -> str | None:
            return max((p for p in found if p.startswith(pattern.format(key)) and p.endswith(".png")), default=None)

        pages: list[str] = []
        while page := find(f"{stem}_p{len(pages) + 1}" if pages else stem):
            pages.append(page)
        if pages:
            return Grid(tuple(pages), find("preview"))
    return None


def promotion_line(decision: str, reason: str) -> str:
    """The card's promotion line (promotion.restate rewrites it); a person's reason shown as text."""
    return f"**Promotion: {decision}.** {md(reason)}."


def version_card(params: Params, name: str, version: int, run, ev: dict[str, Any], decision: str, reason: str,
                 grid: Grid | None = None) -> str:
    """The card of version `version` of `name`, registered from `run` (`grid`: from `sample_grid`)."""
    run_params, tags = dict(run.data.params), dict(run.data.tags)
    step = ev.get("generator_step", "?")
    manifest = _manifest(params)
    return f"""# {md(name)} v{version}: SAGAN generator (EMA) at step {step}

{promotion_line(decision, reason)}

FID {_num(ev.get('fid'))} · KID {_num(ev.get('kid_mean'))} · IS {_num(ev.get('is_mean'))} · run `{run.info.run_id}`
{_samples(run, grid, len(manifest.get("class_names") or []))}
{_data(params, manifest, run_params, tags)}

{_training(run_params, tags, step)}

{_evaluation(ev)}

{_how_to_sample(name, decision, manifest)}
"""


def model_description(params: Params, name: str) -> str:
    """What the registered model's versions are and how its aliases move."""
    uri = sh(f"models:/{name}@champion")
    return f"""# {md(name)}

Self-Attention GAN generators (the EMA copy of G), trained, evaluated and registered by the `sagan` \
pipeline from {md_code(params.data.source)} data. Each version's description is its model card: data, \
training, evaluation protocol and scores, promotion decision.

- `@champion`: the best FID so far (a new version takes it only when its FID is lower by more than \
{params.registry.min_improvement:g} under the same protocol; after the data changed, the champion is scored \
again under the new version's protocol first), or the version a person promoted (`sagan models promote`). \
Tags `promotion.*` say who, when and why.
- `@challenger`: the latest version that did not beat the champion.

Sample: {md_code(f'sagan sample --model {uri} --out grid.png')}; serve its checked copy: \
{md_code(f'sagan sample --model {uri} --verified-copy served/')}, then `mlflow models serve -m served/ \
--env-manager local` (input rows: class, n, seed, truncation; output: base64 PNGs)."""
