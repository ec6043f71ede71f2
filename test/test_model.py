"""The network: second code paths, invariants and hand-computed cases."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bootstap_ros.config import ModelConfig
from bootstap_ros.model import build_model, preprocess_frames
from bootstap_ros.model.layers import temporal_depthwise
from bootstap_ros.model.tapir import CausalState, _soft_argmax
from helpers.small_model import SMALL, moving_clip, small_model


pytestmark = pytest.mark.usefixtures('no_grad')


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("channels_in, channels_out", [(6, 24), (8, 8)])
def test_temporal_depthwise_equals_conv1d(causal, channels_in, channels_out):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(channels_in, channels_out, 3, groups=channels_in)
    x = torch.randn(5, 7, channels_in)  # [P, T, C]
    ours, history = temporal_depthwise(x, conv, None, causal)
    padded = F.pad(x.transpose(1, 2), (2, 0) if causal else (1, 1))
    expected = conv(padded).transpose(1, 2)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    if causal:
        torch.testing.assert_close(history, x[:, -2:])


def test_temporal_depthwise_streaming_equals_whole_sequence():
    torch.manual_seed(1)
    conv = torch.nn.Conv1d(4, 16, 3, groups=4)
    x = torch.randn(3, 6, 4)
    whole, _ = temporal_depthwise(x, conv, None, causal=True)
    history, steps = None, []
    for t in range(6):
        y, history = temporal_depthwise(x[:, t:t + 1], conv, history, causal=True)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-6, rtol=1e-6)


def test_soft_argmax_hand_computed():
    heatmap = torch.zeros(1, 4, 4)
    heatmap[0, 1, 1] = 0.6  # cell centre (1.5, 1.5)
    heatmap[0, 1, 2] = 0.3  # cell centre (2.5, 1.5), 1 cell away: inside radius 2
    heatmap[0, 3, 3] = 0.1  # (3.5, 3.5) is sqrt(8) = 2.83 cells away: outside radius 2
    xy = _soft_argmax(heatmap, radius=2.0)
    expected_x = (0.6 * 1.5 + 0.3 * 2.5) / 0.9
    torch.testing.assert_close(xy[0], torch.tensor([expected_x, 1.5]))


def test_preprocess_maps_uint8_to_unit_range():
    frames = torch.tensor([0, 255, 51], dtype=torch.uint8)
    torch.testing.assert_close(preprocess_frames(frames), torch.tensor([-1.0, 1.0, -0.6]))


def _whole_vs_streaming(model, video):
    frames = preprocess_frames(torch.from_numpy(video))[None]
    grids = model.get_feature_grids(frames)
    queries = torch.tensor([[[0, 10.0, 12.0], [0, 30.5, 40.25], [0, 50.0, 5.0]]])
    features = model.get_query_features(grids, queries)
    whole, _ = model.estimate_trajectories(grids, features)  # no query-point constraint
    state = model.initial_state(3)
    steps = []
    for t in range(video.shape[0]):
        frame_grids = model.get_feature_grids(frames[:, t:t + 1])
        result, state = model.estimate_trajectories(frame_grids, features, state)
        steps.append(result)
    for name in ("tracks", "occlusion", "expected_dist"):
        streamed = torch.cat([getattr(r, name) for r in steps], dim=2)
        torch.testing.assert_close(streamed, getattr(whole, name), atol=2e-4, rtol=1e-4)


def test_causal_streaming_equals_whole_clip_small():
    _whole_vs_streaming(small_model(), moving_clip())


def test_causal_streaming_equals_whole_clip_official_architecture():
    torch.manual_seed(0)
    model = build_model(ModelConfig(causal=True))
    _whole_vs_streaming(model, moving_clip(num_frames=4, height=64, width=96))


def test_non_causal_model_looks_ahead():
    # The same weights, non-causal: the first frame's output depends on later frames.
    model = small_model(causal=False)
    video = preprocess_frames(torch.from_numpy(moving_clip()))[None]
    queries = torch.tensor([[[0, 20.0, 20.0]]])
    full = model(video, queries, constrain_query_points=False)
    changed = video.clone()
    changed[:, 3:] = -changed[:, 3:]
    other = model(changed, queries, constrain_query_points=False)
    assert not torch.allclose(full.tracks[:, :, 0], other.tracks[:, :, 0])
    causal = small_model(causal=True)
    a = causal(video, queries, constrain_query_points=False)
    b = causal(changed, queries, constrain_query_points=False)
    torch.testing.assert_close(a.tracks[:, :, :3], b.tracks[:, :, :3])


def test_query_point_constraint_pins_the_initial_estimate():
    model = small_model(causal=False)
    video = preprocess_frames(torch.from_numpy(moving_clip(height=64, width=64)))[None]
    queries = torch.tensor([[[2, 17.5, 33.25], [4, 40.0, 8.0]]])
    result = model(video, queries)
    initial_tracks = result.unrefined[0][0]
    torch.testing.assert_close(initial_tracks[0, 0, 2], torch.tensor([33.25, 17.5]))
    torch.testing.assert_close(initial_tracks[0, 1, 4], torch.tensor([8.0, 40.0]))
    assert len(result.unrefined) == SMALL.refinement_iters


def test_causal_state_select_reset_assign_touch_only_their_points():
    model = small_model()
    state = CausalState(*(torch.randn_like(t) for t in model.initial_state(4)))
    reset = state.reset(2)
    assert torch.all(reset.conv1[:, :, :, 2] == 0) and torch.all(reset.conv2[:, :, :, 2] == 0)
    for i in (0, 1, 3):
        assert torch.equal(reset.conv1[:, :, :, i], state.conv1[:, :, :, i])
    assert state.conv1[:, :, :, 2].abs().sum() > 0  # the original is untouched
    one = state.select(3)
    assert one.num_points == 1 and torch.equal(one.conv2[:, :, :, 0], state.conv2[:, :, :, 3])
    moved = reset.assign(2, one)
    assert torch.equal(moved.conv1[:, :, :, 2], state.conv1[:, :, :, 3])
    assert torch.equal(moved.conv1[:, :, :, 0], state.conv1[:, :, :, 0])


def test_config_round_trip_and_validation():
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="multiples of 8"):
        ModelConfig(resolution=(250, 256))
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({"mixer_width": 3})


def test_official_architecture_size():
    # BootsTAPIR = TAPIR + 5 extra conv blocks of 2 x (3x3 conv 256<->1024) with biases + LayerNorm.
    tapir = build_model(ModelConfig(extra_conv_blocks=0))
    boots = build_model(ModelConfig())
    extra = sum(p.numel() for p in boots.parameters()) - sum(p.numel() for p in tapir.parameters())
    per_block = 2 * 256 * 1024 * 9 + 1024 + 256 + 2 * 256
    assert extra == 5 * per_block


def test_softmax_temperature_follows_the_architecture(tmp_path):
    """BootsTAPIR (extra convs) was trained at 10, TAPIR at 20; a stored value wins."""
    from bootstap_ros.model import load_checkpoint, save_checkpoint
    from bootstap_ros.model.checkpoint import infer_official_config

    assert ModelConfig().softmax_temperature == 10.0
    assert ModelConfig(extra_conv_blocks=0).softmax_temperature == 20.0
    assert ModelConfig(softmax_temperature=15).softmax_temperature == 15.0
    with pytest.raises(ValueError, match="softmax_temperature must be positive"):
        ModelConfig(softmax_temperature=0)
    # A project checkpoint written before the field existed: decided from its architecture.
    stored = SMALL.to_dict()
    assert stored["softmax_temperature"] == 10.0  # saved configs hold the number
    del stored["softmax_temperature"]
    assert ModelConfig.from_dict(stored).softmax_temperature == 10.0
    assert ModelConfig.from_dict({**stored, "extra_conv_blocks": 0}).softmax_temperature == 20.0
    # Official bare state_dicts: recognised from the extra conv keys.
    model = small_model()
    state = model.state_dict()
    for name, weights, expected in [("boots", state, 10.0), ("tapir", {
            k: v for k, v in state.items() if not k.startswith("extra_convs.")}, 20.0)]:
        assert infer_official_config(weights, causal=True).softmax_temperature == expected
    # A project checkpoint keeps its stored temperature.
    save_checkpoint(tmp_path / "t15.pt", small_model(softmax_temperature=15.0))
    assert load_checkpoint(tmp_path / "t15.pt").config.softmax_temperature == 15.0


def test_embedded_model_keeps_the_temperature_it_was_trained_with():
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT

    stored = torch.load(EMBEDDED_CHECKPOINT, weights_only=True)["model_config"]
    assert load_checkpoint(EMBEDDED_CHECKPOINT).config.softmax_temperature == stored["softmax_temperature"] == 20.0


def test_the_temperature_reaches_the_initial_estimate_and_overrides_copy_the_model():
    from bootstap_ros.model.checkpoint import with_settings

    model = small_model()
    hotter = with_settings(model, softmax_temperature=40.0)
    assert hotter is not model and model.config.softmax_temperature == 10.0  # the caller's model is untouched
    assert with_settings(model, softmax_temperature=None) is model
    video = preprocess_frames(torch.from_numpy(moving_clip(num_frames=3)))[None]
    queries = torch.tensor([[[0.0, 20.0, 30.0], [1.0, 30.0, 50.0]]])
    grids = model.get_feature_grids(video)
    features = model.get_query_features(grids, queries)
    cost = torch.einsum("bnc,bthwc->bnthw", features.lowres, grids.lowres)
    # The initial estimate by hand: softmax of hid2's logits at the given temperature, soft-argmax.
    mods = model.torch_cost_volume_track_mods
    b, n, t, h, w = cost.shape
    logits = mods["hid2"](torch.relu(mods["hid1"](cost.reshape(-1, 1, h, w)))).reshape(b, n, t, h * w)
    for m, temperature in [(model, 10.0), (hotter, 40.0)]:
        heatmap = torch.softmax(logits * temperature, -1).reshape(b, n, t, h, w)
        expected = _soft_argmax(heatmap, 5.0) * torch.tensor([64 / w, 64 / h])
        points, _, _ = m._cost_volume_estimate(features.lowres, grids.lowres, None)
        torch.testing.assert_close(points, expected, atol=1e-4, rtol=1e-4)
    other, _, _ = hotter._cost_volume_estimate(features.lowres, grids.lowres, None)
    assert (other - model._cost_volume_estimate(features.lowres, grids.lowres, None)[0]).abs().max() > 1e-3


def test_refinement_ladder_hand_computed():
    from bootstap_ros.config import refinement_ladder

    # 1080x1920 over 256x256: ratios 4.22 and 7.5, ceil(log2 7.5) + 1 = 4 levels at
    # 256 * ratio^(i/3), rounded down to multiples of 8: h 256, 413.8, 668.8, 1080 and
    # w 256, 501.1, 980.9, 1920.
    assert refinement_ladder((1080, 1920), (256, 256)) == ((256, 256), (408, 496), (664, 976), (1080, 1920))
    assert refinement_ladder((512, 512), (256, 256)) == ((256, 256), (512, 512))
    assert refinement_ladder((384, 512), (256, 256)) == ((256, 256), (384, 512))
    assert refinement_ladder((256, 256), (256, 256)) == ((256, 256),)
    assert refinement_ladder((128, 128), (256, 256)) == ((256, 256),)  # never below the model resolution
    config = ModelConfig(refine_resolution=(512, 512))
    assert config.grid_resolutions == ((256, 256), (512, 512)) and config.state_iterations == 8
    assert config.query_lowres_dim == 2 * 256 and ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig(refine_resolution=(256, 256)) == ModelConfig()  # one level: the same model
    with pytest.raises(ValueError, match="multiples of 8"):
        ModelConfig(refine_resolution=(500, 512))


LADDER = dict(refine_resolution=(128, 96))  # SMALL is 64x64: levels 64x64 and 128x96


def test_ladder_streaming_and_the_fast_step_equal_the_whole_clip():
    model = small_model(**LADDER)
    assert model.config.refinement_resolutions == ((64, 64), (128, 96))
    video = preprocess_frames(torch.from_numpy(moving_clip(num_frames=4, height=80, width=112)))[None]
    grids = model.get_feature_grids(video)
    assert grids.finer[0].hires.shape[2:4] == (32, 24)  # the second level's grids: 128x96 / 4
    queries = torch.tensor([[[0, 10.0, 12.0], [0, 30.5, 40.25], [0, 50.0, 5.0]]])
    features = model.get_query_features(grids, queries)
    whole, _ = model.estimate_trajectories(grids, features)
    assert len(whole.unrefined) == 1 + 2 * SMALL.refinement_iters - 1
    state, fast_state = model.initial_state(3), model.initial_state(3)
    assert state.conv1.shape[0] == 2 * SMALL.refinement_iters
    for t in range(video.shape[1]):
        frame_grids = model.get_feature_grids(video[:, t:t + 1])
        result, state = model.estimate_trajectories(frame_grids, features, state)
        fast, fast_state = model.track_step(frame_grids, features, fast_state)
        for name in ("tracks", "occlusion", "expected_dist"):
            torch.testing.assert_close(getattr(result, name), getattr(whole, name)[:, :, t:t + 1],
                                       atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(getattr(fast, name), getattr(result, name), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(fast_state.conv2, state.conv2, atol=2e-4, rtol=1e-4)


def test_ladder_refines_on_each_levels_own_frames():
    """The second level sees the input resized to 128x96 (not the 64x64 frames upsampled),
    its updates move the points, and the offline forward averages the levels' results."""
    model = small_model(**LADDER)
    one_level = small_model()  # the same weights (seed), no ladder
    video = preprocess_frames(torch.from_numpy(moving_clip(num_frames=3, height=80, width=112)))[None]
    queries = torch.tensor([[[0, 20.0, 30.0], [1, 50.0, 70.0]]])  # (t, y, x) in the 80x112 video
    ladder = model(video, queries)
    plain = one_level(video, queries)
    iters = SMALL.refinement_iters
    to_video = torch.tensor([112 / 64, 80 / 64])
    # The first level is the one-level model exactly (the same grids, queries and state).
    first_level = ladder.unrefined[iters][0]
    torch.testing.assert_close(first_level, plain.tracks)
    # The second level's last iteration, from the staged API in the model raster.
    grids = model.get_feature_grids(video)
    in_model = queries * torch.tensor([1.0, 64 / 80, 64 / 112])
    second, _ = model.estimate_trajectories(grids, model.get_query_features(grids, in_model), None, in_model)
    second_level = second.tracks * to_video
    assert (second_level - first_level).abs().max() > 1e-3
    torch.testing.assert_close(ladder.tracks, (first_level + second_level) / 2, atol=1e-4, rtol=1e-4)
    # Each level's frames come from the input: grids of the input already at 128x96 agree.
    resized = F.interpolate(video[0].permute(0, 3, 1, 2), size=(128, 96), mode="bilinear", align_corners=False)
    direct = model.get_feature_grids(resized.permute(0, 2, 3, 1)[None])
    torch.testing.assert_close(grids.finer[0].hires, direct.finer[0].hires, atol=1e-5, rtol=1e-5)


