"""Where `sagan prepare` reads images from: `data.source` -> a Source (an ordered list of items).

- `demo`: the bundled MNIST test set (10,000 real digits, idx.gz in sagan_core/assets/mnist).
- an ImageFolder directory: `root/<class>/**/*.png|jpg|...` -> labelled; a flat folder -> unlabelled.
  A folder of splits (`root/train/<class>`, `root/test/<class>`, ...) is merged class by class.
- a `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`, `.tar.xz` or `.zip` archive of such a folder, extracted
  into a temporary directory after every member has been checked (no absolute paths, no `..`, no
  links leaving the archive, no device files or FIFOs): one unsafe member refuses the whole archive.
- `torchvision:NAME[:SPLIT]`: a torchvision built-in dataset (CIFAR10, MNIST, STL10, CelebA, ...),
  downloaded into `data/raw/torchvision` when online.

Order is deterministic and independent of the filesystem: class names are sorted, files are sorted
by their path relative to the root, and labels index the sorted class names.
"""

from __future__ import annotations

import gzip
import inspect
import os
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError, SaganError

DEMO_DIR = Path(__file__).parent / "assets" / "mnist"
TORCHVISION_ROOT = Path("data/raw/torchvision")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev"}
# Junk that archivers and file browsers leave next to images; never data.
SKIPPED_DIRS = {"__MACOSX", "@eaDir"}


@dataclass
class Source:
    """Items to decode in order: (key, label). Keys are relative paths (files) or indices (arrays).

    `load(key)` returns an open PIL image; `root` is the directory that relative paths live in.
    """

    name: str
    class_names: list[str]
    items: list[tuple[Any, int]]
    root: Path | None = None
    arrays: Any = None  # in-memory images for demo/torchvision sources
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: int = 0  # files without an image extension (README.txt, labels.csv, ...)

    def open(self, key: Any) -> Image.Image:
        if self.root is not None:
            return Image.open(self.root / key)
        img = self.arrays[key]
        return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


