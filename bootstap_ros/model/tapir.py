"""The TAPIR / BootsTAPIR network with an explicit, staged API.

Stages (all coordinates inside the model are in the model-resolution raster,
x right / y down, pixel centres at +0.5; query points are [t, y, x]):

1. `get_feature_grids(video)`   -> FeatureGrids   (per-frame backbone features)
2. `get_query_features(grids, query_points)` -> QueryFeatures (per point)
3. `estimate_trajectories(grids, query_features, state)` -> (Trajectories, CausalState)

With a refinement ladder (`ModelConfig.refine_resolution` above `resolution`), the
initial estimate runs at `resolution` and refinement repeats at every level of
`ModelConfig.refinement_resolutions`, each on grids of the input resized to that
level, as the official model does for input larger than 256x256.

Only the refinement mixer couples frames in time. For causal models that
coupling is a left-padded depthwise convolution whose last K-1 inputs per
point, refinement iteration and mixer block form the `CausalState`: two plain
tensors of fixed shape, so online tracking can carry, reset or index one
point's state without touching any other point, and can be exported.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bootstap_ros.config import ModelConfig
from bootstap_ros.model import layers


class FeatureGrids(NamedTuple):
    """Backbone features, L2-normalised over channels.

    lowres: [B, T, H/8, W/8, C_lowres]   at the model resolution (H, W)
    hires:  [B, T, H/4, W/4, C_hires]
    finer:  the grids of the further refinement levels (FeatureGrids without `finer`),
            one per level above the first; empty with one level.
    """

    lowres: torch.Tensor
    hires: torch.Tensor
    finer: Tuple["FeatureGrids", ...] = ()

    def levels(self) -> Tuple["FeatureGrids", ...]:
        """The grids of each refinement level: the first level shares the model resolution's."""
        return (FeatureGrids(self.lowres, self.hires),) + tuple(self.finer)


class QueryFeatures(NamedTuple):
    """Features sampled at each query point on its query frame.

    lowres: [B, N, C_lowres * L]
    hires:  [B, N, C_hires * L]
    with one vector per refinement level (L = `ModelConfig.num_levels`), concatenated
    along channels, first level first: a point's query is one flat vector per kind, so
    backends and stored query sets hold it like a one-level query.
    """

    lowres: torch.Tensor
    hires: torch.Tensor

    def level(self, index: int, lowres_dim: int, hires_dim: int) -> "QueryFeatures":
        """The features of refinement level `index`."""
        return QueryFeatures(self.lowres[..., index * lowres_dim:(index + 1) * lowres_dim],
                             self.hires[..., index * hires_dim:(index + 1) * hires_dim])


class CausalState(NamedTuple):
    """Per-point history of the causal mixer's two temporal convolutions.

    conv1: [I, M, B, N, K-1, D]   inputs of the first depthwise conv (D = mixer width)
    conv2: [I, M, B, N, K-1, 4D]  inputs of the second depthwise conv
    with I refinement iterations (all levels', level by level), M mixer blocks, B batch,
    N points, K kernel size.
    A point starts from zeros (equal to the zero padding of a whole-clip run).
    """

    conv1: torch.Tensor
    conv2: torch.Tensor

    def select(self, index) -> "CausalState":
        """The state of the points `index` (int, slice, list, bool or long tensor)."""
        index = _point_index(index)
        return CausalState(self.conv1[:, :, :, index], self.conv2[:, :, :, index])

    def reset(self, index) -> "CausalState":
        """A copy with the points `index` set back to zero; other points untouched."""
        conv1, conv2 = self.conv1.clone(), self.conv2.clone()
        conv1[:, :, :, index] = 0
        conv2[:, :, :, index] = 0
        return CausalState(conv1, conv2)

    def assign(self, index, other: "CausalState") -> "CausalState":
        """A copy with the points `index` replaced by `other`'s points."""
        conv1, conv2 = self.conv1.clone(), self.conv2.clone()
        index = _point_index(index)
        conv1[:, :, :, index] = other.conv1
        conv2[:, :, :, index] = other.conv2
        return CausalState(conv1, conv2)

    @property
    def num_points(self) -> int:
        return self.conv1.shape[3]


