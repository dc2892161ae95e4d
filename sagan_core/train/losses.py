"""Adversarial losses: hinge (Lim & Ye 2017; used by SAGAN, after Miyato et al. 2018) and the LeCam
regulariser (Tseng et al. 2021, "Regularizing Generative Adversarial Networks under Limited Data")."""

import torch
import torch.nn.functional as F


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake_logits.float().mean()


def lecam_anchors(
    anchors: torch.Tensor | None, real_logits: torch.Tensor, fake_logits: torch.Tensor, decay: float
):
    """LeCam's anchors [α_R, α_F] after one D step: moving averages of D's mean output on real and
    on fake images (Tseng et al. 2021 update them before the regulariser uses them, as here). None
    (no step yet): the first means themselves. Detached; float32 tensors, no host sync."""
    means = torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()])
    return means if anchors is None else anchors * decay + means * (1.0 - decay)


def lecam(real_logits: torch.Tensor, fake_logits: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """R_LC = E[ReLU(D(x) - α_F)²] + E[ReLU(α_R - D(G(z)))²] (Tseng et al. 2021, eq. 3 as in their
    code): real outputs are pulled towards the fake anchor and fake outputs towards the real one."""
    alpha_r, alpha_f = anchors[0], anchors[1]
    return (
        F.relu(real_logits.float() - alpha_f).pow(2).mean()
        + F.relu(alpha_r - fake_logits.float()).pow(2).mean()
    )