# --- demo -------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def demo_source() -> Source:
    images = _read_idx(DEMO_DIR / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(DEMO_DIR / "t10k-labels-idx1-ubyte.gz")
    items = [(i, int(lab)) for i, lab in enumerate(labels)]
    return Source("demo (MNIST test set)", [str(i) for i in range(10)], items, arrays=images)


# --- image folders ----------------------------------------------------------------------------


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in SKIPPED_DIRS


def _files_under(d: Path, root: Path) -> tuple[list[str], int]:
    """Sorted image-file paths under `d` relative to `root` (links not followed into dirs), and
    the number of other files ignored. Entries that are not regular files (dangling links, FIFOs)
    are kept so that validation rejects them with a reason instead of silently losing them."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if _visible(n)]
        for n in filenames:
            if not _visible(n):
                continue
            if Path(n).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, n).relative_to(root).as_posix())
            else:
                ignored += 1
    return sorted(found), ignored


def _subdirs(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir() and _visible(p.name)), key=lambda p: p.name)


def folder_source(root: Path, name: str | None = None) -> Source:
    root = root.resolve()
    src = Source(name or str(root), [], [], root=root)
    top = _subdirs(root)
    loose, ignored = [], 0
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if not p.is_dir() and _visible(p.name):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                loose.append(p.name)
            else:
                ignored += 1
    if not top:  # flat folder: one unlabelled set
        src.items, src.ignored = [(f, 0) for f in _files_under(root, root)[0]], ignored
        return src
    # A folder of splits (train/<class>, test/<class>) is one dataset: merge the splits class by class.
    splits = all(d.name.lower() in SPLIT_NAMES and _subdirs(d) for d in top)
    class_dirs: dict[str, list[Path]] = {}
    for d in top:
        for c in _subdirs(d) if splits else [d]:
            class_dirs.setdefault(c.name, []).append(c)
    src.class_names = sorted(class_dirs)
    for label, cname in enumerate(src.class_names):
        for d in class_dirs[cname]:
            files, n_ignored = _files_under(d, root)
            src.items += [(f, label) for f in files]
            ignored += n_ignored
    # Images beside the class folders have no class: listed as rejected rather than silently lost.
    src.rejected = [{"file": f, "reason": "not inside a class folder"} for f in loose]
    src.ignored = ignored
    return src


# --- archives ---------------------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise SaganError(
            f"{archive}: refused: member {name!r} would be written outside the extraction folder"
        )
    return p


def _check_tar(tf: tarfile.TarFile, archive: Path) -> None:
    for m in tf.getmembers():
        p = _safe_name(m.name, archive)
        if m.issym() or m.islnk():
            # Link targets are resolved from the link's folder (symlinks) or the root (hard links).
            base = p.parent if m.issym() else PurePosixPath()
            target = PurePosixPath(m.linkname.replace("\\", "/"))
            parts = (base / target).parts
            depth = 0
            for part in parts:
                depth += -1 if part == ".." else (0 if part == "." else 1)
                if depth < 0:
                    break
            if target.is_absolute() or depth < 0:
                raise SaganError(f"{archive}: refused: link {m.name!r} -> {m.linkname!r} leaves the archive")
        elif not (m.isfile() or m.isdir()):
            raise SaganError(f"{archive}: refused: member {m.name!r} is a device file or FIFO")


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        _safe_name(info.filename, archive)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no file type
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise SaganError(f"{archive}: refused: member {info.filename!r} is a link or special file")


@contextmanager
def extracted(archive: Path) -> Iterator[Path]:
    """Check every member, extract into a temporary folder, yield the dataset root, clean up."""
    parent = Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="sagan-extract-", dir=parent) as tmp:
        dest = Path(tmp)
        try:
            if archive.name.lower().endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    _check_zip(zf, archive)
                    zf.extractall(dest)
            else:
                with tarfile.open(archive) as tf:
                    _check_tar(tf, archive)
                    # Our checks above give the clear message; the "data" filter is defence in depth.
                    tf.extractall(dest, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise SaganError(f"{archive}: cannot read archive ({type(e).__name__}: {e})") from None
        # An archive of one folder (`cifar10/train/...`) has that folder as its dataset root.
        root = dest
        while len(entries := [p for p in root.iterdir() if _visible(p.name)]) == 1 and entries[0].is_dir():
            if entries[0].name.lower() in SPLIT_NAMES:
                break
            root = entries[0]
        yield root


# --- torchvision ------------------------------------------------------------------------------


def torchvision_source(spec: str) -> Source:
    _, _, rest = spec.partition(":")
    name, _, split = rest.partition(":")
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not name or cls is None or not inspect.isclass(cls):
        known = "CIFAR10, CIFAR100, MNIST, FashionMNIST, KMNIST, STL10, SVHN, CelebA, ..."
        raise ConfigError(f"data.source: unknown torchvision dataset {name!r} (e.g. {known})")
    root = TORCHVISION_ROOT / name
    sig = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"download": True}
    if "train" in sig:
        kwargs["train"] = split in ("", "train")
    elif "split" in sig:
        kwargs["split"] = split or "train"
    try:
        ds = cls(str(root), **kwargs)
    except Exception as e:  # noqa: BLE001 - torchvision raises anything from URLError to RuntimeError
        raise SaganError(
            f"data.source {spec!r}: could not load or download {name} ({type(e).__name__}: {e}); "
            f"offline, put the files torchvision expects for {name} under {root.resolve()}/ "
            "or use an image folder or archive as data.source"
        ) from None
    classes = getattr(ds, "classes", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    items: list[tuple[Any, int]]
    if classes and targets is not None and len(targets) == len(ds):
        # Labels index the sorted class names, whatever order the dataset declares them in.
        names = sorted(str(c) for c in classes)
        remap = {old: names.index(str(c)) for old, c in enumerate(classes)}
        items = [(i, remap[int(t)]) for i, t in enumerate(np.asarray(targets).tolist())]
    else:
        names, items = [], [(i, 0) for i in range(len(ds))]
    return Source(f"torchvision:{name}", names, items, arrays=_TorchvisionImages(ds))


class _TorchvisionImages:
    """ds[i] -> the PIL image (torchvision datasets return (image, target))."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __getitem__(self, i: int) -> Image.Image:
        return self.ds[i][0]


# --- dispatch ---------------------------------------------------------------------------------


@contextmanager
def open_source(spec: str) -> Iterator[Source]:
    if spec == "demo":
        yield demo_source()
        return
    if spec.startswith("torchvision:"):
        yield torchvision_source(spec)
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        yield folder_source(path, name=spec)
    elif path.is_file() and is_archive(path):
        with extracted(path) as root:
            yield folder_source(root, name=spec)
    elif path.exists():
        raise ConfigError(f"data.source: {spec!r} is not a folder or a .tar/.tar.gz/.zip archive")
    else:
        raise ConfigError(
            f"data.source: {spec!r} does not exist (expected demo, a folder, an archive or torchvision:NAME)"
        )
