"""Camera-rate propagation (tracking.propagation, tracking.realtime): points carried by
Lucas-Kanade on a texture moved by known shifts, the fusion rules checked case by case, a late
network result carried to the newest frame, and the real-time tracker answering every frame."""

import threading

import cv2
import numpy as np
import pytest

from bootstap_ros.tracking.propagation import PropagationConfig, Propagator

SIZE = (120, 160)  # height, width


def texture(seed=0, height=240, width=320):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 6, width // 6, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def shifted(offsets, seed=0):
    """Frames [T, 120, 160, 3]: crops of a texture at integer offsets (dx, dy): the scene moves by
    (-dx, -dy), so a point at p in frame 0 is at p - offset in frame t."""
    image = texture(seed)
    return np.stack([image[40 + dy:40 + dy + SIZE[0], 40 + dx:40 + dx + SIZE[1]] for dx, dy in offsets])


POINTS = np.array([[40.5, 30.5], [80.5, 60.5], [120.5, 90.5]], np.float32)


def test_lk_track_follows_a_known_shift():
    offsets = [(0, 0), (2, 1), (4, 2), (7, 2), (9, 4)]
    frames = shifted(offsets)
    propagator = Propagator()
    propagator.advance(0, frames[0])
    propagator.add([0, 1, 2], POINTS)
    for t in range(1, len(frames)):
        estimate = propagator.advance(t, frames[t])
        expected = POINTS - np.array(offsets[t], np.float32)
        np.testing.assert_allclose(estimate.xy, expected, atol=0.1)
        assert estimate.visible.all() and (estimate.source == "lk").all()  # no network result yet
        assert (estimate.frames_since_network == -1).all()


def test_a_sure_network_result_replaces_the_lk_track_and_is_carried_to_the_newest_frame():
    offsets = [(0, 0), (2, 0), (4, 0), (6, 0)]
    frames = shifted(offsets)
    propagator = Propagator(PropagationConfig(trust_uncertainty=0.1))
    propagator.advance(0, frames[0])
    propagator.add([0, 1, 2], POINTS)
    for t in (1, 2, 3):
        propagator.advance(t, frames[t])
    # The network, on frame 1 and landing after frame 3, puts point 1 three pixels lower than LK.
    on_frame_1 = POINTS - np.array(offsets[1], np.float32) + np.array([[0, 0], [0, 3], [0, 0]], np.float32)
    assert propagator.fuse(1, [0, 1, 2], on_frame_1, [0.0, 0.0, 0.0], [0.05, 0.05, 0.05], [True, True, True])
    estimate = propagator.estimate()
    # Carried from frame 1 to frame 3 by the scene's motion (-4 px in x): the offset it had stays.
    expected = on_frame_1 - np.array([4, 0], np.float32)
    np.testing.assert_allclose(estimate.xy, expected, atol=0.15)
    assert (estimate.source == "network").all() and (estimate.frames_since_network == 2).all()


def test_an_unsure_network_leaves_a_live_lk_track_in_charge():
    frames = shifted([(0, 0), (3, 0), (6, 0)])
    propagator = Propagator(PropagationConfig(trust_uncertainty=0.1))
    propagator.advance(0, frames[0])
    propagator.add([0], POINTS[:1])
    propagator.advance(1, frames[1])
    wrong = POINTS[:1] + 20  # far off, and the network says it is unsure
    propagator.fuse(1, [0], wrong, [0.9], [0.8], [False])
    estimate = propagator.advance(2, frames[2])
    np.testing.assert_allclose(estimate.xy, POINTS[:1] - [6, 0], atol=0.1)
    assert estimate.visible.all() and estimate.source.tolist() == ["lk"]
    assert estimate.uncertainty[0] == pytest.approx(0.8) and estimate.occlusion[0] == pytest.approx(0.9)


