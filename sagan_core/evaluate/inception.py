"""pytorch-fid's Inception, fed exactly as pytorch-fid feeds it (PNG -> RGB -> ToTensor), so our FIDs
equal pytorch-fid's. Weights are never substituted silently: a file other than the official one is
used (tests, air-gapped machines) but every evaluation says so (`is_official`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfi
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sagan_core.atomic import write_atomic
from sagan_core.errors import ConfigError, SaganError

WEIGHTS_URL = pfi.FID_WEIGHTS_URL
WEIGHTS_NAME = WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
DOWNLOAD_TIMEOUT_S = 20
POOL3 = 3  # pytorch-fid's block index of the 2048-d pool3 features
# sha256 of pytorch-fid's file (it ships none): published by projects that verify it; its prefix is the name's
OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def default_weights_path() -> Path:
    """Where torch hub (pytorch-fid's loader) keeps the file: TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def resolve_weights(explicit: str | None = None) -> Path:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"eval.inception_weights: no such file {path}")
        return path
    path = default_weights_path()
    if path.is_file():
        return path
    try:
        _download(WEIGHTS_URL, path)
    except OSError as e:  # URLError, timeouts, disk errors
        raise SaganError(
            f"pytorch-fid Inception weights {WEIGHTS_NAME} not found in {path.parent} and the download "
            f"failed ({getattr(e, 'reason', e)}); put the file there (from {WEIGHTS_URL}), set "
            "TORCH_HOME, or set eval.inception_weights"
        ) from None
    return path


def _download(url: str, dest: Path) -> None:
    """torch hub's download with a timeout (its own has none: an unreachable host would hang the
    stage), atomic, checking hub's sha256 prefix in the name before the file appears."""
    prefix = dest.stem.rsplit("-", 1)[-1]  # torch hub convention: name-<sha256 prefix>.pth

    def fetch(f) -> None:
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if not h.hexdigest().startswith(prefix):  # raising here leaves no file behind
            raise OSError(f"downloaded file has sha256 {h.hexdigest()[:8]}..., expected {prefix}...")

    write_atomic(dest, fetch)


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        with open(path, "rb") as f:
            _HASHES[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _HASHES[key]


def is_official(sha256: str) -> bool:
    return sha256 == OFFICIAL_SHA256


def unofficial_warning(path: Path) -> str:
    return (
        f"WARNING: Inception weights {path} are not pytorch-fid's official {WEIGHTS_NAME} (sha256 "
        f"{OFFICIAL_SHA256[:8]}...): FIDs are NOT comparable with published ones"
    )


@contextmanager
def _hub_holding(weights: Path):
    """pytorch-fid's InceptionV3 takes no weights path (it always calls torch hub's
    load_state_dict_from_url): a file outside the hub cache is shown to it as a temporary
    TORCH_HOME while the module is built. tests/test_fid.py fails when pytorch-fid's API changes."""
    saved = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory() as home:
        hub = Path(home) / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        (hub / WEIGHTS_NAME).symlink_to(weights.resolve())
        os.environ["TORCH_HOME"] = home
        try:
            yield
        finally:
            del os.environ["TORCH_HOME"]
            if saved is not None:
                os.environ["TORCH_HOME"] = saved


class InceptionFeatures(nn.Module):
    """pytorch-fid's InceptionV3 returning (features of `dims`, unbiased logits or None). The IS
    logits are pool3 @ fc.weight^T without the bias, as the original TF IS code and torch-fidelity."""

    def __init__(self, weights: Path, dims: int = 2048, logits: bool = False):
        super().__init__()
        weights = Path(weights)
        if dims not in pfi.InceptionV3.BLOCK_INDEX_BY_DIM:
            raise ConfigError(f"dims: expected one of 64, 192, 768, 2048, got {dims}")
        self.block = pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        blocks = sorted({self.block, POOL3} if logits else {self.block})
        try:
            with nullcontext() if weights == default_weights_path() else _hub_holding(weights):
                self.net = pfi.InceptionV3(blocks, resize_input=True, normalize_input=True)
            fc = torch.load(weights, map_location="cpu", weights_only=True)["fc.weight"] if logits else None
        except Exception as e:  # truncated or foreign files raise many types
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise SaganError(f"{weights}: not pytorch-fid Inception weights ({first})") from None
        self.fc_weight = None if fc is None else nn.Parameter(fc.float(), requires_grad=False)
        self.channels_last = False  # set by load_net: feed inputs in that layout
        self.eval()

    def forward(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = dict(zip(self.net.output_blocks, self.net(x01)))
        feat = outs[self.block]
        if feat.shape[2] != 1 or feat.shape[3] != 1:  # as pytorch-fid does for dims < 2048
            feat = F.adaptive_avg_pool2d(feat, output_size=(1, 1))
        logits = None if self.fc_weight is None else outs[POOL3].flatten(1) @ self.fc_weight.t()
        return feat.flatten(1), logits


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 with save_image(normalize, value_range=(-1, 1))'s ops in its order."""
    x = x.float().clamp(-1.0, 1.0).sub(-1.0).div(2.0)
    return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def to_inception_input(u8: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> ToTensor() of the PNG opened with .convert('RGB')."""
    x = u8.float().div(255)
    if x.shape[1] == 1:  # PIL's L -> RGB conversion replicates the gray value
        x = x.repeat(1, 3, 1, 1)  # contiguous, like the DataLoader's batches
    return x


@contextmanager
def exact_fp32():
    """No TF32 and no autocast (bf16 training, CPU or CUDA) during the pass: reduced precision moves FID."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    with ExitStack() as stack:
        stack.callback(setattr, matmul, "allow_tf32", matmul.allow_tf32)
        stack.callback(setattr, cudnn, "allow_tf32", cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            stack.enter_context(torch.autocast(dev, enabled=False))
        yield


# CPU images per forward: 8-12% faster than 50-250 on 2 cores, bit-identical (BENCHMARKS.md)
CPU_CHUNK = 10


@torch.inference_mode()
def run_batch(
    net: InceptionFeatures, u8: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    chunk = CPU_CHUNK if device.type == "cpu" else len(u8)
    feats, logits = [], []
    for start in range(0, len(u8), chunk):
        x = to_inception_input(u8[start : start + chunk].to(device, non_blocking=True))
        if net.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f, lg = net(x)
        feats.append(f.float().cpu())
        logits.append(None if lg is None else lg.float().cpu())
    return torch.cat(feats), None if logits[0] is None else torch.cat(logits)


def fold_batchnorm(net: nn.Module) -> int:
    """Each eval-mode BatchNorm folded into its conv (BasicConv2d); how many were folded."""
    folded = 0
    for m in net.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            m.conv, m.bn = fuse_conv_bn_eval(conv, bn), nn.Identity()
            folded += 1
    return folded


def load_net(
    weights: Path, dims: int, logits: bool, device: torch.device, fast: bool = False
) -> InceptionFeatures:
    """The network on `device`, channels_last on CUDA. `fast` (in-training, `sagan fid`): also on
    CPU, BatchNorm folded: equal to rounding (~3e-6), 1.2-1.6x cheaper on CPU (BENCHMARKS.md);
    `sagan evaluate` keeps pytorch-fid's layout on CPU, so promotion FIDs are its digits."""
    net = InceptionFeatures(weights, dims, logits)
    if fast:
        fold_batchnorm(net.net)
    net.channels_last = fast or device.type == "cuda"
    return net.to(device, memory_format=torch.channels_last if net.channels_last else torch.preserve_format)
