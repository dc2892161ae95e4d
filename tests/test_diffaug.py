"""DiffAugment (sagan_core/train/diffaug.py): the paper's operations, checked against plainly written
per-image versions of their definitions; differentiable; every image its own draws; applied to real
and fake images in D's steps and in G's step; an unknown operation is exit 2 naming the valid ones."""

from __future__ import annotations

import pytest
import torch
from helpers import SAGAN, project_params

from sagan_core.train import diffaug
from sagan_core.train.trainer import Trainer

pytestmark = pytest.mark.unit


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_color_is_the_papers_brightness_saturation_contrast():
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    out = diffaug.color(x, gen(1))
    g = gen(1)  # the same draws, in the documented order: brightness, saturation, contrast
    b, s, c = (torch.rand(5, 1, 1, 1, generator=g) for _ in range(3))
    for n in range(5):
        y = x[n] + (b[n] - 0.5)
        y = (y - y.mean(0, keepdim=True)) * (s[n] * 2) + y.mean(0, keepdim=True)
        y = (y - y.mean()) * (c[n] + 0.5) + y.mean()
        torch.testing.assert_close(out[n], y, rtol=0, atol=1e-6)
    assert len({round(float(v), 6) for v in b.flatten()}) == 5  # per-image draws


def test_translation_shifts_each_image_with_zeros_shifted_in():
    x = torch.rand(6, 2, 16, 16) + 1  # no zeros of its own
    out = diffaug.translation(x, gen(2))
    g = gen(2)
    dy = torch.randint(-2, 3, (6,), generator=g)  # 1/8 of 16 px = 2
    dx = torch.randint(-2, 3, (6,), generator=g)
    for n in range(6):
        want = torch.zeros(2, 16, 16)
        for i in range(16):
            for j in range(16):
                si, sj = i + int(dy[n]), j + int(dx[n])
                if 0 <= si < 16 and 0 <= sj < 16:
                    want[:, i, j] = x[n, :, si, sj]
        assert torch.equal(out[n], want), n
    assert len({(int(a), int(b)) for a, b in zip(dy, dx)}) > 1


def test_cutout_zeros_one_square_of_half_the_size_per_image():
    x = torch.ones(8, 1, 32, 32)
    out = diffaug.cutout(x, gen(3))
    g = gen(3)
    cy = torch.randint(0, 33, (8,), generator=g)  # 16 px square: centres 0..32
    cx = torch.randint(0, 33, (8,), generator=g)
    for n in range(8):
        want = torch.ones(1, 32, 32)
        want[:, max(0, int(cy[n]) - 8) : int(cy[n]) + 8, max(0, int(cx[n]) - 8) : int(cx[n]) + 8] = 0
        assert torch.equal(out[n], want), n
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.min() >= 64 and zeros.max() <= 256
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1  # not one mask for the batch


def test_gradients_flow_through_every_operation():
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    out = diffaug.augment(x, "color,translation,cutout", gen(4))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all() and x.grad.abs().sum() > 0


def test_policy_off_returns_the_input_and_draws_nothing():
    x, g = torch.rand(2, 1, 8, 8), gen(5)
    before = g.get_state()
    assert diffaug.augment(x, "", g) is x
    assert torch.equal(g.get_state(), before)


def test_trainer_augments_real_and_fake_in_d_steps_and_g_step(project):
    """With `cutout` every image D sees, real (the demo digits hold no exact 0: uint8/127.5 - 1) and
    fake, in D's step and G's step, has its own zeroed square."""
    params = project_params(project, train__steps=1, train__diffaug="cutout", train__n_dis=2)
    trainer = Trainer(params, progress=False)
    seen: list[torch.Tensor] = []
    trainer.state.D.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    trainer.fit()
    b = params.train.batch_size
    assert [len(s) for s in seen] == [2 * b, 2 * b, b]  # two D steps (real + fake), G's step
    for batch in seen:
        zeros = (batch == 0).flatten(1).sum(1)
        assert (zeros >= 64).all()  # at least the 8 x 8 corner of a clipped 16 x 16 square
        masks = {tuple((im == 0).flatten().tolist()) for im in batch}
        assert len(masks) > 1  # independent draws per image


@pytest.mark.e2e
@pytest.mark.parametrize("policy", ["flip", "color,,zoom"])
def test_unknown_operation_is_exit_2_naming_the_valid_ones(tmp_path, policy):
    import subprocess

    r = subprocess.run(
        [*SAGAN, "config", "--set", f"train.diffaug={policy}"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    assert "train.diffaug" in r.stderr and "color, translation, cutout" in r.stderr
    assert "Traceback" not in r.stderr
