"""Building blocks of the TAPIR network: backbone, extra convs, refinement mixer.

Parameter names (attribute names) follow the official tapnet PyTorch module tree
so the official state_dicts load without renaming; the computation is written
for this project. Convolution paddings reproduce JAX "SAME" padding, which the
official weights were trained with.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _packed_linear_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `inference_linear` may take the oneDNN path for these tensors."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the packed kernels have no autograd
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False  # exports and compilers get the plain graph
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# The packed weights live beside the modules, not in them: an opaque oneDNN tensor in a
# module's __dict__ would make `copy.deepcopy` (an EMA teacher) and `torch.save` of the
# module fail. Weak keys: the entry goes when the module does; a copy packs its own.
_PACKED_WEIGHTS: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def inference_linear(linear: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """`linear(x)` (then GELU-tanh when `gelu`) for inference, fast on CPU.

    On CPU the weight is packed once into oneDNN's blocked layout (re-packed when
    the weight changes) and multiplied with oneDNN, GELU fused: for the small row
    counts of online tracking this is 2-3x faster than the default GEMM. Same
    maths, float32 throughout; anywhere else (CUDA, autograd, export) it is the
    plain `F.linear`.
    """
    if not _packed_linear_usable(x, linear.weight):
        y = F.linear(x, linear.weight, linear.bias)
        return F.gelu(y, approximate="tanh") if gelu else y
    key = (linear.weight.data_ptr(), linear.weight._version)
    cached = _PACKED_WEIGHTS.get(linear)
    if cached is None or cached[0] != key:
        rows = max(1, min(x.numel() // x.shape[-1], 256))  # a layout hint only
        cached = (key, torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows))
        _PACKED_WEIGHTS[linear] = cached
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, cached[1], linear.bias, "gelu", [], "tanh")
    return torch.ops.mkldnn._linear_pointwise(x, cached[1], linear.bias, "none", [], "")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, as x * sigmoid(2u) (= x/2 * (1 + tanh(u))).

    The same function as `F.gelu(x, approximate="tanh")` (equal up to float rounding)
    but 2x faster on CPU, where torch's vectorised tanh is slow.
    """
    u = x * x
    u.mul_(2 * 0.7978845608028654 * 0.044715).add_(2 * 0.7978845608028654).mul_(x)
    return torch.sigmoid_(u).mul_(x)


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
        # The block works channels-last: weights in that layout spare oneDNN a
        # reorder of ~10 MB of weights per call (same values, same results).
        self.conv.to(memory_format=torch.channels_last)
        self.conv_1.to(memory_format=torch.channels_last)

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

    def step(self, x: torch.Tensor, history_1: torch.Tensor, history_2: torch.Tensor):
        """One causal time step for a batch of rows (online tracking).

        x [..., C]; history_1 [..., K-1, C] and history_2 [..., K-1, 4C] hold the
        previous inputs of the two temporal convolutions, oldest first (not modified).
        Returns (y [..., C], input_1 [..., C], input_2 [..., 4C]): the output and the
        two conv inputs of this step, which the caller appends to the histories.

        Equal to `forward` on one frame up to float rounding, but the taps are
        broadcast multiply-adds on [..., C, 4] views: no concatenation of the
        history, no repeat_interleave, no copy of the state.
        """
        k = self.mlp1_up.kernel_size[0]
        m = self.multiplier
        normed = self.layer_norm(x)
        taps_1 = self.mlp1_up.weight[:, 0, :].t().unflatten(1, (-1, m))  # [K, C, m]
        y = torch.addcmul(self.mlp1_up.bias.view(-1, m), normed[..., None], taps_1[k - 1])
        for tap in range(k - 1):
            y.addcmul_(history_1[..., tap, :, None], taps_1[tap])
        expanded = gelu_tanh(y.flatten(-2))
        taps_2 = self.mlp1_up_1.weight[:, 0, :].t()  # [K, 4C]
        z = torch.addcmul(self.mlp1_up_1.bias, expanded, taps_2[k - 1])
        for tap in range(k - 1):
            z.addcmul_(history_2[..., tap, :], taps_2[tap])
        # The group sum as a product with ones: one pass, exact (no rounding in x * 1).
        x = x + torch.matmul(z.unflatten(-1, (-1, m)), z.new_ones(m))
        channels = self.conv_channels_mixer
        hidden = inference_linear(channels.mlp2_up, self.layer_norm_1(x), gelu=True)
        x = x + inference_linear(channels.mlp2_down, hidden)
        return x, normed, expanded


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

    def step(self, x: torch.Tensor, history_1: torch.Tensor, history_2: torch.Tensor,
             in_place: bool = False, block_step=None):
        """One causal time step: x [..., input_dim]; histories [num_blocks, ..., K-1, C] and
        [num_blocks, ..., K-1, 4C] (oldest first).

        Returns (y [..., output_dim], new_history_1, new_history_2). With in_place the
        histories are shifted and written in place (and returned); otherwise new
        tensors are returned and the inputs are left as they were (as ONNX export needs).
        block_step: what runs each block, `mixer_block_step` or a compiled version of it.
        """
        block_step = block_step or mixer_block_step
        x = inference_linear(self.linear, x)
        new_1: List[torch.Tensor] = []
        new_2: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, h1, h2 = block_step(block, x, history_1[i], history_2[i], in_place)
            new_1.append(h1)
            new_2.append(h2)
        x = inference_linear(self.linear_1, self.layer_norm(x))
        if in_place:
            return x, history_1, history_2
        return x, torch.stack(new_1), torch.stack(new_2)


def mixer_block_step(block: MixerBlock, x: torch.Tensor, history_1: torch.Tensor, history_2: torch.Tensor,
                     in_place: bool):
    """`block.step` with its histories advanced: (y, new_history_1, new_history_2).

    The unit that `torch.compile` compiles for online tracking (the torch backend's
    `torch_compile`): every block of every refinement iteration has the same shapes
    and the block's weights are inputs of the compiled graph, so one compilation
    serves them all, and it fuses the block's element-wise chain (layer norms,
    temporal taps, GELU, residuals, history shift) into a few kernels.
    """
    x, input_1, input_2 = block.step(x, history_1, history_2)
    return x, push_history(history_1, input_1, in_place), push_history(history_2, input_2, in_place)


def push_history(history: torch.Tensor, value: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Drop the oldest of history [..., K-1, C] and append value [..., C] as the newest."""
    if not in_place:
        return torch.cat([history[..., 1:, :], value.unsqueeze(-2)], dim=-2)
    length = history.shape[-2]
    for slot in range(length - 1):  # front to back: each source is read before it is overwritten
        history[..., slot, :].copy_(history[..., slot + 1, :])
    if length:
        history[..., length - 1, :].copy_(value)
    return history
