"""`sagan prepare`: every image of `data.source` decoded into the prepared dataset (dataset.py).

A bad file is one rejection in the manifest, its reason's prefix before ':' stable for tools (empty
file | unreadable | not an image | corrupt | truncated | decompression bomb | too small | unsupported
mode | not inside a class folder); too many fail prepare (rejections.py). Chunks are appended as they
arrive: memory stays flat. The dataset is built beside `data.prepared_dir` and swapped in whole
(renameat2 RENAME_EXCHANGE): a crash leaves the old dataset or the new one, never a mix."""

from __future__ import annotations

import ctypes
import errno
import glob
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

from sagan_core.atomic import fsync_dir, temp_name, write_all, write_atomic, write_json
from sagan_core.config import DataConfig
from sagan_core.data import rejections
from sagan_core.data.dataset import content_hash
from sagan_core.data.decode import decode_all
from sagan_core.data.pool import available_cores
from sagan_core.data.sources import Source, open_source
from sagan_core.errors import SaganError, WriteError

_HEADER_LEN = 128  # fixed .npy header size, so the final image count can be written in place


def _npy_header(shape: tuple[int, ...]) -> bytes:
    d = repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode("latin1")
    body = d + b" " * (_HEADER_LEN - 10 - len(d) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def prepare(cfg: DataConfig, progress: bool = True) -> dict[str, Any]:
    source = open_source(cfg.source)
    if not source.items:
        if source.rejected:  # images there, none inside a class folder
            rejections.fail(cfg, f"no images found ({len(source.rejected)} rejected)", source.rejected)
        raise SaganError(f"data.source {cfg.source!r}: no images found (0 rejected)")
    out = Path(cfg.prepared_dir)
    out = out.resolve() if out.is_symlink() else out  # a link to a bigger disk: build there
    _refuse_foreign(out)  # before the decoding work, and again at the swap
    kept = "the previous dataset is unchanged" if os.path.lexists(out) else "nothing was written"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):  # builds of killed prepares
            pid = path.name[len(out.name) + 2 :].split(".", 1)[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                _remove(path)
        new = temp_name(out.with_name(f"{out.name}.{os.getpid()}"))  # not mkdtemp: its 0700 would stay
        new.mkdir()
    except OSError as e:
        raise WriteError(out, e, kept) from None
    try:
        manifest = _build(source, cfg, new, progress)
        _swap_in(new, out)
        rejections.rejected_path(cfg.prepared_dir).unlink(missing_ok=True)
    except WriteError as e:  # named by the build folder's file: the user knows data.prepared_dir
        _remove(new)
        raise WriteError(out, e.error, kept) from None
    except BaseException:
        _remove(new)
        raise
    return manifest


def _build(source: Source, cfg: DataConfig, out: Path, progress: bool) -> dict[str, Any]:
    total = len(source.items) + len(source.rejected)
    img_shape = (cfg.channels, cfg.resolution, cfg.resolution)
    # ~4 MB of decoded pixels per chunk: big enough to amortise IPC, small enough to bound memory.
    chunk = max(8, min(512, (4 << 20) // int(np.prod(img_shape))))
    images = out / "images.npy"
    kept, bad = _decode_to_file(source, cfg, images, img_shape, chunk, progress)
    n = len(kept)
    rejected = list(source.rejected) + [r for _, r in sorted(bad, key=lambda b: b[0])]
    if n == 0:
        rejections.fail(cfg, f"no valid images ({len(rejected)} rejected)", rejected)
    if (frac := len(rejected) / total) > cfg.max_rejected_fraction:
        rejections.fail(
            cfg,
            f"{len(rejected)} of {total} images rejected "
            f"({frac:.1%} > data.max_rejected_fraction={cfg.max_rejected_fraction})",
            rejected,
        )
    perm = np.argsort(np.asarray(kept), kind="stable")
    if np.any(perm != np.arange(n)):  # archives are read in archive order: restore sorted order
        src = np.load(images, mmap_mode="r")

        def reorder(f) -> None:
            f.write(_npy_header((n, *img_shape)))
            for i in range(0, n, chunk):
                f.write(np.ascontiguousarray(src[perm[i : i + chunk]]).tobytes())

        write_atomic(images, reorder)
    label_arr = np.asarray([source.items[kept[i]][1] for i in perm], dtype=np.int64)
    labels = io.BytesIO()  # np.save to a real file writes past the file object: its errors lack errno
    np.save(labels, label_arr)
    write_atomic(out / "labels.npy", lambda f: f.write(labels.getbuffer()))
    counts = np.bincount(label_arr, minlength=max(1, len(source.class_names))).tolist()
    manifest = {
        "source": source.name,
        "num_images": n,
        "num_classes": len(source.class_names),
        "class_names": source.class_names,
        "class_counts": counts if source.class_names else [],
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "content_hash": content_hash(images, label_arr, source.class_names),
        "num_rejected": len(rejected),
        "num_ignored": source.ignored,
        "rejected": rejected,
    }
    write_json(out / "manifest.json", manifest)  # fsyncs the file and `out`
    return manifest


def _decode_to_file(
    source: Source, cfg: DataConfig, path: Path, img_shape: tuple[int, ...], chunk: int, progress: bool
) -> tuple[list[int], list[tuple[int, dict[str, str]]]]:
    """(item position of each image written, (position, rejection) of each rejected item)."""
    # Auto: one process per core, but none for tiny sources (pool start-up would dominate).
    workers = cfg.workers or min(available_cores(), max(1, len(source.items) // 256))
    order = source.read_order if source.read_order is not None else range(len(source.items))
    kept: list[int] = []  # item positions of the valid images, in the order they were written
    bad: list[tuple[int, dict[str, str]]] = []
    done = 0
    bar = tqdm(total=len(source.items), desc="prepare", unit="img", disable=not progress, smoothing=0.1)
    with bar, open(path, "wb", buffering=0) as f:  # chunks of ~4 MB: no buffer needed
        write_all(f, _npy_header((0, *img_shape)), path)  # rewritten with the real count at the end
        for arrays, reasons in decode_all(source, cfg, workers, chunk):
            write_all(f, np.ascontiguousarray(arrays).tobytes(), path)
            for pos, reason in zip(order[done : done + len(reasons)], reasons, strict=True):
                if reason is None:
                    kept.append(pos)
                else:
                    bad.append((pos, {"file": str(source.items[pos][0]), "reason": reason}))
            done += len(reasons)
            bar.update(len(reasons))
            bar.set_postfix(rejected=len(bad) + len(source.rejected), refresh=False)
        f.seek(0)
        write_all(f, _npy_header((len(kept), *img_shape)), path, sync=True)
    return kept, bad


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


PREPARED_FILES = frozenset({"images.npy", "labels.npy", "manifest.json"})


def _refuse_foreign(out: Path) -> None:
    """The swap deletes the previous `out`: it must hold only a prepared dataset's files (and their
    partial writes: `.<name>.*.tmp`, `<name>.tmp` from older versions), never what sagan did not write."""
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise SaganError(
            f"data.prepared_dir {str(out)!r}: not a folder; sagan replaces it whole, so it "
            "must be a prepared dataset or absent (choose another data.prepared_dir)"
        )
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in PREPARED_FILES
        and not (p.name.endswith(".tmp") and p.name.lstrip(".").startswith(tuple(PREPARED_FILES)))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise SaganError(
            f"data.prepared_dir {str(out)!r} holds files sagan did not write ({shown}); "
            "prepare replaces that folder whole, so it refuses: choose another data.prepared_dir"
        )


def _swap_in(new: Path, out: Path) -> None:
    """`new` becomes `out` in one step; the previous `out` is deleted after."""
    fsync_dir(new)
    _refuse_foreign(out)
    if not os.path.lexists(out):
        os.rename(new, out)
    elif _exchange(new, out):  # `new` now names the previous dataset
        _remove(new)
    else:  # no atomic exchange here: two renames (a crash between them leaves the old at `stale`)
        stale = new.with_name(new.name[: -len(".tmp")] + ".old.tmp")
        os.rename(out, stale)
        os.rename(new, out)
        _remove(stale)
    fsync_dir(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux/glibc
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