def test_a_point_the_network_is_sure_is_occluded_is_not_dragged_along():
    frames = shifted([(0, 0), (3, 0), (6, 0), (9, 0)])
    propagator = Propagator(PropagationConfig(trust_uncertainty=0.1))
    propagator.advance(0, frames[0])
    propagator.add([0, 1], POINTS[:2])
    propagator.advance(1, frames[1])
    held = POINTS[:2] - [3, 0]
    propagator.fuse(1, [0, 1], held, [0.99, 0.0], [0.01, 0.01], [False, True])
    for t in (2, 3):
        estimate = propagator.advance(t, frames[t])
    assert estimate.visible.tolist() == [False, True]
    np.testing.assert_allclose(estimate.xy[0], held[0], atol=1e-5)  # no velocity yet: it stays put
    np.testing.assert_allclose(estimate.xy[1], POINTS[1] - [9, 0], atol=0.1)


def test_where_lk_fails_the_network_track_moves_with_the_points_own_velocity():
    offsets = [(0, 0), (2, 0), (4, 0)]
    frames = list(shifted(offsets))
    propagator = Propagator(PropagationConfig(trust_uncertainty=0.1))
    propagator.advance(0, frames[0])
    propagator.add([0], POINTS[:1])
    propagator.fuse(0, [0], POINTS[:1], [0.0], [0.01], [True])
    propagator.advance(1, frames[1])
    propagator.advance(2, frames[2])
    propagator.fuse(2, [0], POINTS[:1] - [4, 0], [0.0], [0.01], [True])  # 2 px a frame to the left
    # A blank frame: Lucas-Kanade finds nothing to follow.
    estimate = propagator.advance(3, np.zeros_like(frames[0]))
    velocity = 0.5 * np.array([-2.0, 0.0])  # smoothed from zero with weight 0.5
    np.testing.assert_allclose(estimate.xy[0], POINTS[0] - [4, 0] + velocity, atol=1e-4)
    assert estimate.source.tolist() == ["network"]


def test_a_result_older_than_the_frames_kept_changes_nothing():
    frames = shifted([(i, 0) for i in range(5)])
    propagator = Propagator(PropagationConfig(history=2))
    propagator.advance(0, frames[0])
    propagator.add([0], POINTS[:1])
    for t in range(1, 5):
        before = propagator.advance(t, frames[t])
    assert not propagator.fuse(1, [0], POINTS[:1], [0.0], [0.0], [True])
    after = propagator.estimate()
    np.testing.assert_array_equal(after.xy, before.xy)
    assert propagator.counts["stale"] == 1


def test_a_held_frame_outlives_the_history_until_its_result_is_fused_up_to_max_held():
    frames = shifted([(i, 0) for i in range(8)])
    propagator = Propagator(PropagationConfig(history=2, max_held=5, trust_uncertainty=0.1))
    propagator.advance(0, frames[0])
    propagator.add([0], POINTS[:1])
    propagator.hold(1)  # a network step starts on frame 1
    for t in range(1, 6):  # frames 1..5: five frames, within max_held
        propagator.advance(t, frames[t])
    # The slow result lands, 2 px below LK's on frame 1: carried by Lucas-Kanade to frame 5.
    assert propagator.fuse(1, [0], POINTS[:1] - [1, 0] + [0, 2], [0.0], [0.0], [True])
    np.testing.assert_allclose(propagator.estimate().xy[0], POINTS[0] - [5, 0] + [0, 2], atol=0.15)
    # Fused: the hold is gone and the history is back to two frames.
    propagator.advance(6, frames[6])
    assert not propagator.fuse(4, [0], POINTS[:1] - [4, 0], [0.0], [0.0], [True])
    # A held frame is dropped after max_held frames all the same.
    propagator.hold(6)
    for t in range(7, 12):
        propagator.advance(t, frames[t % 8])
    assert not propagator.fuse(6, [0], POINTS[:1] - [6, 0], [0.0], [0.0], [True])
    assert propagator.counts["stale"] == 2


