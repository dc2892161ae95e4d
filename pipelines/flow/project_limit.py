"""One run per project across machines: a Prefect global concurrency limit, where a server is in use.

The local lock (pipelines.lock) is a file lock: it keeps two runs on one machine apart, but two
workers of a work pool on two machines (the project on a shared filesystem, or the same path on
each) would each get it. A flow run started from a deployment (`sagan pipeline serve|deploy`)
therefore also holds the server's global concurrency limit `sagan-project-<hash of the project
path>` with one slot (`prefect gcl ls` lists it). `sagan pipeline run` without a server keeps only
the file lock: Prefect's temporary server lives and dies with the run, so it could not guard anything.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from sagan_core.errors import SaganError


def limit_name(project_dir: str | Path) -> str:
    digest = hashlib.sha256(str(Path(project_dir).resolve()).encode()).hexdigest()[:12]
    return f"sagan-project-{digest}"


def ensure_limit(project_dir: str | Path) -> str:
    """Create the project's one-slot limit on the configured server unless it exists; its name."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = limit_name(project_dir)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.upsert_global_concurrency_limit_by_name(name, 1)
    return name


@contextlib.contextmanager
def project_slot(project_dir: str | Path, timeout_s: float) -> Iterator[None]:
    """Hold the project's slot while a deployment's run works on it (no-op outside deployments)."""
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import deployment

    if deployment.id is None:  # `sagan pipeline run`: the file lock alone
        yield
        return
    name = ensure_limit(project_dir)
    try:
        # strict: a limit that vanished must not be skipped silently
        with concurrency(name, occupy=1, timeout_seconds=max(timeout_s, 1.0), strict=True):
            yield
    except TimeoutError:
        raise SaganError(
            f"another flow run holds this project ({Path(project_dir).resolve()}, Prefect concurrency "
            f"limit {name}); waited {max(timeout_s, 1.0):g} s (pipeline.lock_timeout_s)"
        ) from None
