"""User-named text lands quoted (pipelines/quoting.py): class folder names, the data source, the
model name and a person's reason in the model card and the run's Prefect summary; paths and URIs
in the shell lines printed for a person to paste. Cards are rendered to HTML with two Markdown
renderers (CommonMark + tables, as GitHub; Python-Markdown), both letting raw HTML through as
MLflow's renderer does before its sanitizer."""

from __future__ import annotations

import json
import shlex
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import unquote

import markdown
import pytest
from helpers import cli
from markdown_it import MarkdownIt

from pipelines.flow.report import RunSummary, final_report, summary_markdown
from pipelines.registry.model_card import model_description, version_card
from sagan_core.config import Params

pytestmark = pytest.mark.unit

SHELL = "0'; touch PWNED; echo '"
HTML = "<img src=x onerror=alert(1)>"
# a table cell's end, a code span, emphasis, a link, a backslash, struck out, a line break
MARKDOWN = "a|b `c` *d* __e__ [f](javascript:alert(1)) \\ ~~g~~ h\ni"
CLASSES = [SHELL, HTML, MARKDOWN, "$(touch PWNED)"]
MODEL = "m'; touch PWNED; echo <b>x</b>"  # printable, no '/' or ':': a name MLflow takes


class _Cells(HTMLParser):
    """Table rows as lists of cell texts, and every start tag seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows, self.tags, self.text, self._cell = [], [], "", None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        self.text += data
        if self._cell is not None:
            self._cell += data


RENDERERS = {
    "commonmark": lambda text: MarkdownIt("commonmark").enable("table").render(text),
    "python-markdown": lambda text: markdown.markdown(text, extensions=["tables"]),
}


def rendered(text: str, renderer: str) -> _Cells:
    page = _Cells()
    page.feed(RENDERERS[renderer](text))
    return page


def row(page: _Cells, name: str) -> list[str]:
    found = [r for r in page.rows if r and r[0] == name]
    assert len(found) == 1, page.rows
    return found[0]


def card(tmp_path, classes: list[str], source: str = "data/images") -> str:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    manifest = {"class_names": classes, "num_images": 8, "resolution": 32, "channels": 3}
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    params = Params.model_validate({"data": {"prepared_dir": str(prepared), "source": source}})
    run = SimpleNamespace(data=SimpleNamespace(params={}, tags={}), info=SimpleNamespace(run_id="r1"))
    reason = f"promoted by {HTML} because | *why*"
    return version_card(params, MODEL, 3, run, {"fid": 1.0}, "champion", reason)


def shell_lines(text: str) -> list[list[str]]:
    """The card's bash block as a shell reads it: continued lines joined, each split into argv."""
    block = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]


@pytest.mark.parametrize("first", range(len(CLASSES)))
def test_the_cards_commands_give_the_class_and_model_names_back_as_one_word_each(tmp_path, first):
    classes = CLASSES[first:] + CLASSES[:first]  # the example request asks for the first class
    sample, _, _, curl = shell_lines(card(tmp_path, classes))
    assert sample[:3] == ["sagan", "sample", "--model"] and sample[3] == f"models:/{MODEL}@champion"
    assert curl[:6] == [
        "curl",
        "-s",
        "127.0.0.1:5001/invocations",
        "-H",
        "Content-Type: application/json",
        "-d",
    ]
    assert len(curl) == 7
    body = json.loads(curl[6])
    assert body == {"dataframe_records": [{"class": classes[0], "n": 4, "seed": 0, "truncation": 1.0}]}


@pytest.mark.parametrize("renderer", RENDERERS)
def test_the_card_shows_hostile_names_as_text_and_opens_no_tag(tmp_path, renderer):
    source = "data/<script>alert(1)</script>|`x`"
    text = card(tmp_path, CLASSES, source)
    assert "<img src=x" not in text and "&lt;img src=x" in text
    page = rendered(text, renderer)
    assert {tag for tag, _ in page.tags} <= {"h1", "h2", "p", "strong", "table", "thead", "tbody", "tr"} | {
        "th",
        "td",
        "code",
        "pre",
    }  # no img, script, b, a (link) or em (emphasis) from the names
    assert row(page, "classes") == ["classes", f"{len(CLASSES)}: {', '.join(CLASSES)}"]
    assert row(page, "source") == ["source", source]
    assert page.text.startswith(f"{MODEL} v3: SAGAN") and f"promoted by {HTML} because | *why*." in page.text
    page = rendered(model_description(Params.model_validate({"data": {"source": source}}), MODEL), renderer)
    assert {tag for tag, _ in page.tags} <= {"h1", "p", "ul", "li", "code"}
    assert f"from {source} data" in page.text and f"--model 'models:/{MODEL}@champion'" not in page.text


def test_the_run_summary_shows_hostile_names_as_text(tmp_path):
    summary = RunSummary(
        "t", "flow", "abc", 4, 4, "models/checkpoint.pt", str(tmp_path / f"{HTML}|grid.png"), 1.0, None,
        1.0, MODEL, 2, 4, 1.0, "champion", f"by {HTML} | *me*", "run1",
        "http://127.0.0.1:5000/#/runs/run1?a=1) [x](javascript:alert(1)|", "http://127.0.0.1:5000",
        f"not clean: {HTML}",
    )  # fmt: skip
    text = summary_markdown(summary)
    assert "<img src=x" not in text
    for renderer in RENDERERS:
        page = rendered(text, renderer)
        assert [a for tag, a in page.tags if tag == "img"] == [], renderer
        assert row(page, "decision") == ["decision", f"champion: by {HTML} | *me*"], renderer
        assert row(page, "sample grid")[1].startswith(f"{tmp_path / HTML}|grid.png ("), renderer
        assert row(page, "DVC") == ["DVC", f"not clean: {HTML}"], renderer
        assert [unquote(a["href"]) for tag, a in page.tags if tag == "a"] == [summary.mlflow_url], renderer


def test_the_final_reports_command_line_gives_the_tracking_uri_back(monkeypatch):
    uri = "sqlite:////tmp/my project/it's $(touch PWNED).db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    summary = RunSummary(
        "t", "flow", "abc", 4, 4, "ckpt.pt", "grid.png", 1.0, None, 1.0, "m", 1, 4, 1.0, "champion", "r",
        "run", None, uri, "not used",
    )  # fmt: skip
    line = next(x for x in final_report(summary, Params()).splitlines() if "MLflow UI" in x)
    assert shlex.split(line.split(":", 1)[1])[1:] == ["ui", "--backend-store-uri", uri]


@pytest.mark.parametrize("name", ["a/b", "a:b", '"two\\nlines"', '" "'])
def test_a_model_name_mlflow_refuses_or_spanning_lines_is_exit_2_before_anything_runs(tmp_path, name):
    r = cli(["config", "--set", f"registry.model_name={name}"], cwd=tmp_path)
    assert r.returncode == 2 and "registry.model_name" in r.stderr and "Traceback" not in r.stderr