def test_a_complete_result_adds_the_networks_new_points_and_drops_the_removed_ones():
    frames = shifted([(0, 0), (2, 0), (4, 0)])
    propagator = Propagator(PropagationConfig(trust_uncertainty=0.1))
    propagator.advance(0, frames[0])
    propagator.add([0, 1], POINTS[:2])
    propagator.advance(1, frames[1])
    propagator.advance(2, frames[2])
    # The network, on frame 1, no longer has point 0 and has a new point 5 (added by a request).
    on_frame_1 = np.stack([POINTS[1], POINTS[2]]) - [2, 0]
    propagator.fuse(1, [1, 5], on_frame_1, [0.0, 0.0], [0.5, 0.01], [True, True], complete=True)
    estimate = propagator.estimate()
    assert estimate.ids.tolist() == [1, 5]
    np.testing.assert_allclose(estimate.xy, np.stack([POINTS[1], POINTS[2]]) - [4, 0], atol=0.1)
    assert estimate.source.tolist() == ["lk", "network"]  # point 1: unsure, its own LK track


def test_bad_frames_and_orders_are_refused():
    propagator = Propagator()
    with pytest.raises(RuntimeError, match="advance first"):
        propagator.add([0], POINTS[:1])
    propagator.advance(3, shifted([(0, 0)])[0])
    with pytest.raises(ValueError, match="not after frame 3"):
        propagator.advance(3, shifted([(0, 0)])[0])
    with pytest.raises(ValueError, match="uint8"):
        propagator.advance(4, np.zeros((8, 8, 3), np.float32))
    propagator.add([7], POINTS[:1])
    with pytest.raises(ValueError, match="already tracked"):
        propagator.add([7], POINTS[:1])


def test_a_size_change_keeps_the_points_scaled():
    frames = shifted([(0, 0), (0, 0)])
    propagator = Propagator()
    propagator.advance(0, frames[0])
    propagator.add([0], POINTS[:1])
    double = cv2.resize(frames[1], (SIZE[1] * 2, SIZE[0] * 2))
    estimate = propagator.advance(1, double)
    np.testing.assert_allclose(estimate.xy, POINTS[:1] * 2, atol=1e-5)


# ----------------------------------------------------------------------------- the real-time tracker

def test_realtime_tracker_answers_every_frame_and_fuses_the_network(checkpoint):
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.tracking.realtime import RealtimeTracker
    from bootstap_ros.tracking.tracker import CausalTracker

    model = load_checkpoint(checkpoint).model
    tracker = CausalTracker(model, max_points=8, backend="torch")
    landed = []
    done = threading.Event()

    def on_network(index, result, seconds):
        landed.append((index, result.ids.tolist()))
        done.set()

    frames = shifted([(i, 0) for i in range(6)])
    realtime = RealtimeTracker(tracker, propagation="lk", on_network=on_network)
    try:
        first = realtime.submit(frames[0], add=POINTS)
        assert first.ids.tolist() == [0, 1, 2]  # the ids the tracker gives them, at once
        answers = [realtime.submit(frame) for frame in frames[1:]]
        assert all(a is not None and a.ids.tolist() == [0, 1, 2] for a in answers)
        assert done.wait(60)
    finally:
        realtime.close()
    assert realtime.error is None
    assert landed[0] == (0, [0, 1, 2])  # the frame that added the points is never skipped
    assert realtime.counts["frames"] == 6 and realtime.counts["propagated"] == 6
    assert realtime.counts["network"] >= 1


def test_realtime_tracker_without_propagation_answers_only_through_the_network(checkpoint):
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.tracking.realtime import RealtimeTracker
    from bootstap_ros.tracking.tracker import CausalTracker

    tracker = CausalTracker(load_checkpoint(checkpoint).model, max_points=8, backend="torch")
    done = threading.Event()
    realtime = RealtimeTracker(tracker, propagation="none", on_network=lambda *a: done.set())
    try:
        assert realtime.submit(shifted([(0, 0)])[0], add=POINTS) is None
        assert done.wait(60)
    finally:
        realtime.close()
    with pytest.raises(ValueError, match="propagation must be one of"):
        RealtimeTracker(tracker, propagation="kalman")
