"""Background checkpoint uploads (tracking/uploads.py): in order, the newest of one file only, a
failure retried then reported once, the snapshot removed either way."""

from __future__ import annotations

import threading

import pytest

from pipelines.tracking.uploads import Uploader, snapshot

pytestmark = pytest.mark.unit


def test_queued_uploads_of_one_file_coalesce_and_failures_are_reported_once(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    gate, sent, tries = threading.Event(), [], []
    uploads = Uploader(retries=2, delay_s=0)
    uploads.submit("blocker", gate.wait)  # holds the worker while the next three queue
    snaps = [snapshot(tmp_path / "checkpoint.pt") for _ in range(3)]
    for i, snap in enumerate(snaps):
        uploads.submit(f"upload {i}", lambda i=i, snap=snap: sent.append((i, snap.read_bytes())), snap, key="ckpt")

    def broken():
        tries.append(1)
        raise OSError("disk on fire")

    uploads.submit("the broken one", broken)
    gate.set()
    assert uploads.close() == ["the broken one: disk on fire"]
    assert sent == [(2, b"weights")] and len(tries) == 3  # the newest only; the first try and 2 retries
    assert not any(s.parent.exists() for s in snaps) and (tmp_path / "checkpoint.pt").exists()
