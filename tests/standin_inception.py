"""A deterministic stand-in for pytorch-fid's Inception weights, for offline tests only.

Random init (fixed seed) with batch-norm statistics calibrated on smooth random images so that
features vary with content (an uncalibrated random network gives constant features and every
FID ~ 0). FID values computed with it mean nothing about image quality; they let the real code
paths run and let two implementations be compared on the same weights. Never shipped.
(After ../shared/tools/standin_inception.py.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_fid import inception as pi
from pytorch_fid.inception import FID_WEIGHTS_URL

WEIGHTS_NAME = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth


def write_standin(torch_home: Path) -> Path:
    torch.manual_seed(0)
    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pi.FIDInceptionE_1(1280)
    net.Mixed_7c = pi.FIDInceptionE_2(2048)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(4):
            x = torch.nn.functional.interpolate(
                torch.rand(8, 3, 16, 16) * 2 - 1, size=(299, 299), mode="bilinear"
            )
            net(x)
    net.eval()
    out = Path(torch_home) / "hub" / "checkpoints" / WEIGHTS_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    return out
