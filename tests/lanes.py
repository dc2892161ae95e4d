"""The suite's three lanes (a pytest plugin, registered in conftest.py), chosen by what a test starts.

- unit: no subprocess, no server, a few training steps at most. `pytest -m "not slow"` runs these
  (the fast lane, ~3 min on 2 cores).
- integration: stages, the trainer and flow tasks in this process, at toy size.
- e2e: subprocesses, servers, torchrun, the DVC CLI, kill -9, the journeys on a git clone.

`pytest --lane e2e` runs one lane (repeatable). Every test names its lane (`pytestmark` in its module, or a mark on the test, which wins); a test
without one is a collection error. Integration and e2e tests are also marked `slow`, so the fast lane
stays `-m "not slow"`. A unit test that starts a process (subprocess, os.system/exec/spawn, fork, or
a multiprocessing Process), in its body or its function-scoped fixtures, fails and says so: the process is
refused through a Python audit hook, and the report is failed even if the code swallowed the error.
Session and module fixtures (built once, e.g. the prepared demo) are not guarded, but a unit test that
asks for a server fixture is a collection error.
"""

from __future__ import annotations

import multiprocessing.process
import sys

import pytest

LANES = ("unit", "integration", "e2e")
PROCESS_EVENTS = (
    "subprocess.Popen",
    "os.system",
    "os.fork",
    "os.forkpty",
    "os.posix_spawn",
    "os.exec",
    "os.spawn",
)

# Session fixtures that start a server: a unit test asking for one is refused at collection.
SERVER_FIXTURES = {"prefect_api", "prefect_server", "mlflow_server", "s3_server"}

_guarded: list[str] = []  # the node id of the unit test running now (empty: none)
_started: dict[str, str] = {}  # node id -> the first process a unit test tried to start


def lane_of(item: pytest.Item) -> str | None:
    """The closest lane mark (a test's own mark wins over its module's)."""
    return next((m.name for m in item.iter_markers() if m.name in LANES), None)


def _refuse(what: str) -> None:
    if _guarded:
        _started.setdefault(_guarded[0], what)
        raise RuntimeError(f"a unit test may not start a process ({what}): mark the test integration or e2e")


def _audit(event: str, args: tuple) -> None:
    if _guarded and event in PROCESS_EVENTS:
        _refuse(f"{event} {args[0] if args else ''}".strip())


sys.addaudithook(_audit)  # audit hooks cannot be removed; it is inert outside unit tests

# multiprocessing's spawn and forkserver start methods launch their child without an audit event, so
# Process.start is wrapped as well (the public method every start method goes through).
_process_start = multiprocessing.process.BaseProcess.start


def _guarded_start(self):
    _refuse(f"multiprocessing {type(self).__name__}")
    return _process_start(self)


multiprocessing.process.BaseProcess.start = _guarded_start


def pytest_addoption(parser):
    parser.addoption(
        "--lane",
        action="append",
        choices=LANES,
        help="run only this lane's tests (repeatable); `-m e2e` would also pick a module's other lanes",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the `slow` mark this adds
def pytest_collection_modifyitems(config, items):
    unmarked, servers, other_lanes = [], [], []
    wanted = config.getoption("--lane")
    for item in items:
        lane = lane_of(item)
        if wanted and lane not in wanted:
            other_lanes.append(item)
        if lane is None:
            unmarked.append(item.nodeid)
        elif lane != "unit":
            item.add_marker(pytest.mark.slow)
        elif lane == "unit" and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            servers.append(item.nodeid)
    if servers:
        raise pytest.UsageError(
            f"unit test(s) ask for a server fixture (mark them e2e): {', '.join(servers[:5])}"
        )
    if unmarked:
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) name no lane (mark them unit, integration or e2e): "
            + ", ".join(unmarked[:5])
        )
    if other_lanes:
        config.hook.pytest_deselected(items=other_lanes)
        dropped = set(map(id, other_lanes))
        items[:] = [item for item in items if id(item) not in dropped]


def _guard(item: pytest.Item):
    if lane_of(item) == "unit":
        _guarded.append(item.nodeid)
    try:
        yield
    finally:
        _guarded.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _guard(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _guard(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Fixtures shared beyond one test (e.g. the demo prepared once, with its decoding workers) are
    built once per session, not by the unit test that happens to ask first: not guarded."""
    if fixturedef.scope == "function":
        yield
        return
    saved = _guarded[:]
    _guarded.clear()
    try:
        yield
    finally:
        _guarded[:] = saved


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    started = _started.get(item.nodeid)
    if started and call.when in ("setup", "call") and not report.failed:
        report.outcome = "failed"
        report.longrepr = f"unit test started a process ({started}): mark it integration or e2e"
