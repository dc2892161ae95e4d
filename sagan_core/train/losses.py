"""Hinge loss (SAGAN) and the LeCam regulariser (Tseng et al. 2021)."""

import torch
import torch.nn.functional as F


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def lecam_anchors(
    anchors: torch.Tensor | None, real_logits: torch.Tensor, fake_logits: torch.Tensor, decay: float
):
    """[α_R, α_F]: moving averages of D's mean real/fake output, updated before use (as the paper)."""
    means = torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()])
    return means if anchors is None else anchors * decay + means * (1.0 - decay)


def lecam(real_logits: torch.Tensor, fake_logits: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """R_LC = E[ReLU(D(x) - α_F)²] + E[ReLU(α_R - D(G(z)))²] (eq. 3 as in their code)."""
    alpha_r, alpha_f = anchors[0], anchors[1]
    return (
        F.relu(real_logits.float() - alpha_f).pow(2).mean()
        + F.relu(alpha_r - fake_logits.float()).pow(2).mean()
    )
