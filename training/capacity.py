"""BootsTAP's capacity expansion: extra residual conv blocks on the lowres features.

The paper adds 5 blocks (LayerNorm, 3x3 conv C -> 4C, GELU, 3x3 conv 4C -> C,
residual) to a pre-trained TAPIR and initialises them to the identity with
"zero init": the last conv of each block starts at zero, so its residual
branch adds nothing and every weight of the block still gets a gradient
(through the zero conv first, then the rest).

One caveat, measured rather than assumed: the official block (which the
released BootsTAPIR weights need, `bootstap_ros/model/layers.py`) adds its
residual to the *layer-normalised* input, so a zero-initialised block is the
LayerNorm, not the identity. The lowres features are L2-normalised after the
blocks, so what changes is only the removal of each position's channel mean
(LayerNorm's scale is undone by the L2 normalisation). On the embedded default
model that moves tracks by 0.02 px on average (0.08 px at most) on a test clip;
`test/test_pseudo_labels.py` checks the expanded model against the original
with mean-centred features, exactly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bootstap_ros.model.tapir import TAPIR


def expand_capacity(model: TAPIR, num_blocks: int = 5, multiplier: Optional[int] = None) -> TAPIR:
    """A new TAPIR with `num_blocks` zero-initialised extra conv blocks appended.

    All of `model`'s weights are copied; the new blocks get default LayerNorm
    (scale 1, shift 0), a default-initialised first conv and an all-zero last
    conv (`extra_convs.blocks.N.conv_1.*`). `multiplier` (the hidden width over
    the channels) defaults to the model config's (4, the paper's). A model that
    already has extra blocks keeps them and gets the new ones after them (its
    multiplier must then stay the same). `model` itself is not modified; the
    result has its device, dtype and train/eval mode.
    """
    if num_blocks < 1:
        raise ValueError(f"expand_capacity adds at least one block, got num_blocks={num_blocks}")
    config = model.config
    multiplier = config.extra_conv_multiplier if multiplier is None else int(multiplier)
    if config.extra_conv_blocks and multiplier != config.extra_conv_multiplier:
        raise ValueError(f"the model already has {config.extra_conv_blocks} extra conv blocks with multiplier "
                         f"{config.extra_conv_multiplier}; new blocks must use the same multiplier, got {multiplier}")
    existing = config.extra_conv_blocks
    expanded = TAPIR(config.replace(extra_conv_blocks=existing + num_blocks, extra_conv_multiplier=multiplier))
    missing, unexpected = expanded.load_state_dict(model.state_dict(), strict=False)
    new_prefixes = tuple(f"extra_convs.blocks.{i}." for i in range(existing, existing + num_blocks))
    stray = [k for k in missing if not k.startswith(new_prefixes)]
    if stray or unexpected:
        raise RuntimeError(f"expand_capacity: weights did not carry over (missing {stray}, unexpected {unexpected})")
    with torch.no_grad():
        for block in list(expanded.extra_convs.blocks)[existing:]:
            nn.init.zeros_(block.conv_1.weight)
            nn.init.zeros_(block.conv_1.bias)
    reference = next(model.parameters())
    expanded.to(device=reference.device, dtype=reference.dtype)
    expanded.train(model.training)
    return expanded
