"""Screenshots of what a user opens after `sagan pipeline run`: MLflow and Prefect pages in headless Chromium.

Starts `mlflow ui` on the project's store (port 5000, one worker: with the default count its worker
died at start on a loaded 2-core machine) and `prefect server start` on the PREFECT_HOME the run used
(Prefect's temporary server keeps its runs in the same database), finds the newest run, model
version, logged model and flow run, and saves one PNG per page. The browser starts with an empty
profile, as a first visit would; on the run
page it does what a user does to look at the images: each image card's "Show run parameters" off
(MLflow 3.17 lists every run param above the image by default) and its step slider at the last step.

Needs Debian's `chromium` and `pip install playwright` (it drives that chromium; no browser download):

    python docs/screenshots/take.py --project /path/to/project --prefect-home ~/.prefect --out docs/screenshots
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW, PREFECT = "http://127.0.0.1:5000", "http://127.0.0.1:4200"
IMAGE_CARDS = ("attention", "preview", "samples")


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s")


def post(url: str, body: dict) -> list:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def newest(project: Path) -> dict[str, str]:
    """Ids of the newest run, model version, logged model, flow run and summary artifact."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(json.loads((project / "models/mlflow_run.json").read_text())["run_id"])
    mv = max(client.search_model_versions(), key=lambda v: int(v.version))
    flow_runs = post(f"{PREFECT}/api/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    summary = {"artifacts": {"key": {"any_": ["sagan-summary"]}}, "sort": "CREATED_DESC", "limit": 1}
    return {
        "exp": run.info.experiment_id,
        "run": run.info.run_id,
        "model": mv.name,
        "version": mv.version,
        "model_id": mv.tags.get("model_id", ""),
        "flow_run": flow_runs[0]["id"],
        "summary": post(f"{PREFECT}/api/artifacts/filter", summary)[0]["id"],
    }


def image_cards_at_last_step(page) -> None:
    for key in IMAGE_CARDS:
        title = page.locator(f"h4[title={key}]")
        title.scroll_into_view_if_needed()  # below the metric sections: drawn once scrolled to
        title.locator("xpath=ancestor::div[.//button][1]").get_by_test_id(
            "experiment-view-compare-runs-card-menu"
        ).click()
        page.get_by_role("menuitem", name="Configure").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("switch").click()  # the card's only switch: "Show run parameters"
        dialog.get_by_role("button", name="Save changes").click()
        card = title.locator("xpath=ancestor::div[.//input[@type='number']][1]")
        last = card.get_by_role("slider").get_attribute("aria-valuemax")
        step = card.locator("input[type=number]")  # the slider's own step box: the last step
        step.click()
        step.press("Control+a")
        step.type(last)
        step.press("Tab")
        page.wait_for_timeout(2000)


def shoot_all(ids: dict[str, str], out: Path, settle_ms: int) -> None:
    from playwright.sync_api import sync_playwright

    exp, run = ids["exp"], ids["run"]
    ml = "?workflowType=machine_learning"  # as sagan's links: MLflow 3.17 opens GenAI otherwise
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])

        def page(name: str, url: str, height: int, action=None) -> None:
            p = browser.new_page(viewport={"width": 1500, "height": height})
            p.goto(url)
            p.wait_for_timeout(settle_ms)
            if url.startswith(MLFLOW) and p.get_by_role("button", name="Close").count():
                p.get_by_role("button", name="Close").first.click()  # the assistant side panel
            if action:
                action(p)
            p.screenshot(path=str(out / f"{name}.png"))
            print(f"{out / name}.png  <-  {url}")
            p.close()

        page("mlflow-experiment", f"{MLFLOW}/#/experiments/{exp}{ml}", 900)
        page("mlflow-run", f"{MLFLOW}/#/experiments/{exp}/runs/{run}/model-metrics{ml}", 4000,
             image_cards_at_last_step)  # fmt: skip
        page("mlflow-model-version", f"{MLFLOW}/#/models/{ids['model']}/versions/{ids['version']}{ml}", 2300)
        if ids["model_id"]:
            page(
                "mlflow-logged-model",
                f"{MLFLOW}/#/experiments/{exp}/models/{ids['model_id']}{ml}",
                1700,
                lambda p: p.get_by_placeholder("Search metrics").fill("eval/"),
            )  # train_eval/... (what made it best) and eval/... (the final protocol)
        page("prefect-flow-run", f"{PREFECT}/runs/flow-run/{ids['flow_run']}", 1400)
        page("prefect-summary", f"{PREFECT}/artifacts/artifact/{ids['summary']}", 1200)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--prefect-home", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--settle-ms", type=int, default=10000, help="how long each page gets to load")
    args = ap.parse_args()
    project, bindir = args.project.resolve(), Path(sys.executable).parent
    env = os.environ | {"PREFECT_HOME": str(args.prefect_home.resolve())}
    quiet = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    store = f"sqlite:///{project / 'mlflow.db'}"
    servers = [
        subprocess.Popen(
            [bindir / "mlflow", "ui", "--backend-store-uri", store, "--port", "5000", "--workers", "1"],
            cwd=project,
            **quiet,
        ),
        subprocess.Popen([bindir / "prefect", "server", "start", "--port", "4200"], env=env, **quiet),
    ]
    try:
        wait_http(f"{MLFLOW}/health")
        wait_http(f"{PREFECT}/api/health")
        args.out.mkdir(parents=True, exist_ok=True)
        shoot_all(newest(project), args.out, args.settle_ms)
    finally:
        for proc in servers:  # both asked first: one slow to stop must not leave the other running
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # seen with mlflow ui on a loaded machine
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    main()
