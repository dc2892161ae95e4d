"""The promotion lock: one `sagan register` at a time decides the aliases of a registered model.

MLflow aliases have no compare-and-set, so "read champion, compare, set alias" must run under a
lock. The lock is a registered model named `<model_name>.promotion-lock`: creating a registered
model is atomic in the tracking store (unique name, RESOURCE_ALREADY_EXISTS for the loser), and
deleting it releases the lock. It lives in the registry itself so that registers on different
machines sharing one tracking server exclude each other, which no local file lock could do.

A lock whose creation time has not changed for LOCK_STALE_S seconds of our own waiting is
considered left behind by a crashed process and broken (our own clock, not the server's, so clock
skew between machines cannot break a live lock).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sagan_core.errors import SaganError

log = logging.getLogger("sagan.registry")

LOCK_WAIT_S = 120.0  # give up waiting for the promotion lock after this long
LOCK_STALE_S = 60.0  # a lock unchanged this long is assumed abandoned (a decision takes < 1 s)


@contextmanager
def promotion_lock(client, name: str) -> Iterator[None]:
    """Mutual exclusion for alias decisions on the registered model `name`."""
    lock = f"{name}.promotion-lock"
    owner = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + LOCK_WAIT_S
    seen: tuple[int | None, float] | None = None  # (creation timestamp, when we first saw it)
    while not _try_create(client, lock, owner):
        created = _creation_time(client, lock)
        now = time.monotonic()
        if seen is None or seen[0] != created:
            seen = (created, now)
        elif created is not None and now - seen[1] > LOCK_STALE_S:
            log.warning("breaking the stale promotion lock %s", lock)
            _delete_quietly(client, lock)
            seen = None
            continue
        if now > deadline:
            raise SaganError(
                f"registry: could not get the promotion lock {lock!r} within {LOCK_WAIT_S:.0f}s; "
                "another `sagan register` is still deciding (rerun later)"
            )
        time.sleep(0.1 + random.random() * 0.3)  # jitter: racing waiters do not retry in lockstep
    try:
        yield
    finally:
        _delete_quietly(client, lock)


def _try_create(client, lock: str, owner: str) -> bool:
    """True: we hold the lock now; False: someone else does."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            lock, tags={"sagan.lock.owner": owner}, description="transient lock held by sagan register"
        )
        return True
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
        return False


def _creation_time(client, lock: str) -> int | None:
    """The lock's creation timestamp; None when it was released in between."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock).creation_timestamp
    except MlflowException:
        return None


def _delete_quietly(client, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
            raise
