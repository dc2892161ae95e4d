"""Two sagan processes on one project or one registered model: the project lock taken by every
stage command, per-launch params files, and alias decisions taking turns."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from pipelines import launch
from pipelines import lock as lock_module
from pipelines.lock import HELD_BY_LAUNCHER, ProjectBusy, project_lock, promotion_lock, stage_lock
from sagan_core.config import Params
from sagan_core.errors import SaganError

pytestmark = pytest.mark.e2e

HOLD = "import sys; from pipelines.lock import project_lock\nwith project_lock(): print('held', flush=True); sys.stdin.read()"
BUSY = re.compile(
    r"sagan: another sagan run holds the project lock \(pid (\d+) on host \S+ since [^)]+\); "
    r"wait for it or raise pipeline.lock_timeout_s"
)


def hold_project(cwd: Path) -> subprocess.Popen:
    """Another process holding `cwd`'s project lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


# ---- the project lock -----------------------------------------------------------------------------
def test_stage_commands_are_refused_in_one_line_while_another_process_holds_the_project(tmp_path):
    holder = hold_project(tmp_path)
    try:
        for command in (["prepare", "-q"], ["train", "-q"], ["evaluate", "-q"], ["register"]):
            r = run_cli(command, tmp_path)
            assert r.returncode == 1, (command, r.stderr)  # a valid request that cannot run now: 1
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and (m := BUSY.fullmatch(lines[0])), (command, r.stderr)
            assert int(m.group(1)) == holder.pid
        assert not (tmp_path / "data/prepared").exists()  # nothing was touched
    finally:
        release(holder)
    r = run_cli(["prepare", "-q"], tmp_path)  # free again: the stage runs
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data/prepared/manifest.json").is_file()


def test_stages_take_no_lock_of_their_own_and_ddp_ranks_take_none(tmp_path, monkeypatch, prepared_demo):
    from helpers import project_params

    from pipelines import stages

    with project_lock(tmp_path):  # the flow holds it and calls the stages in-process: no self-deadlock
        stages.prepare(project_params(tmp_path), progress=False)
    monkeypatch.chdir(tmp_path)
    holder = hold_project(tmp_path)
    try:
        with pytest.raises(ProjectBusy, match=f"pid {holder.pid} on host"), stage_lock():
            pass
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with stage_lock():  # a bare torchrun: rank 1 leaves the lock to rank 0
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ProjectBusy), stage_lock():  # ... which takes it
            pass
        monkeypatch.setenv(HELD_BY_LAUNCHER, str(holder.pid))
        with stage_lock():  # ranks of a launcher (`sagan train`, the flow) that holds it
            pass
    finally:
        release(holder)


def test_two_launches_hand_their_ranks_their_own_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen: list[tuple[Path, str, str | None]] = []

    class FakeTorchrun:  # records what torchrun would be handed; its ranks would say nothing
        def __init__(self, cmd, env=None, **kw):
            path = Path(cmd[cmd.index("--params") + 1])
            seen.append((path, path.read_text(), (env or {}).get(HELD_BY_LAUNCHER)))
            self.stdout = self.stderr = iter(())

        def wait(self):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", FakeTorchrun)
    for steps in (5, 7):
        p = Params.model_validate({"train": {"steps": steps, "nproc_per_node": 2}})
        assert launch.run_torchrun(p, resume=False, quiet=True, log=lambda _: None) == (0, "")
    (a, text_a, held_a), (b, text_b, held_b) = seen
    assert a != b and "steps: 5" in text_a and "steps: 7" in text_b
    assert not a.exists() and not b.exists()  # removed after each launch
    assert held_a == held_b == str(__import__("os").getpid())  # the ranks take no project lock


# ---- the promotion lock ---------------------------------------------------------------------------
PROMOTING = (
    "import sys; from pipelines.lock import promotion_lock\n"
    "with promotion_lock('sqlite:///x/mlflow.db', 'm'): print('held', flush=True); sys.stdin.read()"
)


def test_alias_decisions_take_turns_and_a_killed_holder_frees_the_lock_at_once(monkeypatch):
    holder = subprocess.Popen(
        [sys.executable, "-c", PROMOTING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(lock_module, "PROMOTION_WAIT_S", 0.5)
        busy = pytest.raises(
            SaganError, match="another `sagan register` is still deciding the aliases of 'm'"
        )
        with busy, promotion_lock("sqlite:///x/mlflow.db", "m"):
            pass
        with promotion_lock("sqlite:///x/mlflow.db", "other-model"):  # another model: its own lock
            pass
        holder.kill()  # kill -9 while deciding: the kernel releases the lock, nothing to break
        holder.wait()
        start = time.monotonic()
        with promotion_lock("sqlite:///x/mlflow.db", "m"):
            assert time.monotonic() - start < 0.5
    finally:
        holder.kill()
        holder.wait()
