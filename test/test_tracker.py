"""CausalTracker: slots, ids, isolation between points, encodings, size changes."""

import logging

import numpy as np
import pytest

from bootstap_ros.tracking import CausalTracker, FrameError, TrackerFullError, to_rgb, track_online
from helpers.small_model import moving_clip, small_model

POINTS = np.array([[10.0, 12.0], [40.5, 30.25], [70.0, 5.0]], np.float32)


@pytest.fixture(scope="module")
def model():
    return small_model()


def run(tracker, clip, actions=None):
    """Step through `clip`, calling actions[t](tracker, frame) before frame t's step."""
    results = []
    for t, frame in enumerate(clip):
        if actions and t in actions:
            actions[t](tracker, frame)
        results.append(tracker.step(frame))
    return results


def outputs_of(results, point_id):
    rows = []
    for r in results:
        (index,) = np.flatnonzero(r.ids == point_id)
        rows.append(np.concatenate([r.xy[index], [r.occlusion_logit[index], r.expected_dist_logit[index]]]))
    return np.stack(rows)


@pytest.mark.parametrize("block_size", [64, 2])
def test_adding_removing_resetting_a_point_leaves_others_bit_identical(model, block_size):
    clip = moving_clip()
    plain = CausalTracker(model, max_points=8, block_size=block_size)
    plain.add_points(clip[0], POINTS)
    baseline = run(plain, clip)

    busy = CausalTracker(model, max_points=8, block_size=block_size)
    ids = busy.add_points(clip[0], POINTS)
    extra = {}

    def add(tracker, frame):
        extra["id"] = tracker.add_points(frame, [[20.0, 20.0]])[0]

    def restart(tracker, frame):  # remove the extra point and start a new one in its slot
        tracker.remove_points([extra["id"]])
        tracker.add_points(frame, [[33.0, 44.0]])

    changed = run(busy, clip, {1: add, 3: restart})
    for point_id in ids:
        np.testing.assert_array_equal(outputs_of(changed, point_id), outputs_of(baseline, point_id))


def test_ids_are_stable_and_never_reused(model):
    clip = moving_clip(num_frames=2)
    tracker = CausalTracker(model, max_points=4)
    first = tracker.add_points(clip[0], POINTS[:2])
    assert first.tolist() == [0, 1]
    assert tracker.remove_points([0, 99]).tolist() == [0]
    second = tracker.add_points(clip[0], POINTS[2:])
    assert second.tolist() == [2]
    result = tracker.step(clip[1])
    assert result.ids.tolist() == [1, 2]
    tracker.reset()
    assert tracker.num_points == 0 and len(tracker.step(clip[1])) == 0
    assert tracker.add_points(clip[0], POINTS[:1]).tolist() == [3]


def test_full_capacity_is_an_error_and_adds_nothing(model):
    clip = moving_clip(num_frames=1)
    tracker = CausalTracker(model, max_points=2, block_size=2)
    tracker.add_points(clip[0], POINTS[:1])
    with pytest.raises(TrackerFullError, match="1 of 2 slots"):
        tracker.add_points(clip[0], POINTS)
    assert tracker.num_points == 1


@pytest.mark.parametrize("bad", [[np.nan, 3.0], [5.0, np.inf], [-1.0, 3.0], [5.0, 1000.0]])
def test_invalid_query_points_are_rejected(model, bad):
    clip = moving_clip(num_frames=1)
    tracker = CausalTracker(model, max_points=4)
    with pytest.raises(ValueError, match="NaN/inf or outside"):
        tracker.add_points(clip[0], [POINTS[0], bad])
    assert tracker.num_points == 0


