"""`data.source` -> a Source, an ordered list of items: `demo` (the bundled MNIST test set), an
image folder (`root/<class>/**` labelled, flat unlabelled, `root/<split>/<class>/**` merged), an
archive of one (archives.py), or `torchvision:NAME[:SPLIT]`. Order is independent of the
filesystem: classes and paths sorted, labels index the sorted class names."""

from __future__ import annotations

import gzip
import inspect
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from sagan_core.data.archives import BadMember, batches, checked_members, is_archive, read_members
from sagan_core.data.formats import IMAGE_EXTENSIONS, open_image
from sagan_core.data.safe_folder import check_folder
from sagan_core.errors import ConfigError, SaganError

DEMO_DIR = Path(__file__).parent / "assets" / "mnist"
TORCHVISION_ROOT = Path("data/raw/torchvision")
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev"}
SKIPPED_DIRS = {"__MACOSX", "@eaDir"}


@dataclass
class Source:
    """Items (key, label), keys relative paths or indices; `payloads()`: what the decoders get."""

    name: str
    class_names: list[str]
    items: list[tuple[Any, int]]
    root: Path | None = None
    arrays: Any = None  # demo: an array; torchvision: the dataset
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: int = 0  # files without an image extension (README.txt, labels.csv, ...)
    archive: Path | None = None
    members: dict[str, str] = field(default_factory=dict)  # item key -> archive member name
    links: dict[str, str | BadMember] = field(default_factory=dict)  # tar link -> its target, or why not
    read_order: list[int] | None = None

    def open(self, payload: Any) -> Image.Image:
        """The item's image, not yet decoded; untrusted bytes only as formats.RASTER_FORMATS."""
        if self.archive is not None:
            return open_image(io.BytesIO(payload))
        if self.root is not None:
            return open_image(self.root / payload)
        img = self.arrays[payload]
        img = img[0] if isinstance(img, tuple) else img  # torchvision: (image, target)
        return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))

    def payloads(self, chunk: int, max_pixels: int) -> Iterator[list[Any]]:
        order = self.read_order if self.read_order is not None else range(len(self.items))
        keys: Iterable[Any] = [self.items[i][0] for i in order]
        if self.archive is not None:
            keys = read_members(self.archive, [self.members[k] for k in keys], max_pixels, self.links)
        return batches(keys, chunk)


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in SKIPPED_DIRS


def _files_under(root: Path) -> tuple[list[str], int]:
    """Sorted image paths under `root` (FIFOs, dangling links kept: rejected with a reason), files ignored."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if _visible(n)]
        for n in filter(_visible, filenames):
            if Path(n).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, n).relative_to(root).as_posix())
            else:
                ignored += 1
    return sorted(found), ignored


def _layout(src: Source, files: list[str]) -> Source:
    nested = [f for f in files if "/" in f]
    if not nested:  # flat folder: one unlabelled set
        src.items = [(f, 0) for f in files]
        return src
    tops = {f.split("/", 1)[0] for f in nested}
    splits = all(t.lower() in SPLIT_NAMES for t in tops) and all(f.count("/") >= 2 for f in nested)
    label_of = {f: f.split("/")[1 if splits else 0] for f in nested}
    src.class_names = sorted(set(label_of.values()))
    index = {c: i for i, c in enumerate(src.class_names)}
    src.items = sorted(((f, index[c]) for f, c in label_of.items()), key=lambda it: (it[1], it[0]))
    # Images beside the class folders have no class: listed as rejected rather than silently lost.
    src.rejected = [{"file": f, "reason": "not inside a class folder"} for f in files if "/" not in f]
    return src


def _strip_single_folder(names: list[str]) -> str:
    """An archive of one folder (`cifar10/train/...`) has that folder as its dataset root."""
    prefix = ""
    while True:
        rest = [n[len(prefix) :] for n in names]
        firsts = {r.split("/", 1)[0] for r in rest}
        if len(firsts) != 1 or any("/" not in r for r in rest) or next(iter(firsts)).lower() in SPLIT_NAMES:
            return prefix
        prefix += firsts.pop() + "/"


def archive_source(archive: Path, name: str) -> Source:
    order, links = checked_members(archive)
    visible = [
        n for n in order if all(_visible(part) for part in PurePosixPath(n).parts) and not n.endswith("/")
    ]
    images = [n for n in visible if PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS]
    prefix = _strip_single_folder(images)
    members = {n[len(prefix) :]: n for n in images}
    src = _layout(Source(name, [], [], archive=archive, ignored=len(visible) - len(images)), sorted(members))
    src.members, src.links = members, {n: links[n] for n in members.values() if n in links}
    rank = {n: i for i, n in enumerate(order)}
    src.read_order = sorted(range(len(src.items)), key=lambda i: rank[members[src.items[i][0]]])
    return src


def torchvision_source(spec: str) -> Source:
    name, _, split = spec.removeprefix("torchvision:").partition(":")
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
    targets = getattr(ds, "targets", getattr(ds, "labels", None))  # SVHN, STL10: labels
    items: list[tuple[Any, int]]
    if classes and targets is not None and len(targets) == len(ds):
        # Labels index the sorted class names, whatever order the dataset declares them in.
        names = sorted(str(c) for c in classes)
        remap = {old: names.index(str(c)) for old, c in enumerate(classes)}
        items = [(i, remap[int(t)]) for i, t in enumerate(np.asarray(targets).tolist())]
    else:
        names, items = [], [(i, 0) for i in range(len(ds))]
    return Source(f"torchvision:{name}", names, items, arrays=ds)


def open_source(spec: str) -> Source:
    if spec == "demo":
        labels = _read_idx(DEMO_DIR / "t10k-labels-idx1-ubyte.gz")
        items = [(i, int(lab)) for i, lab in enumerate(labels)]
        images = _read_idx(DEMO_DIR / "t10k-images-idx3-ubyte.gz")
        return Source("demo (MNIST test set)", [str(i) for i in range(10)], items, arrays=images)
    if spec.startswith("torchvision:"):
        return torchvision_source(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        check_folder(path, spec)  # nothing DVC would block on (safe_folder.py)
        root = path.resolve()
        files, ignored = _files_under(root)
        return _layout(Source(spec, [], [], root=root, ignored=ignored), files)
    if path.is_file() and is_archive(path):
        return archive_source(path, spec)
    if path.exists():
        raise ConfigError(f"data.source: {spec!r} is not a folder or a .tar/.tar.gz/.zip archive")
    raise ConfigError(
        f"data.source: {spec!r} does not exist (expected demo, a folder, an archive or torchvision:NAME)"
    )
