"""The SAGAN networks: shapes, the attention block, spectral norm, hinge loss."""

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sagan_core.model.arch import default_attention
from sagan_core.model.layers import SelfAttention
from sagan_core.model.networks import ModelSpec, attention_blocks, build_models
from sagan_core.train.losses import d_hinge, g_hinge

pytestmark = pytest.mark.unit


def spec_for(res: int, num_classes: int = 10, channels: int = 3, **kw) -> ModelSpec:
    attn = tuple(default_attention(res))
    kw = {"z_dim": 16, "g_ch": 4, "d_ch": 8, "g_attn": attn, "d_attn": attn} | kw
    return ModelSpec(res, channels, num_classes, **kw)


@pytest.mark.parametrize("res", [32, 64, 128, 256])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_for_each_resolution(res, num_classes):
    spec = spec_for(res, num_classes)
    g, d = build_models(spec)
    z = torch.randn(2, spec.z_dim)
    y = torch.tensor([1, 7]) if num_classes else None
    x = g(z, y)
    assert x.shape == (2, 3, res, res)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert d(x, y).shape == (2,)
    # one attention block in each network, at the paper's default resolution
    assert len(attention_blocks(g)) == 1 and len(attention_blocks(d)) == 1


def test_attention_placement_follows_feature_map_resolution():
    spec = spec_for(64, g_attn=(16, 64), d_attn=(8,), g_ch=8)
    g, d = build_models(spec)
    seen = {}

    def hook(name):
        return lambda m, inp, out: seen.setdefault(name, []).append(inp[0].shape[-1])

    for i, blk in enumerate(attention_blocks(g)):
        blk.register_forward_hook(hook(f"g{i}"))
    for i, blk in enumerate(attention_blocks(d)):
        blk.register_forward_hook(hook(f"d{i}"))
    x = g(torch.randn(2, 16), torch.tensor([0, 1]))
    d(x, torch.tensor([0, 1]))
    assert seen == {"g0": [16], "g1": [64], "d0": [8]}


