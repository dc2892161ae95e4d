"""The promotion lock: one `sagan register` at a time decides the aliases of a registered model.

MLflow aliases have no compare-and-set, so "read champion, compare, set alias" must run under a
lock. The lock is a registered model named `<model_name>.promotion-lock`: creating a registered
model is atomic in the tracking store (unique name, RESOURCE_ALREADY_EXISTS for the loser), and
deleting it releases the lock. It lives in the registry itself so that registers on different
machines sharing one tracking server exclude each other, which no local file lock could do.

Ownership: the lock's tags record a random owner token, the holder's host (hostname and pid
namespace), pid and process start time, and a heartbeat counter that a thread of the holder bumps
every HEARTBEAT_S. A waiter breaks the lock only when its holder is gone:
- on the same host, at once when that process no longer exists (pid absent, or reused: another
  start time);
- anywhere, when the heartbeat has not changed for LOCK_STALE_S of the waiter's own waiting (our
  clock, never the server's, so clock skew cannot break a live lock): the holder's machine died,
  or it lost the tracking server for that long.
A live holder keeps beating, so it is never broken for taking long. Releasing (and breaking)
deletes the lock only while it still carries the token seen: a former holder whose lock was broken
never deletes its successor's.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sagan_core.errors import SaganError

log = logging.getLogger("sagan.registry")

LOCK_WAIT_S = 120.0  # give up waiting for the promotion lock after this long
HEARTBEAT_S = 5.0  # the holder bumps the lock's heartbeat this often
LOCK_STALE_S = 60.0  # a heartbeat unchanged this long means the holder is gone (a decision takes < 1 s)

OWNER, HOST, PID, STARTED, BEAT = (f"sagan.lock.{k}" for k in ("owner", "host", "pid", "started", "beat"))


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, its identity; "" unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _host() -> str:
    """This machine and pid namespace: where a pid means the same process."""
    ns = ""
    with suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return f"{socket.gethostname()}|{ns}"


def _alive(pid: int, started: str) -> bool:
    """Whether process `pid` (started at `started`, "" unknown) of this host still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _start_time(pid)
    return not (started and now and now != started)


def _gone(tags: dict[str, str]) -> str | None:
    """Why the holder described by the lock's tags is known to be gone; None when it may live."""
    if tags.get(HOST) != _host() or not str(tags.get(PID, "")).isdigit():
        return None
    pid = int(tags[PID])
    return None if _alive(pid, tags.get(STARTED, "")) else f"its process {pid} on this host is gone"


@contextmanager
def promotion_lock(client, name: str) -> Iterator[None]:
    """Mutual exclusion for alias decisions on the registered model `name`."""
    lock = f"{name}.promotion-lock"
    token = uuid.uuid4().hex
    _acquire(client, lock, token)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(client, lock, token, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if not _delete_if_owned(client, lock, token):
            log.warning("the promotion lock %s was taken over meanwhile; left to its new holder", lock)


def _acquire(client, lock: str, token: str) -> None:
    """Create the lock as `token`, breaking it only when its holder is gone (module docstring)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    seen: tuple[tuple, float] | None = None  # (the lock's state, when we first saw it)
    while not _try_create(client, lock, token):
        held = _read(client, lock)
        if held is None:
            continue  # released in between: try again at once
        now = time.monotonic()
        state = (held.creation_timestamp, held.tags.get(OWNER), held.tags.get(BEAT))
        if seen is None or seen[0] != state:
            seen = (state, now)
        why = _gone(held.tags)
        if why is None and now - seen[1] > LOCK_STALE_S:
            why = f"its heartbeat has not changed for {LOCK_STALE_S:g}s"
        if why is not None:
            log.warning("breaking the promotion lock %s (%s): %s", lock, held.tags.get(OWNER), why)
            _delete_if_owned(client, lock, held.tags.get(OWNER))
            seen = None
            continue
        if now > deadline:
            raise SaganError(
                f"registry: could not get the promotion lock {lock!r} within {LOCK_WAIT_S:.0f}s; "
                "another `sagan register` is still deciding (rerun later)"
            )
        time.sleep(0.1 + random.random() * 0.3)  # jitter: racing waiters do not retry in lockstep


def _heartbeat(client, lock: str, token: str, stop: threading.Event) -> None:
    """The holder's thread: bump the lock's heartbeat until `stop`, while the lock is still ours."""
    n = 0
    while not stop.wait(HEARTBEAT_S):
        n += 1
        try:
            held = _read(client, lock)
            if held is None or held.tags.get(OWNER) != token:
                log.warning("lost the promotion lock %s (broken by another register)", lock)
                return
            client.set_registered_model_tag(lock, BEAT, str(n))
        except Exception as e:  # a transient store error: the next beat retries
            log.debug("promotion lock heartbeat failed: %s", e)


def _try_create(client, lock: str, token: str) -> bool:
    """True: we hold the lock now; False: someone else does."""
    from mlflow.exceptions import MlflowException

    pid = os.getpid()
    tags = {OWNER: token, HOST: _host(), PID: str(pid), STARTED: _start_time(pid), BEAT: "0"}
    try:
        client.create_registered_model(lock, tags=tags, description="transient lock held by sagan register")
        return True
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
        return False


def _read(client, lock: str):
    """The lock's registered model; None when it does not exist (released in between)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
            raise
        return None


def _delete_if_owned(client, lock: str, token: str | None) -> bool:
    """Delete the lock if it still carries `token`; False when another holder's lock is there.

    (Read, then delete: the store has no conditional delete. The window is milliseconds, and a
    new holder is only ever created after the lock we read was deleted.)
    """
    from mlflow.exceptions import MlflowException

    held = _read(client, lock)
    if held is None:
        return True
    if held.tags.get(OWNER) != token:
        return False
    try:
        client.delete_registered_model(lock)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
            raise
    return True