def test_encodings_give_the_same_tracks(model):
    clip = moving_clip(num_frames=3)
    results = {}
    for encoding, convert in [("rgb8", lambda f: f), ("bgr8", lambda f: f[:, :, ::-1]),
                              ("rgba8", lambda f: np.dstack([f, np.full(f.shape[:2], 255, np.uint8)])),
                              ("bgra8", lambda f: np.dstack([f[:, :, ::-1], np.zeros(f.shape[:2], np.uint8)]))]:
        tracker = CausalTracker(model, max_points=4)
        tracker.add_points(convert(clip[0]), POINTS, encoding=encoding)
        results[encoding] = [tracker.step(convert(f), encoding=encoding).xy for f in clip]
    for encoding in ("bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(np.stack(results[encoding]), np.stack(results["rgb8"]))


def test_mono8_is_replicated_to_three_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb(gray, "mono8")
    assert rgb.shape == (3, 4, 3) and (rgb[:, :, 0] == gray).all() and (rgb[:, :, 2] == gray).all()


@pytest.mark.parametrize("frame, encoding, message", [
    (np.zeros((4, 4, 3), np.uint8), "yuv422", "unsupported image encoding"),
    (np.zeros((4, 4, 3), np.float32), "rgb8", "uint8"),
    (np.zeros((4, 4), np.uint8), "rgb8", r"\[H, W, 3\]"),
    (np.zeros((0, 4, 3), np.uint8), "rgb8", "empty image"),
])
def test_bad_frames_get_clear_errors(frame, encoding, message):
    with pytest.raises(FrameError, match=message):
        to_rgb(frame, encoding)


def test_size_change_keeps_points_and_rescales(model, caplog):
    clip = moving_clip(num_frames=3, height=48, width=80)
    tracker = CausalTracker(model, max_points=4)
    tracker.add_points(clip[0], POINTS)
    small = tracker.step(clip[1])
    doubled = np.repeat(np.repeat(clip[2], 2, axis=0), 2, axis=1)
    with caplog.at_level(logging.WARNING):
        big = tracker.step(doubled)
    assert "input size changed" in caplog.text
    assert big.ids.tolist() == small.ids.tolist() and big.frame_size == (96, 160)
    assert np.isfinite(big.xy).all()
    # Later frames at the new size keep tracking the same points.
    assert tracker.step(doubled).ids.tolist() == small.ids.tolist()


def test_step_with_points_equals_add_then_step(model):
    clip = moving_clip(num_frames=3)
    a = CausalTracker(model, max_points=4)
    a.add_points(clip[0], POINTS)
    b = CausalTracker(model, max_points=4)
    first = b.step(clip[0], add=POINTS)
    assert first.new_ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(a.step(clip[0]).xy, first.xy)
    np.testing.assert_array_equal(a.step(clip[1]).xy, b.step(clip[1]).xy)


def test_track_online_equals_the_engine_step_by_step(model):
    clip = moving_clip(num_frames=5)
    queries = np.array([[0, 10.0, 12.0], [2, 40.5, 30.25], [4, 70.0, 5.0]], np.float32)
    result = track_online(model, clip, queries)
    tracker = CausalTracker(model, max_points=4)
    for t, frame in enumerate(clip):
        starting = queries[queries[:, 0] == t]
        step = tracker.step(frame, add=starting[:, 1:] if len(starting) else None)
        for point_id, (x, y) in zip(step.ids, step.xy):
            np.testing.assert_allclose(result.tracks[point_id, t], [x, y], atol=1e-5)
        assert (result.occluded[:, t][step.ids] == ~step.visible).all()
    assert np.isnan(result.tracks[1, :2]).all() and result.occluded[1, :2].all()
    assert np.isnan(result.tracks[2, :4]).all() and np.isfinite(result.tracks[2, 4]).all()


def test_refinement_ladder_in_the_tracker_and_every_backend(tmp_path):
    """A two-level ladder (64x64 then 128x96) online: the torch backend equals the model's
    staged API on frames resized by hand, and the ONNX export (per-level frames and grids,
    all levels' state) equals the torch backend."""
    import torch

    from bootstap_ros.backends.onnx_export import expected_shapes
    from bootstap_ros.model import preprocess_frames, resize_video

    ladder = small_model(refine_resolution=(128, 96))
    clip = moving_clip(num_frames=4, height=72, width=100)
    runs = {}
    for name, options in (("torch", {}), ("onnxruntime", {"cache_dir": tmp_path})):
        if name == "onnxruntime":
            pytest.importorskip("onnxruntime")
        tracker = CausalTracker(ladder, max_points=4, backend=name, **options)
        runs[name] = [tracker.step(frame, add=POINTS[:2] if t == 0 else None) for t, frame in enumerate(clip)]
    # The model by hand: each level's frame resized from the input, queries in the model raster.
    video = preprocess_frames(torch.from_numpy(clip))[None]
    levels = tuple(resize_video(video, size) for size in ((64, 64), (128, 96)))
    queries = torch.cat([torch.zeros(2, 1), torch.from_numpy(POINTS[:2, ::-1] * [64 / 72, 64 / 100])], -1)
    with torch.no_grad():
        first = ladder.get_feature_grids(tuple(v[:, :1] for v in levels))
        features = ladder.get_query_features(first, queries[None].float())
        state = ladder.initial_state(2)
        for t in range(len(clip)):
            grids = ladder.get_feature_grids(tuple(v[:, t:t + 1] for v in levels))
            result, state = ladder.estimate_trajectories(grids, features, state)
            xy = result.tracks[0, :, 0].numpy() * [100 / 64, 72 / 64]
            np.testing.assert_allclose(runs["torch"][t].xy, xy, atol=1e-4)
    if "onnxruntime" in runs:
        for ours, ref in zip(runs["onnxruntime"], runs["torch"]):
            np.testing.assert_allclose(ours.xy, ref.xy, atol=1e-3)
            np.testing.assert_allclose(ours.occlusion_logit, ref.occlusion_logit, atol=1e-3)
    shapes = expected_shapes(ladder.config, 4)
    assert shapes["encoder"]["frame_1"] == (1, 128, 96, 3) and shapes["step"]["hires_1"] == (1, 32, 24, 32)
    assert shapes["step"]["conv1"][0] == 2 * ladder.config.refinement_iters
    # One level: the graphs keep their names and shapes.
    assert set(expected_shapes(small_model().config, 4)["encoder"]) == {"frame", "hires", "lowres"}