def reference_attention(blk: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The official code's sn_non_local_block_sim, written independently with einsum on the
    (already spectrally normalised) 1x1 conv weights."""
    b, c, h, w = x.shape
    wt, wp, wg, wo = (m.weight[:, :, 0, 0] for m in (blk.theta, blk.phi, blk.g, blk.o))
    theta = torch.einsum("oc,bchw->bhwo", wt, x).reshape(b, h * w, c // 8)
    phi = F.max_pool2d(torch.einsum("oc,bchw->bohw", wp, x), 2)
    phi = phi.permute(0, 2, 3, 1).reshape(b, h * w // 4, c // 8)
    g = F.max_pool2d(torch.einsum("oc,bchw->bohw", wg, x), 2)
    g = g.permute(0, 2, 3, 1).reshape(b, h * w // 4, c // 2)
    attn = torch.softmax(torch.einsum("bqc,bkc->bqk", theta, phi), dim=-1)
    attn_g = torch.einsum("bqk,bkc->bqc", attn, g).reshape(b, h, w, c // 2)
    o = torch.einsum("oc,bhwc->bohw", wo, attn_g)
    return x + blk.gamma * o


def test_attention_matches_independent_einsum():
    torch.manual_seed(0)
    blk = SelfAttention(32).eval()  # eval: no power iteration, so both see the same weights
    with torch.no_grad():
        blk.gamma.fill_(0.7)
    x = torch.randn(3, 32, 8, 8)
    torch.testing.assert_close(blk(x), reference_attention(blk, x), rtol=1e-5, atol=1e-5)


def test_attention_with_gamma_zero_is_identity():
    torch.manual_seed(0)
    blk = SelfAttention(16)
    assert blk.gamma.item() == 0.0  # initialised to 0 as in the paper
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(blk(x), x)


def test_too_narrow_attention_is_a_config_error():
    from sagan_core.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of 8 channels"):
        build_models(spec_for(64, d_ch=4))


@pytest.mark.parametrize("res", [32, 64, 128])
def test_params_validation_refuses_exactly_the_widths_the_networks_refuse(res):
    """params validation catches a too-narrow attention block before training: for every width it
    accepts, the networks build; for every one it refuses (naming model.g_ch/d_ch), they do not."""
    from pydantic import ValidationError

    from sagan_core.config import Params
    from sagan_core.errors import ConfigError

    for width in (1, 2, 3, 4, 6, 8):
        for key in ("g_ch", "d_ch"):
            other = {"g_ch": 8, "d_ch": 8}
            model = other | {key: width}
            try:
                build_models(spec_for(res, **model))
                builds = True
            except ConfigError:
                builds = False
            try:
                Params.model_validate({"data": {"resolution": res}, "model": model})
                valid = True
            except ValidationError as e:
                assert f"model.{key}: got {width}" in str(e) and "multiple of 8" in str(e)
                valid = False
            assert valid == builds, (res, key, width)


def test_attention_rows_are_distributions_over_keys():
    blk = SelfAttention(16)
    blk.keep_attention = True
    blk(torch.randn(2, 16, 8, 8))
    a = blk.last_attention  # B, h, w, h/2, w/2
    assert a.shape == (2, 8, 8, 4, 4)
    torch.testing.assert_close(a.sum(dim=(-1, -2)), torch.ones(2, 8, 8))


def test_every_weight_is_spectrally_normalised():
    """After power iterations, the top singular value of every SN weight (as a matrix) is ~1."""
    torch.manual_seed(0)
    g, d = build_models(spec_for(32, 10))
    sn_modules = [m for net in (g, d) for m in net.modules() if hasattr(m, "parametrizations")]
    # every conv / linear of G and D and D's embedding
    convs = [m for net in (g, d) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(hasattr(m, "parametrizations") for m in convs)
    assert hasattr(d.embed, "parametrizations")
    # G's conditional-BN gains/biases are plain embeddings
    assert not any(hasattr(m, "parametrizations") for m in g.modules() if isinstance(m, torch.nn.Embedding))
    g.train(), d.train()
    with torch.no_grad():
        for _ in range(30):  # each forward = one power iteration per layer
            x = g(torch.randn(4, 16), torch.randint(10, (4,)))
            d(x, torch.randint(10, (4,)))
    for m in sn_modules:
        w = m.weight
        top = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert abs(top.item() - 1.0) < 0.02, (m, top.item())


def test_spectral_norm_is_computed_in_fp32_inside_autocast():
    from sagan_core.model.layers import sn_conv

    torch.manual_seed(0)
    conv = sn_conv(16, 16).eval()
    with torch.no_grad():
        plain = conv.weight
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = conv.weight
    assert cast.dtype == torch.float32 and torch.equal(plain, cast)
    assert conv.parametrizations.weight[0]._u.dtype == torch.float32


def test_conditional_bn_is_class_modulated_batch_norm_from_init():
    """out = BN(x) * gain[y] + bias[y], with gain = 1 + orthogonal rows, bias = orthogonal rows."""
    from sagan_core.model.layers import ConditionalBatchNorm

    torch.manual_seed(0)
    cbn = ConditionalBatchNorm(8, num_classes=5)
    g, b = cbn.gain.weight.detach(), cbn.bias.weight.detach()
    torch.testing.assert_close((g - 1) @ (g - 1).T, torch.eye(5))  # orthonormal class rows
    torch.testing.assert_close(b @ b.T, torch.eye(5))
    x, y = torch.randn(6, 8, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    ref = torch.nn.functional.batch_norm(x, None, None, training=True, eps=cbn.bn.eps)
    ref = ref * g[y][:, :, None, None] + b[y][:, :, None, None]
    out = cbn(x, y)
    torch.testing.assert_close(out, ref)
    same_x = x[:1].expand(2, -1, -1, -1)
    assert not torch.allclose(*cbn(same_x, torch.tensor([0, 1])))  # classes differ from step 0


def test_projection_term_depends_on_class():
    torch.manual_seed(0)
    _, d = build_models(spec_for(32, 10))
    d.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = x
        for blk in d.blocks:
            h = blk(h)
        h = torch.relu(h).sum(dim=(2, 3))
        for k in (0, 3):
            expected = d.linear(h).squeeze(1) + (d.embed.weight[k] * h).sum()
            torch.testing.assert_close(d(x, torch.tensor([k])), expected)


def test_hinge_loss_on_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2   -> mean 2.5/3
    fake = torch.tensor([-3.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2     -> mean 1
    torch.testing.assert_close(d_hinge(real, fake), torch.tensor(2.5 / 3 + 1.0))
    torch.testing.assert_close(g_hinge(fake), torch.tensor(2.0 / 3))  # -mean(-3, 0, 1)


def test_one_attention_block_per_resolution_after_the_first_block_reaching_it():
    """At 32 px D's blocks output 16, 8, 8, 8: d_attn [8] is one block, right after the second."""
    spec = spec_for(32, g_attn=(8, 32), d_attn=(8,))
    g, d = build_models(spec)
    assert [type(b).__name__ for b in d.blocks] == ["DBlock", "DBlock", "SelfAttention", "DBlock", "DBlock"]
    assert [type(b).__name__ for b in g.blocks] == [
        "GBlock",
        "SelfAttention",
        "GBlock",
        "GBlock",
        "SelfAttention",
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("g_attn", [4], "model.g_attn: no 4x4 feature map in the 32-px generator; valid: 8, 16, 32"),
        ("d_attn", [32], "model.d_attn: no 32x32 feature map in the 32-px discriminator; valid: 16, 8"),
        ("d_attn", [16, 4], "model.d_attn: no 4x4 feature map in the 32-px discriminator; valid: 16, 8"),
    ],
)
def test_attention_at_a_resolution_the_network_lacks_is_rejected(key, value, message):
    from sagan_core.errors import ConfigError
    from sagan_core.params_file import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate({"model": {key: value}})
    with pytest.raises(ConfigError, match=re.escape(message)):  # a spec built by hand, too
        build_models(spec_for(32, **{key: tuple(value)}))


@pytest.mark.e2e
def test_params_validation_does_not_import_torch():
    code = "import sys; import sagan_core.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def class_outputs(cbn_init: str) -> torch.Tensor:
    """The generator's image for one z under each of its 10 classes, at initialisation."""
    torch.manual_seed(0)
    g, _ = build_models(spec_for(32, 10, cbn_init=cbn_init))
    with torch.no_grad():
        return g.eval()(torch.randn(1, 16).expand(10, -1), torch.arange(10))


def test_cbn_init_official_starts_every_class_alike():
    out = class_outputs("official")
    for k in range(1, 10):
        torch.testing.assert_close(out[k], out[0], rtol=0, atol=1e-6)


def test_cbn_init_orthogonal_starts_classes_apart():
    out = class_outputs("orthogonal")
    assert all(not torch.allclose(out[k], out[0], atol=1e-3) for k in range(1, 10))


def test_cbn_init_is_in_params_and_spec():
    from sagan_core.params_file import validate

    assert validate({}).model.cbn_init == "orthogonal"
    assert validate({"model": {"cbn_init": "official"}}).model.cbn_init == "official"
    official = spec_for(32, cbn_init="official")
    assert ModelSpec.from_dict(official.to_dict()) == official