def _neighbourhood_correlations(grid, query, xy):
    """Second code path: sample the C-channel features at every patch position (bilinear,
    zero outside, pixel centres at +0.5), then dot them with the query.
    grid [B, T, h, w, C]; query [B, N, C] or [B, N, T, C]; xy [B, N, T, S, 2]."""
    b, t, h, w, c = grid.shape
    n, s = xy.shape[1], xy.shape[3]
    x, y = xy[..., 0] - 0.5, xy[..., 1] - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    frames = torch.arange(t)[None, None, :, None].expand(b, n, t, s)
    batch = torch.arange(b)[:, None, None, None].expand(b, n, t, s)
    sampled = torch.zeros(b, n, t, s, c, dtype=grid.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            cx, cy = x0 + dx, y0 + dy
            weight = (1 - (x - cx).abs()) * (1 - (y - cy).abs())
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            values = grid[batch, frames, cy.clamp(0, h - 1).long(), cx.clamp(0, w - 1).long()]
            sampled += (weight * inside)[..., None] * values
    if query.dim() == 3:
        return torch.einsum("bntsc,bnc->bnts", sampled, query)
    return torch.einsum("bntsc,bntc->bnts", sampled, query)


@pytest.mark.parametrize("per_frame_query", [False, True])
def test_patch_correlations_from_maps_equal_sampled_features(per_frame_query):
    """The refinement's correlations (one correlation map per query, sampled) equal the
    neighbourhood of bilinearly sampled features dotted with the query, inside the grid,
    across its border and on the 2x2-averaged coarser level."""
    from bootstap_ros.model.tapir import _correlation_maps, _sample_frame_maps

    torch.manual_seed(3)
    b, t, n, h, w, c = 2, 3, 5, 8, 10, 6
    grid = torch.randn(b, t, h, w, c, dtype=torch.float64)
    query = torch.randn(b, n, t, c, dtype=torch.float64) if per_frame_query else torch.randn(
        b, n, c, dtype=torch.float64)
    # Patch positions inside, on and beyond every border.
    xy = torch.rand(b, n, t, 7, 2, dtype=torch.float64) * torch.tensor([w + 4.0, h + 4.0]) - 2.0
    ours = _sample_frame_maps(_correlation_maps(grid, query), xy)
    torch.testing.assert_close(ours, _neighbourhood_correlations(grid, query, xy))
    pooled = F.avg_pool2d(grid.permute(0, 1, 4, 2, 3).flatten(0, 1), 2).unflatten(0, (b, t)).permute(0, 1, 3, 4, 2)
    coarse = _sample_frame_maps(F.avg_pool2d(_correlation_maps(grid, query).flatten(0, 2), 2).unflatten(
        0, (b, t, n)), xy / 2)
    torch.testing.assert_close(coarse, _neighbourhood_correlations(pooled, query, xy / 2))