def _point_index(index):
    """An int selects one point but keeps the points axis."""
    return slice(index, index + 1) if isinstance(index, int) else index


class Trajectories(NamedTuple):
    """Tracks for B videos, N points, T frames (model-resolution raster).

    tracks:        [B, N, T, 2]  x, y of the last refinement iteration (of the last level)
    occlusion:     [B, N, T]     logit, higher = more likely occluded
    expected_dist: [B, N, T]     logit, higher = more likely off by > 6 px (at 256)
    unrefined:     ((tracks, occlusion, expected_dist), ...) for the cost-volume
                   estimate and every refinement iteration but the last, oldest first
                   (with a ladder: every level's iterations, level by level)
    """

    tracks: torch.Tensor
    occlusion: torch.Tensor
    expected_dist: torch.Tensor
    unrefined: Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] = ()


def visibility(occlusion_logits: torch.Tensor, expected_dist_logits: torch.Tensor,
               threshold: float = 0.5) -> torch.Tensor:
    """The official visibility rule: (1 - sigmoid(occ)) * (1 - sigmoid(expd)) > threshold."""
    return (1 - torch.sigmoid(occlusion_logits)) * (1 - torch.sigmoid(expected_dist_logits)) > threshold


def preprocess_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [..., 3] in [0, 255] -> float32 in [-1, 1], as the official code does."""
    return frames.float() / 255 * 2 - 1


def resize_video(video: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, T, H, W, C] to `size` (align_corners=False, no antialias)."""
    b, t, h, w, c = video.shape
    if (h, w) == tuple(size):
        return video
    x = video.permute(0, 1, 4, 2, 3).reshape(b, t * c, h, w)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(b, t, c, *size).permute(0, 1, 3, 4, 2)


