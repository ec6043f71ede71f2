"""Configuration dataclasses: the one place where defaults live.

`ModelConfig` describes a TAPIR / BootsTAPIR architecture completely; it is the
only constructor argument of the model and is stored inside the project's own
checkpoints. The defaults are the official BootsTAPIR network.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

#: Softmax temperature of the cost-volume estimate the official weights were trained with:
#: BootsTAPIR (tapnet configs/tapir_bootstrap_config.py, and every JAX demo that loads it) 10,
#: TAPIR the tapnet default 20. The official PyTorch code always uses 20.
BOOTSTAPIR_SOFTMAX_TEMPERATURE = 10.0
TAPIR_SOFTMAX_TEMPERATURE = 20.0


def default_softmax_temperature(extra_conv_blocks: int) -> float:
    """The temperature an architecture was trained with: BootsTAPIR (extra conv blocks) 10, TAPIR 20."""
    return BOOTSTAPIR_SOFTMAX_TEMPERATURE if extra_conv_blocks > 0 else TAPIR_SOFTMAX_TEMPERATURE


def refinement_ladder(top: Tuple[int, int], initial: Tuple[int, int]) -> Tuple[Tuple[int, int], ...]:
    """The refinement resolutions from `initial` up to `top`, as the official model picks them
    (tapnet `generate_default_resolutions(top, initial)`): log-spaced, each under twice the
    one before, rounded down to multiples of 8; one level when `top` is not larger."""
    if tuple(top) == tuple(initial):
        return (tuple(initial),)
    ratio = max(top[0] / initial[0], top[1] / initial[1])
    levels = int(math.ceil(math.log2(ratio))) + 1
    if levels <= 1:
        return (tuple(initial),)
    (h, w), (low_h, low_w) = top, initial
    # The same float expression as the official code, so the sizes agree exactly.
    return tuple((int(round((low_h * (h / low_h) ** (i / (levels - 1))) // 8)) * 8,
                  int(round((low_w * (w / low_w) ** (i / (levels - 1))) // 8)) * 8)
                 for i in range(levels))


def parse_size(text: str) -> Tuple[int, int]:
    """'HxW' (or 'N' for NxN) -> (height, width), as the command lines take a resolution."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"expected a size HxW (e.g. 512x512) or N, got {text!r}")
    return size


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a TAPIR-family tracker.

    The backbone is a ResNet-v2 with an initial stride-2 7x7 convolution and
    four block groups; group 1 gives the "hires" features (1/4 resolution) and
    group 3 the "lowres" features (1/8 resolution), as in TAPIR.
    """

    # Backbone: channels and blocks per group, stride of each group.
    backbone_channels: Tuple[int, int, int, int] = (64, 128, 256, 256)
    backbone_blocks: Tuple[int, int, int, int] = (2, 2, 2, 2)
    backbone_strides: Tuple[int, int, int, int] = (1, 2, 2, 1)
    stem_channels: int = 64
    # BootsTAP's capacity expansion: residual conv blocks on the lowres features.
    extra_conv_blocks: int = 5
    extra_conv_multiplier: int = 4
    # Refinement: PIPs-style depthwise-conv MLP-mixer.
    mixer_hidden_dim: int = 512
    mixer_blocks: int = 12
    mixer_kernel: int = 3
    refinement_iters: int = 4
    pyramid_level: int = 1
    patch_radius: int = 3
    # Causal (online) models use left-padded temporal convolutions.
    causal: bool = True
    # Cost-volume initialisation. None: the temperature the architecture was trained with
    # (`default_softmax_temperature`: 10 with extra conv blocks, else 20); it is resolved
    # on construction, so a saved config always holds a number.
    softmax_temperature: Optional[float] = None
    soft_argmax_radius: float = 5.0
    # Model input resolution (height, width); multiples of 8. The initial (cost-volume)
    # estimate runs here, and the first refinement level.
    resolution: Tuple[int, int] = (256, 256)
    # Top of the refinement ladder (height, width), multiples of 8; None: `resolution`
    # (one level). Above `resolution`, refinement repeats at each level of
    # `refinement_resolutions`, each level's frames resized from the input (official TAPIR).
    refine_resolution: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        # Accept lists (as read back from a checkpoint or yaml) but store tuples.
        for name in ("backbone_channels", "backbone_blocks", "backbone_strides", "resolution"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.refine_resolution is not None:
            top = tuple(int(v) for v in self.refine_resolution)
            if len(top) != 2 or top[0] % 8 or top[1] % 8 or min(top) <= 0:
                raise ValueError(f"refine_resolution must be two positive multiples of 8 (height, width), "
                                 f"got {self.refine_resolution}")
            # Equal to the resolution means one level: store None, so configs compare equal.
            object.__setattr__(self, "refine_resolution", None if top == self.resolution else top)
        if len(self.backbone_channels) != 4 or len(self.backbone_blocks) != 4:
            raise ValueError("backbone_channels and backbone_blocks need 4 entries (one per group)")
        if tuple(self.backbone_strides) != (1, 2, 2, 1):
            # The coordinate maths assumes hires = 1/4 and lowres = 1/8 of the input.
            raise ValueError(f"backbone_strides must be (1, 2, 2, 1), got {self.backbone_strides}")
        if self.softmax_temperature is None:
            object.__setattr__(self, "softmax_temperature", default_softmax_temperature(self.extra_conv_blocks))
        object.__setattr__(self, "softmax_temperature", float(self.softmax_temperature))
        if not self.softmax_temperature > 0:
            raise ValueError(f"softmax_temperature must be positive, got {self.softmax_temperature}")
        h, w = self.resolution
        if h % 8 or w % 8 or h <= 0 or w <= 0:
            raise ValueError(f"resolution must be positive multiples of 8, got {self.resolution}")
        if self.mixer_kernel < 1 or self.refinement_iters < 0 or self.pyramid_level < 0:
            raise ValueError("mixer_kernel >= 1, refinement_iters >= 0 and pyramid_level >= 0 are required")

    @property
    def refinement_resolutions(self) -> Tuple[Tuple[int, int], ...]:
        """The refinement levels, lowest first; the first is always `resolution`."""
        return refinement_ladder(self.refine_resolution or self.resolution, self.resolution)

    @property
    def num_levels(self) -> int:
        return len(self.refinement_resolutions)

    @property
    def grid_resolutions(self) -> Tuple[Tuple[int, int], ...]:
        """The frame sizes the backbone runs at: `resolution` (the initial estimate and the
        first level share it), then every further level."""
        return (self.resolution,) + self.refinement_resolutions[1:]

    @property
    def state_iterations(self) -> int:
        """Refinement iterations per frame, all levels together (the causal state's first axis)."""
        return self.refinement_iters * self.num_levels

    @property
    def query_lowres_dim(self) -> int:
        """Width of a point's lowres query features: one `lowres_dim` vector per level."""
        return self.lowres_dim * self.num_levels

    @property
    def query_hires_dim(self) -> int:
        return self.hires_dim * self.num_levels

    @property
    def hires_dim(self) -> int:
        return self.backbone_channels[1]

    @property
    def lowres_dim(self) -> int:
        return self.backbone_channels[3]

    @property
    def mixer_feature_dim(self) -> int:
        """Per-frame feature carried between refinement iterations (and predicted)."""
        return 4 + self.hires_dim + self.lowres_dim

    @property
    def num_patch_pixels(self) -> int:
        return (2 * self.patch_radius + 1) ** 2

    @property
    def mixer_input_dim(self) -> int:
        return self.mixer_feature_dim + (self.pyramid_level + 2) * self.num_patch_pixels

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain python types only, so `torch.load(weights_only=True)` reads it back."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; known fields are {sorted(known)}")
        return cls(**dict(values))


def bootstapir_config(causal: bool = True) -> ModelConfig:
    """The official BootsTAPIR architecture (online when causal)."""
    return ModelConfig(causal=causal)


def tapir_config(causal: bool = False) -> ModelConfig:
    """The official TAPIR architecture: BootsTAPIR without the extra conv blocks."""
    return ModelConfig(extra_conv_blocks=0, causal=causal)
