"""Classes by name (issue 32, items 4, 5, 10), on a newcomer's own data: 26 class folders A..Z of
28-px grayscale letters (`helpers.letters_archive`), prepared, trained 2 steps, evaluated and
registered once in this process (MLflow in a SQLite file).

- `sagan sample --class C` and `--class 2` are the same class; `--class c` is one line naming classes;
  a class folder named like a number keeps meaning that folder (name first, then index).
- the card's `sagan sample` line and its serving example name the same class, and give the same image.
- the progress grids show all 26 classes, a labelled row each; the attention figure's rows are names.
- the model card opens with the decision and FID, then a small picture linked to the full grid.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, letters_archive, project_params

pytestmark = pytest.mark.integration  # prepare, train, evaluate and register in this process

LETTERS = [chr(ord("A") + i) for i in range(26)]
MODEL = "letters"


@pytest.fixture(scope="module")
def letters(tmp_path_factory, standin_torch_home):
    """(project, params, registered version) of the letters, trained 2 steps with a grid per step."""
    from pipelines import stages

    root = tmp_path_factory.mktemp("letters")
    uri = f"sqlite:///{root}/mlflow.db"
    ev = {"eval__num_samples": 20, "eval__reference_size": 20, "eval__batch_size": 20, "eval__dims": 64}
    ev |= {"eval__kid_subsets": 5, "eval__kid_subset_size": 10, "eval__cache_dir": str(root / "cache")}
    params = project_params(
        root,
        data__source=str(letters_archive(root / "letters.tar.gz")),
        data__workers=1,
        train__steps=2,
        train__sample_every=2,
        train__standing_stats=1,
        tracking__uri=uri,
        tracking__artifact_location=str(root / "artifacts"),
        registry__model_name=MODEL,
        **ev,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGAN_TRACKING", "1")
        mp.setenv("TORCH_HOME", str(standin_torch_home))
        stages.prepare(params, progress=False)
        stages.train(params, progress=False)
        stages.evaluate(params, progress=False)
        registered = stages.register(params)
    return root, params, registered


def sample(project: Path, model: str, *args: str) -> tuple[int, str, str]:
    r = cli(["sample", "--model", model, *args], project)
    return r.returncode, r.stdout, r.stderr


def test_sample_takes_a_class_by_name_or_by_index(letters, tmp_path):
    project, _, _ = letters
    ckpt = str(project / "models/checkpoint.pt")
    for name, klass in (("C", "C"), ("2", "2"), ("A", "A")):
        code, _, err = sample(
            project, ckpt, "--n", "4", "--class", klass, "--out", str(tmp_path / f"{name}.png")
        )
        assert code == 0, err
    by_name, by_index = (tmp_path / "C.png").read_bytes(), (tmp_path / "2.png").read_bytes()
    assert by_name == by_index  # C is the third folder
    assert by_name != (tmp_path / "A.png").read_bytes()  # and the class is really used

    code, out, err = sample(project, ckpt, "--class", "c")
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--class 'c'" in err and "'A', 'B'" in err and "did you mean 'C'" in err, err
    code, _, err = sample(project, ckpt, "--class", "26")
    assert code == 2 and "0..25" in err, err


def test_a_class_folder_named_like_a_number_keeps_its_name(tmp_path):
    """Folders 1, 10, 2, ... (sorted as text): `--class 10` is the folder named 10 (index 1), and
    `--class 1` the folder named 1 (index 0), as serving reads a "class" field."""
    from pipelines.registry.sampling import sample as run_sample
    from pipelines.tracking.generator_pyfunc import GeneratorModel
    from sagan_core.config import Params
    from sagan_core.model import checkpoint as ckpt_io
    from sagan_core.model.networks import ModelSpec, build_models

    names = sorted(str(k) for k in range(1, 12))  # 1, 10, 11, 2, ..., 9
    spec = ModelSpec(32, 1, len(names), z_dim=16, g_ch=4, d_ch=4)
    g, d = build_models(spec)
    state = {"generator": g.state_dict(), "generator_ema": g.state_dict(), "discriminator": d.state_dict()}
    ckpt = tmp_path / "numbers.pt"
    ckpt_io.save_atomic({"step": 1, "spec": spec.to_dict(), "class_names": names} | state, ckpt)
    params = Params.model_validate({})
    served = GeneratorModel()
    served.num_classes, served.class_names = len(names), names
    for klass, index in (("10", 1), ("1", 0), ("9", 10), ("2", 3)):
        r = run_sample(params, str(ckpt), 1, klass, tmp_path / "g.png", None, 0, None)
        assert (r["class"], r["class_id"]) == (klass, index)
        assert served.class_id(klass) == index  # the same rule as serving


@pytest.mark.unit
def test_many_classes_are_all_shown_on_pages_of_readable_height(tmp_path):
    """300 classes of 32 px: every class a row (fewer images a row, at least 4), on pages of even
    length no taller than ~2,600 px, page 1 under the plain name."""
    import torch
    from PIL import Image

    from sagan_core.model.visualize import fixed_inputs

    names = [f"class-{k:03d}" for k in range(300)]
    z, y, per_class = fixed_inputs(8, len(names))
    assert sorted(set(y.tolist())) == list(range(300)) and per_class >= 4, (len(set(y.tolist())), per_class)
    from sagan_core.model.visualize import save_class_grids

    images = torch.rand(len(z), 1, 32, 32) * 2 - 1
    pages = save_class_grids(images, y, per_class, tmp_path / "step_000010.png", names)
    assert pages[0].name == "step_000010.png" and pages[1].name == "step_000010_p2.png"
    assert sum((rows_of(p) for p in pages), []) == names
    heights = {Image.open(p).size[1] for p in pages}
    assert len(heights) == 1 and max(heights) <= 2600, heights  # 300 rows on pages of 75


def rows_of(png: Path) -> list[str]:
    from PIL import Image

    with Image.open(png) as im:
        return json.loads(im.text["sagan.rows"])


def test_progress_grids_show_every_class_in_a_labelled_row(letters):
    from PIL import Image

    project, params, _ = letters
    pages = sorted((project / "samples").glob("step_000002*.png"))
    rows, side, pad = [], params.data.resolution, 2
    for page in pages:
        with Image.open(page) as im:
            gray = np.asarray(im.convert("L"))
        labels = rows_of(page)
        # as many rows of images as labels, each label drawn (dark ink) left of its row
        assert gray.shape[0] == pad + len(labels) * (side + pad), (page.name, gray.shape, labels)
        margin = gray.shape[1] - (pad + 10 * (side + pad))  # 10 images a row
        assert margin > 0
        for i in range(len(labels)):
            band = gray[pad + i * (side + pad) : pad + i * (side + pad) + side, :margin]
            assert (band < 128).any(), (page.name, i, labels[i])
        rows += labels
    assert rows == LETTERS, [p.name for p in pages]
    latest = sorted((project / "samples").glob("latest*.png"))
    assert [rows_of(p) for p in latest] == [rows_of(p) for p in pages]


def test_attention_figure_rows_are_class_names(letters):
    project, _, _ = letters
    rows = rows_of(project / "samples/attention.png")
    assert len(rows) == 3 and rows[0] == "A" and rows[-1] == "Z" and set(rows) <= set(LETTERS), rows


def _card(letters):
    from mlflow import MlflowClient

    _, params, registered = letters
    uri = params.tracking.uri
    client = MlflowClient(uri, registry_uri=uri)
    return client, client.get_model_version(MODEL, str(registered.version))


def _artifact(client, run_id: str, path: str, dst: Path):
    from PIL import Image

    local = client.download_artifacts(run_id, path, str(dst))
    with Image.open(local) as im:
        return im.size


def test_card_opens_with_the_decision_and_fid_then_a_small_picture_linked_to_the_full_grid(letters, tmp_path):
    client, mv = _card(letters)
    card = mv.description
    head = card.splitlines()[:6]
    assert any(line.startswith("**Promotion: champion.**") for line in head), head
    assert any(line.startswith("FID ") for line in head), head
    pictures = re.findall(r"!\[[^\]]*\]\(get-artifact\?path=([^&)]+)&run_uuid=(\w+)\)", card)
    assert len(pictures) == 1, card  # one picture, before the details
    assert card.index("![") < card.index("## Data")
    ((path, run_id),) = pictures
    from urllib.parse import unquote

    width, height = _artifact(client, run_id, unquote(path), tmp_path / "preview")
    assert height <= 320 and width <= 800, (width, height)  # a few rows, not three screens
    # the picture links to the full grid of that step: all 26 classes, much taller
    full = re.search(r"\]\(get-artifact\?path=([^&)]+)&run_uuid=\w+\)\]\(get-artifact\?path=([^&)]+)&", card)
    assert full and "images/samples%2Bstep%2B2%2B" in full.group(2), card
    _, full_height = _artifact(client, run_id, unquote(full.group(2)), tmp_path / "full")
    assert full_height > 5 * height


def test_card_sample_line_and_serving_example_name_the_same_class_and_image(letters, tmp_path, monkeypatch):
    """The card's `sagan sample` line and its curl body give the same class, and the same picture."""
    import mlflow
    import pandas as pd
    from PIL import Image

    project, params, _ = letters
    _, mv = _card(letters)
    block = mv.description.split("```bash\n", 1)[1].split("\n```", 1)[0]
    line = next(x for x in block.splitlines() if x.startswith("sagan sample") and "--class" in x)
    argv = shlex.split(line)
    klass = argv[argv.index("--class") + 1]
    body = json.loads(shlex.split(block.split("-d ", 1)[1])[0])
    assert body["dataframe_records"][0]["class"] == klass == "A"

    uri = params.tracking.uri
    code, _, err = sample(
        project, f"models:/{MODEL}@champion", "--n", "1", "--class", klass, "--set",
        f"tracking.uri={uri}", "--out-dir", str(tmp_path / "cli"),
    )  # fmt: skip
    assert code == 0, err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    answer = served.predict(pd.DataFrame([{"class": klass, "n": 1, "seed": 0}]))
    assert list(answer["class"]) == [klass]
    png = Image.open(io.BytesIO(base64.b64decode(answer["image"][0])))
    assert np.array_equal(
        np.asarray(png), np.asarray(Image.open(tmp_path / "cli/sample_0000.png").convert("L"))
    )
