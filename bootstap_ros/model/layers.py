"""Building blocks of the TAPIR network: backbone, extra convs, refinement mixer.

Parameter names (attribute names) follow the official tapnet PyTorch module tree
so the official state_dicts load without renaming; the computation is written
for this project. Convolution paddings reproduce JAX "SAME" padding, which the
official weights were trained with.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / ||x||, with the norm floored at 1e-6 (sqrt of TAPIR's 1e-12 on the squared norm)."""
    squared = torch.sum(torch.square(x), dim=dim, keepdim=True)
    return x / torch.sqrt(torch.clamp(squared, min=1e-12))


class ResidualBlock(nn.Module):
    """Pre-activation (ResNet v2) block with instance norm."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, project: bool):
        super().__init__()
        self.stride = stride
        # JAX "SAME" for a 3x3 kernel: (1, 1) at stride 1, (0, 1) at stride 2 on even sizes.
        self.padding = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
        self.bn_0 = nn.InstanceNorm2d(channels_in, eps=1e-5, affine=True)
        self.conv_0 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, bias=False)
        self.bn_1 = nn.InstanceNorm2d(channels_out, eps=1e-5, affine=True)
        self.conv_1 = nn.Conv2d(channels_out, channels_out, 3, stride=1, padding=1, bias=False)
        self.proj_conv = (
            nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False) if project else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn_0(x))
        shortcut = self.proj_conv(activated) if self.proj_conv is not None else x
        y = self.conv_0(F.pad(activated, self.padding))
        y = self.conv_1(torch.relu(self.bn_1(y)))
        return y + shortcut


class BlockGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, num_blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBlock(
                channels_in if i == 0 else channels_out,
                channels_out,
                stride if i == 0 else 1,
                project=(i == 0),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ResNet(nn.Module):
    """Backbone returning the group-1 (hires, 1/4) and group-3 (lowres, 1/8) maps."""

    def __init__(self, stem_channels: int, channels: Sequence[int], blocks: Sequence[int],
                 strides: Sequence[int]):
        super().__init__()
        self.initial_conv = nn.Conv2d(3, stem_channels, 7, stride=2, bias=False)
        groups = []
        for i, (c_out, n, s) in enumerate(zip(channels, blocks, strides)):
            c_in = stem_channels if i == 0 else channels[i - 1]
            groups.append(BlockGroup(c_in, c_out, n, s))
        self.block_groups = nn.ModuleList(groups)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, H, W] in [-1, 1] -> (hires [N, C1, H/4, W/4], lowres [N, C3, H/8, W/8])."""
        # JAX "SAME" for a 7x7 stride-2 kernel on an even size pads (2, 3).
        x = self.initial_conv(F.pad(images, (2, 3, 2, 3)))
        outputs = []
        for group in self.block_groups:
            x = group(x)
            outputs.append(x)
        return outputs[1], outputs[3]


class ExtraConvBlock(nn.Module):
    """BootsTAP capacity expansion block (channels-last in and out).

    As in the released model, the residual is added to the *normalised* input.
    """

    def __init__(self, channels: int, multiplier: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels * multiplier, 3, padding=1)
        self.conv_1 = nn.Conv2d(channels * multiplier, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x).permute(0, 3, 1, 2)
        x = x + self.conv_1(F.gelu(self.conv(x), approximate="tanh"))
        return x.permute(0, 2, 3, 1)


