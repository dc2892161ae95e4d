"""Prefect fixture (a pytest plugin, registered in conftest.py): one temporary server per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A temporary Prefect server for the whole session (each start costs ~20 s); its API URL.

    Subprocesses reach the same server by setting PREFECT_API_URL to the returned URL.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()
