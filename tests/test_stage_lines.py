"""What `sagan pipeline run` prints per stage (issue 32): one line with the stage's name, outcome and
duration, measured in the flow; no bare "Finished in state Completed()"; DVC's lock-file lines at
most once per stage; and what `dvc status` lists after an image is added (docs/data.md)."""

from __future__ import annotations

import io
import logging
import re

import pytest
from helpers import INIT_TOY, cli, dvc_status, letters_archive, pipeline_project, run_cli

pytestmark = pytest.mark.e2e

STAGES = ("prepare", "train", "evaluate", "register")
DURATION = r"(\d+\.\d s|\d+ min \d\d s|\d+ h \d\d min)"
# A stage's line: `prepare: ran in 3.2 s (...)`, `train: skipped in 0.4 s (...)`, `x: failed after 1.2 s: ...`
STAGE_LINE = re.compile(rf"^(\w+): (ran in|skipped in|failed after|stopped after) {DURATION}\b(.*)$")
# A newcomer's project at toy size (helpers.INIT_TOY), without in-training evaluation; tracking off.
TOY = [*INIT_TOY, "train.eval_every=0"]
SETS = [a for o in TOY for a in ("--set", o)]


def stage_lines(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's lines of outcome and duration: {stage: [(outcome, rest of the line)]}."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        if (m := STAGE_LINE.match(line.strip())) and m[1] in STAGES:
            found.setdefault(m[1], []).append((m[2], m[4]))
    return found


def assert_console(text: str, outcomes: dict[str, str]) -> dict[str, str]:
    """One line per stage with the expected outcome; no bare Prefect state line; DVC's lock-file
    lines at most once per stage. Returns each stage's line after its duration."""
    lines = stage_lines(text)
    assert {stage: [o for o, _ in found] for stage, found in lines.items()} == {
        stage: [outcome] for stage, outcome in outcomes.items()
    }, text[-4000:]
    bare = [line for line in text.splitlines() if line.strip().startswith("Finished in state")]
    assert bare == [], text[-4000:]  # Prefect's "Finished in state Completed()" names no stage
    # An init project's DVC stages: check, prepare, train, evaluate. DVC says "Generating lock file"
    # once (the first commit) and "Updating lock file" once per stage at most.
    assert text.count("Generating lock file 'dvc.lock'") <= 1, text[-4000:]
    assert text.count("Updating lock file 'dvc.lock'") <= 4, text[-4000:]
    return {stage: found[0][1] for stage, found in lines.items()}


def test_pipeline_run_prints_one_line_per_stage_and_dvc_status_lists_prepare_after_new_images(
    tmp_path, prefect_api, standin_torch_home
):
    archive = letters_archive(tmp_path / "letters.tar.gz", classes=4, per_class=4)
    made = cli(["init", "proj", "--data", str(archive)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    proj = tmp_path / "proj"
    env = {"PREFECT_API_URL": prefect_api, "TORCH_HOME": str(standin_torch_home), "SAGAN_TRACKING": "0"}

    first = run_cli(["pipeline", "run", *SETS], proj, env)
    assert first.returncode == 0, first.stderr[-3000:]
    said = assert_console(
        first.stdout + first.stderr,
        {"prepare": "ran in", "train": "ran in", "evaluate": "ran in", "register": "skipped in"},
    )
    assert said["prepare"] == " (16 images, 4 classes, 0 rejected; recorded in dvc.lock)"
    assert said["train"] == " (2 steps, checkpoint at step 2; recorded in dvc.lock)"
    assert re.fullmatch(
        r" \(FID [\d.e+]+ on 16 samples, generator step 2; recorded in dvc\.lock\)", said["evaluate"]
    )
    assert said["register"] == " (tracking off: SAGAN_TRACKING=0)"

    again = run_cli(["pipeline", "run"], proj, env)  # nothing changed: DVC skips the three stages
    assert again.returncode == 0, again.stderr[-3000:]
    said = assert_console(again.stdout + again.stderr, dict.fromkeys(STAGES, "skipped in"))
    assert [said[s] for s in STAGES[:3]] == [" (dvc status: up to date)"] * 3
    assert "lock file" not in again.stdout + again.stderr  # nothing recorded: nothing of DVC's said

    # An image more in the archive: DVC lists prepare (and the init project's `check`, always
    # changed), not train or evaluate: those depend on prepare's output, which has not changed yet.
    letters_archive(archive, classes=4, per_class=5)
    assert (
        dvc_status(proj)
        == f"check:\n\talways changed\nprepare:\n\tchanged deps:\n\t\tmodified:           {archive}"
    )


@pytest.mark.integration
def test_a_failing_stage_ends_with_its_line_naming_the_cause(prefect_api, tmp_path):
    """In this process: the flow's task-run log (what the console and the Prefect UI get)."""
    from pipelines.flow.pipeline import StageFailed, sagan_pipeline

    proj = pipeline_project(tmp_path / "proj", dvc=False, data__source=str(tmp_path / "missing"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    task_log = logging.getLogger("prefect.task_runs")
    task_log.addHandler(handler)
    try:
        with pytest.raises(StageFailed):
            sagan_pipeline(project_dir=str(proj))
    finally:
        task_log.removeHandler(handler)
    lines = stage_lines("\n".join(r.getMessage() for r in records))
    assert list(lines) == ["prepare"] and len(lines["prepare"]) == 1, lines
    outcome, rest = lines["prepare"][0]
    assert outcome == "failed after" and rest.startswith(": data.source: ") and "missing" in rest, rest


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.04, "0.0 s"), (3.21, "3.2 s"), (59.94, "59.9 s"), (245, "4 min 05 s"), (7380, "2 h 03 min")],
)
def test_durations_read_as_a_person_says_them(seconds, shown):
    from pipelines.flow.console import duration

    assert duration(seconds) == shown


@pytest.mark.unit
def test_stage_line_says_ran_skipped_failed_or_stopped_with_the_time_taken():
    from pipelines.flow.console import stage_line

    records: list[logging.LogRecord] = []
    log = logging.getLogger("sagan.test_stage_lines")
    handler = logging.Handler()
    handler.emit = records.append
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with stage_line("prepare", log) as line:
            line.detail = "16 images"
        with stage_line("train", log) as line:
            line.skipped = "dvc status: up to date"
        with pytest.raises(ValueError), stage_line("evaluate", log):
            raise ValueError("stage evaluate failed: no weights")
        with pytest.raises(OSError), stage_line("evaluate", log):
            raise OSError("disk full\n  (a second line of detail)")
        with pytest.raises(KeyboardInterrupt), stage_line("register", log):
            raise KeyboardInterrupt
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    said = [r.getMessage() for r in records]
    assert [STAGE_LINE.match(s).group(1, 2, 4) for s in said] == [
        ("prepare", "ran in", " (16 images)"),
        ("train", "skipped in", " (dvc status: up to date)"),
        ("evaluate", "failed after", ": no weights"),  # the stage is named once
        ("evaluate", "failed after", ": disk full"),  # one line
        ("register", "stopped after", " (KeyboardInterrupt)"),
    ]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO, *[logging.ERROR] * 3]


@pytest.mark.unit
def test_the_console_leaves_out_prefects_unnamed_state_lines_and_keeps_the_rest():
    from pipelines.flow.console import short_console_errors

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "msg": msg, "levelno": logging.INFO, "levelname": "INFO"})

    out = io.StringIO()
    root, handler = logging.getLogger(), logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:  # records as they reach the root logger's handlers from Prefect's run loggers
        with short_console_errors():
            root.handle(record("prefect.task_runs", "Finished in state Completed()"))
            root.handle(record("prefect.flow_runs", "Finished in state Completed()"))
            root.handle(record("prefect.task_runs", "prepare: ran in 0.1 s"))
        root.handle(record("prefect.task_runs", "Finished in state Completed()"))  # the filter is gone
    finally:
        root.removeHandler(handler)
    assert out.getvalue().splitlines() == ["prepare: ran in 0.1 s", "Finished in state Completed()"]