class TAPIR(nn.Module):
    """TAPIR with BootsTAP's extra convolutions; `ModelConfig` is its only argument."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        c = config
        self.resnet_torch = layers.ResNet(c.stem_channels, c.backbone_channels, c.backbone_blocks,
                                          c.backbone_strides)
        self.extra_convs = (
            layers.ExtraConvs(c.extra_conv_blocks, c.lowres_dim, c.extra_conv_multiplier)
            if c.extra_conv_blocks > 0 else None
        )
        self.torch_cost_volume_track_mods = nn.ModuleDict({
            "hid1": nn.Conv2d(1, 16, 3, padding=1),
            "hid2": nn.Conv2d(16, 1, 3, padding=1),
            "hid3": nn.Conv2d(16, 32, 3, stride=2),
            "hid4": nn.Linear(32, 16),
            "occ_out": nn.Linear(16, 2),
        })
        self.torch_pips_mixer = layers.PipsMixer(
            c.mixer_input_dim, c.mixer_feature_dim, c.mixer_hidden_dim, c.mixer_blocks,
            c.mixer_kernel, c.causal,
        )
        offsets = torch.arange(-c.patch_radius, c.patch_radius + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        # Patch offsets in (x, y) order, row-major over (dy, dx) as the weights expect.
        self.register_buffer("patch_offsets", torch.stack([dx, dy], -1).reshape(-1, 2), persistent=False)
        self._constants = {}

    def _constant(self, values: Tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        """A small constant tensor on `like`'s device and dtype, built once and reused.

        After its first frame the online step builds no tensor from host data, so it
        can be captured in a CUDA graph (see `backends.torch_backend`).
        """
        key = (values, like.device, like.dtype)
        if key not in self._constants:
            with torch.inference_mode(False):  # usable in training too
                self._constants[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
        return self._constants[key]

    # ------------------------------------------------------------------ stage 1
    def resize_for_grids(self, video: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """video [B, T, H, W, C] resized to each of `config.grid_resolutions`, each from the
        input (bilinear, as the official model resizes for every refinement level)."""
        return tuple(resize_video(video, size) for size in self.config.grid_resolutions)

    def get_feature_grids(self, video, chunk_size: int = 16) -> FeatureGrids:
        """video [B, T, H, W, 3] float in [-1, 1], any size (resized to every grid resolution),
        or a tuple of such videos already at `config.grid_resolutions` (`resize_for_grids`)."""
        if isinstance(video, torch.Tensor):
            videos = self.resize_for_grids(video)
        else:
            videos = tuple(video)
            sizes = tuple(tuple(v.shape[2:4]) for v in videos)
            if sizes != self.config.grid_resolutions:
                raise ValueError(f"expected videos at the grid resolutions {self.config.grid_resolutions}, "
                                 f"got {sizes}")
        grids = [self._backbone_grids(v, chunk_size) for v in videos]
        return FeatureGrids(grids[0].lowres, grids[0].hires, tuple(grids[1:]))

    def _backbone_grids(self, video: torch.Tensor, chunk_size: int) -> FeatureGrids:
        b, t = video.shape[:2]
        images = video.reshape(b * t, *video.shape[2:]).permute(0, 3, 1, 2)
        hires_parts, lowres_parts = [], []
        for start in range(0, images.shape[0], chunk_size):
            hires, lowres = self.resnet_torch(images[start:start + chunk_size])
            hires_parts.append(hires.permute(0, 2, 3, 1))
            lowres_parts.append(lowres.permute(0, 2, 3, 1))
        hires = torch.cat(hires_parts) if len(hires_parts) > 1 else hires_parts[0]
        lowres = torch.cat(lowres_parts) if len(lowres_parts) > 1 else lowres_parts[0]
        if self.extra_convs is not None:
            lowres = self.extra_convs(lowres)
        lowres = layers.l2_normalize(lowres, dim=-1)
        hires = layers.l2_normalize(hires, dim=-1)
        return FeatureGrids(lowres.reshape(b, t, *lowres.shape[1:]), hires.reshape(b, t, *hires.shape[1:]))

    # ------------------------------------------------------------------ stage 2
    def get_query_features(self, grids: FeatureGrids, query_points: torch.Tensor) -> QueryFeatures:
        """query_points [B, N, 3] as (t, y, x) in the model raster; t indexes grids' frames.
        Every level's grids are sampled at the same normalised position."""
        levels = grids.levels()
        lowres = [self._sample_query(g.lowres, query_points) for g in levels]
        hires = [self._sample_query(g.hires, query_points) for g in levels]
        if len(levels) == 1:
            return QueryFeatures(lowres[0], hires[0])
        return QueryFeatures(torch.cat(lowres, -1), torch.cat(hires, -1))

    def _level_queries(self, query_features: QueryFeatures, level: int) -> QueryFeatures:
        if self.config.num_levels == 1:
            return query_features
        return query_features.level(level, self.config.lowres_dim, self.config.hires_dim)

    def _update_scale(self, level_grids: FeatureGrids) -> Optional[Tuple[float, float]]:
        """(x, y) factor from a level's raster to the model raster for the mixer's position
        updates (the official `pos_update`); None at the model resolution itself."""
        height, width = self.config.resolution
        level_h, level_w = level_grids.hires.shape[2] * 4, level_grids.hires.shape[3] * 4
        return None if (level_h, level_w) == (height, width) else (width / level_w, height / level_h)

    def _sample_query(self, grid: torch.Tensor, query_points: torch.Tensor) -> torch.Tensor:
        # Trilinear sampling (frame centres at t + 0.5), clamped to the border, as TAPIR does.
        b, t, h, w, c = grid.shape
        height, width = self.config.resolution
        size = torch.tensor([t, height, width], dtype=torch.float32, device=grid.device)
        tyx = query_points.float() / size * 2 - 1 + torch.tensor([1.0 / t, 0, 0], device=grid.device)
        xyt = tyx.flip(-1)[:, :, None, None, :]
        out = F.grid_sample(grid.permute(0, 4, 1, 2, 3), xyt, mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out[:, :, :, 0, 0].permute(0, 2, 1)

    # ------------------------------------------------------------------ stage 3
    def initial_state(self, num_points: int, batch: int = 1, device=None,
                      dtype: torch.dtype = torch.float32) -> CausalState:
        """Zero causal state for `num_points` points (the state of a newly added point)."""
        c = self.config
        shape = (c.state_iterations, c.mixer_blocks, batch, num_points, c.mixer_kernel - 1)
        return CausalState(
            torch.zeros(*shape, c.mixer_hidden_dim, device=device, dtype=dtype),
            torch.zeros(*shape, 4 * c.mixer_hidden_dim, device=device, dtype=dtype),
        )

    def estimate_trajectories(
        self,
        grids: FeatureGrids,
        query_features: QueryFeatures,
        state: Optional[CausalState] = None,
        query_points: Optional[torch.Tensor] = None,
    ) -> Tuple[Trajectories, Optional[CausalState]]:
        """Tracks for every query over the frames of `grids`.

        state: the causal state before these frames (causal models; None = zeros).
          Returned updated (None for non-causal models).
        query_points: [B, N, 3] (t, y, x); when given, the cost-volume estimate on
          each point's query frame is replaced by the query position (offline use).
        """
        c = self.config
        if state is not None and not c.causal:
            raise ValueError("a causal state was given to a non-causal model")
        tracks, occlusion, expected_dist = self._cost_volume_estimate(
            self._level_queries(query_features, 0).lowres, grids.lowres, query_points)
        iterations = [(tracks, occlusion, expected_dist)]
        initial_logits = (occlusion, expected_dist)
        new_conv1, new_conv2 = [], []
        for level, level_grids in enumerate(grids.levels()):
            queries = self._level_queries(query_features, level)
            scale = self._update_scale(level_grids)
            pyramid = (level_grids.hires, level_grids.lowres)
            # Each level starts again from the query features and the initial logits;
            # the positions carry over (official TAPIR).
            mixer_features = None
            occlusion, expected_dist = initial_logits
            for i in range(level * c.refinement_iters, (level + 1) * c.refinement_iters):
                history = (None, None) if state is None else (state.conv1[i], state.conv2[i])
                tracks, occlusion, expected_dist, mixer_features, h1, h2 = self._refine(
                    queries, pyramid, tracks, occlusion, expected_dist, mixer_features, history, scale)
                iterations.append((tracks, occlusion, expected_dist))
                if h1 is not None:
                    new_conv1.append(h1)
                    new_conv2.append(h2)
        new_state = CausalState(torch.stack(new_conv1), torch.stack(new_conv2)) if new_conv1 else None
        final = iterations[-1]
        return Trajectories(final[0], final[1], final[2], tuple(iterations[:-1])), new_state

    def _cost_volume_estimate(self, query_lowres: torch.Tensor, lowres: torch.Tensor,
                              query_points: Optional[torch.Tensor]):
        """Global initialisation: heatmap soft-argmax and occlusion from the cost volume."""
        cost = torch.einsum("bnc,bthwc->bnthw", query_lowres, lowres)
        return self._cost_volume_head(cost, query_points)

    def _cost_volume_head(self, cost: torch.Tensor, query_points: Optional[torch.Tensor]):
        """cost [B, N, T, h, w] (query . lowres features) -> (points, occlusion, expected_dist)."""
        mods = self.torch_cost_volume_track_mods
        b, n, t, h, w = cost.shape
        cost = cost.reshape(b * n * t, 1, h, w)
        hidden = torch.relu(mods["hid1"](cost))
        # float32 softmax and soft-argmax even under autocast: positions need the precision.
        logits = mods["hid2"](hidden).float().reshape(b, n, t, h * w)
        heatmap = torch.softmax(logits * self.config.softmax_temperature, dim=-1).reshape(b, n, t, h, w)
        height, width = self.config.resolution
        points = _soft_argmax(heatmap, self.config.soft_argmax_radius)
        points = points * self._constant((width / w, height / h), points)
        if query_points is not None:
            frames = torch.arange(t, device=points.device)
            is_query = torch.round(query_points[:, :, None, 0]) == frames  # [B, N, T]
            query_xy = query_points[:, :, None, [2, 1]].to(points.dtype)
            points = torch.where(is_query[..., None], query_xy, points)
        # JAX "SAME" for the 3x3 stride-2 conv on an even size pads (0, 1).
        hidden = torch.relu(mods["hid3"](F.pad(hidden, (0, 1, 0, 1))))
        hidden = torch.relu(mods["hid4"](hidden.mean(dim=(-1, -2))))
        out = mods["occ_out"](hidden).reshape(b, n, t, 2)
        return points, out[..., 0], out[..., 1]

    # ------------------------------------------------------------------ online step
    def track_step(self, grids: FeatureGrids, query_features: QueryFeatures, state: CausalState,
                   in_place: bool = False, block_step=None) -> Tuple[Trajectories, CausalState]:
        """One causal frame: `estimate_trajectories` for grids of a single frame, made fast.

        Equal to `estimate_trajectories(grids, query_features, state)` up to float
        rounding (and so to the official live-demo step). Online tracking spends its
        time here, so it takes two shortcuts that leave the maths unchanged:

        * correlations: a patch of bilinear samples dotted with a query equals the
          bilinear samples of the query's correlation map (sampling is linear), so
          each level costs one [N, C] x [C, h*w] matmul and a one-channel sample
          instead of sampling C-channel features at 49 offsets; the coarser
          pyramid level is the 2x2 average of the finer map, and the lowres map
          of the query features is the cost volume of the initial estimate;
        * the mixer runs its one-step form (`PipsMixer.step`): no history
          concatenation, and with `in_place` the state tensors (which may be
          views into a larger state) are updated where they are, with no copy.

        block_step: what runs each mixer block (`layers.mixer_block_step`, the default,
        or a compiled version of it, see `backends.torch_backend`).

        Returns the trajectories ([B, N, 1, ...], unrefined iterations included)
        and the new state (`state` itself when in_place).
        """
        c = self.config
        if not c.causal:
            raise ValueError("track_step needs a causal model; use estimate_trajectories")
        if grids.lowres.shape[1] != 1:
            raise ValueError(f"track_step takes the grids of one frame, got {grids.lowres.shape[1]}")
        height, width = c.resolution

        def correlation_maps(level_grids, hires_query, lowres_query):
            maps = [torch.matmul(query, grid[:, 0].flatten(1, 2).transpose(1, 2)).unflatten(-1, grid.shape[2:4])
                    for query, grid in zip((hires_query, lowres_query), (level_grids.hires, level_grids.lowres))]
            for _ in range(c.pyramid_level):
                maps.append(F.avg_pool2d(maps[-1], 2))
            return maps  # [B, N, h, w] per pyramid level

        first = self._level_queries(query_features, 0)
        maps = correlation_maps(grids, first.hires, first.lowres)
        tracks, occlusion, expected_dist = self._cost_volume_head(maps[1][:, :, None], None)
        tracks, occlusion, expected_dist = tracks[:, :, 0], occlusion[:, :, 0], expected_dist[:, :, 0]
        iterations = [(tracks, occlusion, expected_dist)]
        initial_logits = (occlusion, expected_dist)
        new_conv1, new_conv2 = [], []
        for level, level_grids in enumerate(grids.levels()):
            queries = self._level_queries(query_features, level)
            scale = self._update_scale(level_grids)
            if level:  # a level starts from its query features and the initial logits
                maps = correlation_maps(level_grids, queries.hires, queries.lowres)
                occlusion, expected_dist = initial_logits
            mixer_features = torch.cat([queries.hires, queries.lowres], dim=-1)
            for i in range(level * c.refinement_iters, (level + 1) * c.refinement_iters):
                if i > level * c.refinement_iters:
                    maps = correlation_maps(level_grids, mixer_features[..., :c.hires_dim],
                                            mixer_features[..., c.hires_dim:])
                correlations = []
                for grid in maps:
                    gh, gw = grid.shape[-2:]
                    centres = tracks * self._constant((gw / width, gh / height), tracks)
                    correlations.append(_sample_maps(grid, centres[:, :, None, :] + self.patch_offsets,
                                                     self._constant((2.0 / gw, 2.0 / gh), tracks)))
                mixer_input = torch.cat([
                    torch.zeros_like(tracks), occlusion[..., None], expected_dist[..., None],
                    mixer_features, *correlations,
                ], dim=-1)
                out, h1, h2 = self.torch_pips_mixer.step(mixer_input, state.conv1[i], state.conv2[i], in_place,
                                                          block_step)
                new_conv1.append(h1)
                new_conv2.append(h2)
                update = out[..., :2] if scale is None else out[..., :2] * self._constant(scale, tracks)
                tracks = tracks + update
                occlusion = occlusion + out[..., 2]
                expected_dist = expected_dist + out[..., 3]
                mixer_features = mixer_features + out[..., 4:]
                iterations.append((tracks, occlusion, expected_dist))
        new_state = state if in_place else CausalState(torch.stack(new_conv1), torch.stack(new_conv2))
        framed = [(p[:, :, None], o[:, :, None], e[:, :, None]) for p, o, e in iterations]
        final = framed[-1]
        return Trajectories(final[0], final[1], final[2], tuple(framed[:-1])), new_state

    def _refine(self, query_features: QueryFeatures, pyramid: Sequence[torch.Tensor],
                tracks, occlusion, expected_dist, mixer_features, history,
                scale: Optional[Tuple[float, float]] = None):
        """One PIPs-style refinement iteration over all frames, on one level's pyramid.

        scale: (x, y) factor from the level's raster to the model raster for the
        position update (None at the model resolution)."""
        c = self.config
        height, width = c.resolution
        b, n, t, _ = tracks.shape
        if mixer_features is None:
            queries = (query_features.hires, query_features.lowres)
        else:
            queries = (mixer_features[..., :c.hires_dim], mixer_features[..., c.hires_dim:])
        # As in `track_step`: a patch of bilinear samples dotted with a query equals the
        # bilinear samples of the query's correlation map (sampling is linear, and zero
        # outside either way), and the coarser pyramid level is the 2x2 average of the
        # finer map. One matmul per level instead of sampling C channels at every patch
        # offset; the backward pass then scatters into one-channel maps.
        maps = [_correlation_maps(grid, query) for grid, query in zip(pyramid, queries)]
        for _ in range(c.pyramid_level):
            maps.append(F.avg_pool2d(maps[-1].flatten(0, 2), 2).unflatten(0, maps[-1].shape[:3]))
        correlations = []
        for grid in maps:
            gh, gw = grid.shape[-2:]
            centres = tracks * torch.tensor([gw / width, gh / height], device=tracks.device)
            correlations.append(_sample_frame_maps(grid, centres[:, :, :, None, :] + self.patch_offsets))
        if mixer_features is None:
            both = torch.cat([query_features.hires, query_features.lowres], dim=-1)
            mixer_features = both[:, :, None, :].expand(b, n, t, both.shape[-1])
        mixer_input = torch.cat([
            torch.zeros_like(tracks),  # TAPIR hides the absolute position from the mixer
            occlusion[..., None],
            expected_dist[..., None],
            mixer_features,
            *correlations,
        ], dim=-1)
        h1, h2 = history
        if h1 is not None:
            h1 = h1.flatten(1, 2)  # [M, B*N, K-1, D]
            h2 = h2.flatten(1, 2)
        out, h1, h2 = self.torch_pips_mixer(mixer_input.reshape(b * n, t, -1), h1, h2)
        out = out.reshape(b, n, t, -1)
        if h1 is not None:
            h1 = h1.unflatten(1, (b, n))
            h2 = h2.unflatten(1, (b, n))
        update = out[..., :2] if scale is None else out[..., :2] * torch.tensor(scale, device=out.device)
        return (
            tracks + update,  # the mixer's update is in the level's pixels
            occlusion + out[..., 2],
            expected_dist + out[..., 3],
            mixer_features + out[..., 4:],
            h1,
            h2,
        )

    # ------------------------------------------------------------------ whole clip
    def forward(self, video, query_points: torch.Tensor,
                state: Optional[CausalState] = None, query_chunk_size: int = 64,
                constrain_query_points: bool = True) -> Trajectories:
        """Tracks over a whole clip, in the clip's own pixel raster.

        video: [B, T, H, W, 3] float in [-1, 1], or a tuple of such videos at
        `config.grid_resolutions` (`resize_for_grids`; the raster is then the first's);
        query_points [B, N, 3] (t, y, x) in the video's raster. Points are processed in
        chunks to bound memory; points are independent, so chunking does not change the
        result. With a refinement ladder the outputs are the mean over levels of each
        level's last iteration, as the official forward reports them.
        """
        first = video if isinstance(video, torch.Tensor) else video[0]
        height, width = first.shape[2:4]
        model_h, model_w = self.config.resolution
        to_model = torch.tensor([1.0, model_h / height, model_w / width], device=first.device)
        queries = query_points.float() * to_model
        grids = self.get_feature_grids(video)
        pieces = []
        for start in range(0, queries.shape[1], query_chunk_size):
            chunk = queries[:, start:start + query_chunk_size]
            chunk_state = None if state is None else state.select(slice(start, start + query_chunk_size))
            result, _ = self.estimate_trajectories(
                grids, self.get_query_features(grids, chunk), chunk_state,
                chunk if constrain_query_points else None)
            pieces.append(result)
        to_video = torch.tensor([width / model_w, height / model_h], device=first.device)

        def join(get, scale=False):
            joined = torch.cat([get(p) for p in pieces], dim=1)
            return joined * to_video if scale else joined

        unrefined = tuple(
            (join(lambda p, i=i: p.unrefined[i][0], True), join(lambda p, i=i: p.unrefined[i][1]),
             join(lambda p, i=i: p.unrefined[i][2]))
            for i in range(len(pieces[0].unrefined))
        )
        final = (join(lambda p: p.tracks, True), join(lambda p: p.occlusion), join(lambda p: p.expected_dist))
        iters = self.config.refinement_iters
        if self.config.num_levels > 1 and iters:
            finals = (unrefined + (final,))[iters::iters]  # each level's last iteration
            final = tuple(torch.stack(parts).mean(0) for parts in zip(*finals))
        return Trajectories(*final, unrefined)


def _correlation_maps(grid: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Correlation of each query with every cell of its frame's grid.

    grid: [B, T, h, w, C]; query: [B, N, C] (one per point) or [B, N, T, C] (one per
    point and frame). Returns [B, T, N, h, w] (frame-major, as `_sample_frame_maps` takes).
    """
    b, t, h, w, c = grid.shape
    cells = grid.reshape(b, t, h * w, c).transpose(-1, -2)  # [B, T, C, h*w]
    if query.dim() == 3:
        maps = torch.matmul(query[:, None], cells)  # [B, 1, N, C] x [B, T, C, hw]
    else:
        maps = torch.matmul(query.transpose(1, 2), cells)  # [B, T, N, C] x [B, T, C, hw]
    return maps.reshape(b, t, -1, h, w)


def _sample_frame_maps(maps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of one-channel maps per point and frame, zero outside.

    maps: [B, T, N, h, w]; xy: [B, N, T, S, 2] raster coords of the maps.
    Returns [B, N, T, S].
    """
    b, t, n, h, w = maps.shape
    s = xy.shape[3]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=xy.dtype, device=xy.device)
    normalized = (xy.transpose(1, 2) * scale - 1).reshape(b * t * n, 1, s, 2)
    out = F.grid_sample(maps.reshape(b * t * n, 1, h, w), normalized, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(b, t, n, s).transpose(1, 2)


def _sample_maps(maps: torch.Tensor, xy: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of one-channel maps, zero outside (as `_sample_frame_maps`).

    maps: [B, N, h, w], one per point; xy: [B, N, S, 2] raster coords of the maps;
    scale: (2 / w, 2 / h). Returns [B, N, S].
    """
    b, n, h, w = maps.shape
    s = xy.shape[2]
    normalized = (xy * scale - 1).reshape(b * n, 1, s, 2)
    out = F.grid_sample(maps.reshape(b * n, 1, h, w), normalized, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(b, n, s)


def _soft_argmax(heatmap: torch.Tensor, radius: float) -> torch.Tensor:
    """Heatmap-weighted mean of cell centres within `radius` cells of the argmax.

    heatmap [..., h, w] -> [..., 2] (x, y) in grid raster (cell centres at +0.5).
    """
    h, w = heatmap.shape[-2:]
    flat = heatmap.flatten(-2)
    ys = torch.arange(h, device=heatmap.device, dtype=heatmap.dtype) + 0.5
    xs = torch.arange(w, device=heatmap.device, dtype=heatmap.dtype) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1)  # [h*w, 2]
    peak = centres[flat.argmax(dim=-1)]  # [..., 2]
    near = (torch.sum(torch.square(centres - peak[..., None, :]), dim=-1) < radius ** 2)
    weights = flat * near
    total = torch.clamp(weights.sum(-1, keepdim=True), min=1e-12)
    return (weights[..., None] * centres).sum(-2) / total