class ExtraConvs(nn.Module):
    def __init__(self, num_blocks: int, channels: int, multiplier: int):
        super().__init__()
        self.blocks = nn.ModuleList(ExtraConvBlock(channels, multiplier) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def temporal_depthwise(x: torch.Tensor, conv: nn.Conv1d, history: Optional[torch.Tensor],
                       causal: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Depthwise temporal convolution written as a sum over kernel taps.

    x: [P, T, C] (C = conv input channels); the conv may expand each input channel
    into `conv.out_channels // C` outputs (grouped conv with groups = C).
    history: [P, K-1, C] previous inputs (causal streaming), or None for zeros.
    Returns y [P, T, C_out] and the new history (the last K-1 inputs) when causal.

    A handful of elementwise multiply-adds is cheaper than a Conv1d launch for the
    one-frame steps of online tracking, exports to ONNX as plain arithmetic, and
    equals Conv1d up to float rounding.
    """
    k = conv.kernel_size[0]
    if causal:
        if history is None:
            history = x.new_zeros(x.shape[0], k - 1, x.shape[2])
        full = torch.cat([history, x], dim=1)
        new_history = full[:, full.shape[1] - (k - 1):]
    else:
        pad = (k - 1) // 2
        full = F.pad(x, (0, 0, pad, k - 1 - pad))
        new_history = None
    expand = conv.out_channels // x.shape[2]
    if expand > 1:
        full = full.repeat_interleave(expand, dim=2)
    weight = conv.weight[:, 0, :]  # [C_out, K]
    steps = x.shape[1]
    y = full[:, 0:steps] * weight[:, 0]
    for tap in range(1, k):
        y = y + full[:, tap:tap + steps] * weight[:, tap]
    return y + conv.bias, new_history


class ChannelsMixer(nn.Module):
    def __init__(self, channels: int, multiplier: int = 4):
        super().__init__()
        self.mlp2_up = nn.Linear(channels, channels * multiplier)
        self.mlp2_down = nn.Linear(channels * multiplier, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp2_down(F.gelu(self.mlp2_up(x), approximate="tanh"))


class MixerBlock(nn.Module):
    """Depthwise temporal conv (x4 expansion, summed back) + channel MLP, both residual."""

    def __init__(self, channels: int, kernel: int, causal: bool, multiplier: int = 4):
        super().__init__()
        self.causal = causal
        self.multiplier = multiplier
        self.layer_norm = nn.LayerNorm(channels, bias=False)
        self.mlp1_up = nn.Conv1d(channels, channels * multiplier, kernel, groups=channels)
        self.mlp1_up_1 = nn.Conv1d(channels * multiplier, channels * multiplier, kernel,
                                   groups=channels * multiplier)
        self.layer_norm_1 = nn.LayerNorm(channels, bias=False)
        self.conv_channels_mixer = ChannelsMixer(channels, multiplier)

    def forward(self, x: torch.Tensor, history_1: Optional[torch.Tensor] = None,
                history_2: Optional[torch.Tensor] = None):
        """x [P, T, C]; histories [P, K-1, C] and [P, K-1, 4C] (causal only)."""
        y, new_1 = temporal_depthwise(self.layer_norm(x), self.mlp1_up, history_1, self.causal)
        y = F.gelu(y, approximate="tanh")
        y, new_2 = temporal_depthwise(y, self.mlp1_up_1, history_2, self.causal)
        # Output channel j sums the expansion channels j*4 .. j*4+3.
        y = y.unflatten(-1, (-1, self.multiplier)).sum(-1)
        x = x + y
        x = x + self.conv_channels_mixer(self.layer_norm_1(x))
        return x, new_1, new_2


class PipsMixer(nn.Module):
    """The refinement network: linear in, mixer blocks, layer norm, linear out."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int, num_blocks: int,
                 kernel: int, causal: bool):
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(MixerBlock(hidden_dim, kernel, causal) for _ in range(num_blocks))
        self.layer_norm = nn.LayerNorm(hidden_dim, bias=False)
        self.linear_1 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor, history_1: Optional[torch.Tensor] = None,
                history_2: Optional[torch.Tensor] = None):
        """x [P, T, input_dim]; histories [num_blocks, P, K-1, C] / [num_blocks, P, K-1, 4C].

        Returns (y [P, T, output_dim], new_history_1, new_history_2); the histories
        are None for non-causal mixers.
        """
        x = self.linear(x)
        new_1: List[torch.Tensor] = []
        new_2: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, h1, h2 = block(
                x,
                None if history_1 is None else history_1[i],
                None if history_2 is None else history_2[i],
            )
            if h1 is not None:
                new_1.append(h1)
                new_2.append(h2)
        x = self.linear_1(self.layer_norm(x))
        if not new_1:
            return x, None, None
        return x, torch.stack(new_1), torch.stack(new_2)
