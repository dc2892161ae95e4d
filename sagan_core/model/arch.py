"""Channel and attention tables (BigGAN-PyTorch's G_arch/D_arch), torch-free for params validation."""

from __future__ import annotations

from collections.abc import Iterable

BOTTOM = 4  # the generator's first feature map is BOTTOM x BOTTOM

# generator blocks' input and output channel multipliers; each block doubles the size
G_ARCH = {
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
}
D_ARCH = {  # (outs, downsample)
    32: ([4, 4, 4, 4], [True, True, False, False]),
    64: ([1, 2, 4, 8, 16], [True, True, True, True, False]),
    128: ([1, 2, 4, 8, 16, 16], [True, True, True, True, True, False]),
    256: ([1, 2, 4, 8, 8, 16, 16], [True, True, True, True, True, True, False]),
}


def default_attention(resolution: int) -> list[int]:
    """The paper's best placement: 32x32 at 64/128 px; 16x16 for 32-px models (32x32 is the output)."""
    return [16] if resolution <= 32 else [32]


def feature_maps(key: str, resolution: int) -> list[int]:
    if key == "g_attn":
        return [BOTTOM * 2 ** (i + 1) for i in range(len(G_ARCH[resolution][0]))]
    maps, res = [], resolution
    for downsample in D_ARCH[resolution][1]:
        res = res // 2 if downsample else res
        maps.append(res)
    return maps


def attention_slots(key: str, resolution: int, wanted: Iterable[int], error=ValueError) -> set[int]:
    """The blocks an attention block follows: the first to output each wanted resolution. `error`:
    ValueError for params validation (pydantic reports it), ConfigError when building a network."""
    maps, wanted = feature_maps(key, resolution), list(wanted)
    for r in wanted:
        if r not in maps:
            net = "generator" if key == "g_attn" else "discriminator"
            valid = ", ".join(str(m) for m in dict.fromkeys(maps))
            if r > resolution:
                what = f"attention at {r}x{r} does not fit {resolution}-px images"
            else:
                what = f"no {r}x{r} feature map in the {resolution}-px {net}"
            raise error(f"model.{key}: {what}; valid: {valid} (got {wanted})")
    return {maps.index(r) for r in wanted}
