"""Real-time evaluation (eval.realtime): what a subscriber holds, the frame-matched answers, the
timing and the metrics, checked by hand on a tiny clip; the replay driven by a fake clock."""

import numpy as np
import pytest

from bootstap_ros.eval.realtime import Answer, Replay, held_predictions, matched_predictions, replay_clip, score, \
    timing


def one_point_replay():
    """10 FPS, 4 frames, one point (id 0): answers for frame 0 at 0.05 s (at 10, 10) and for
    frame 2 at 0.35 s (at 13, 10), i.e. after frame 3 arrived (0.3 s)."""
    replay = Replay(fps=10.0, num_frames=4)
    replay.answers = [
        Answer(0, 0.05, np.array([0]), np.array([[10.0, 10.0]], np.float32), np.array([True])),
        Answer(2, 0.35, np.array([0]), np.array([[13.0, 10.0]], np.float32), np.array([True])),
    ]
    return replay


def test_held_answers_are_the_latest_published_before_the_next_frame():
    replay = one_point_replay()
    tracks, occluded = held_predictions(replay, np.array([0]), np.array([[5.0, 5.0]]))
    # Deadlines 0.1, 0.2, 0.3, 0.4 s: the frame-2 answer (0.35 s) is held only for frame 3.
    np.testing.assert_allclose(tracks[0, :, 0], [10, 10, 10, 13])
    assert not occluded.any()


def test_before_any_answer_a_point_is_held_occluded_at_its_query():
    replay = Replay(fps=10.0, num_frames=3)
    replay.answers = [Answer(1, 0.25, np.array([0]), np.array([[9.0, 9.0]], np.float32), np.array([True]))]
    tracks, occluded = held_predictions(replay, np.array([0]), np.array([[5.0, 6.0]]))
    assert occluded[0].tolist() == [True, True, False]
    np.testing.assert_allclose(tracks[0, 0], [5, 6])


def test_matched_answers_and_timing():
    replay = one_point_replay()
    tracks, occluded, answered = matched_predictions(replay, np.array([0]), np.array([[5.0, 5.0]]))
    assert answered.tolist() == [True, False, True, False]
    np.testing.assert_allclose(tracks[0, [0, 2], 0], [10, 13])
    figures = timing(replay)
    assert figures["frames_answered"] == 0.5
    assert figures["output_hz"] == pytest.approx(2 / 0.4)
    assert figures["latency_p50_ms"] == pytest.approx(100.0)  # 50 ms and 150 ms


def test_scores_by_hand():
    replay = one_point_replay()
    query = np.array([[0, 10.0, 10.0]], np.float32)  # (t, y, x)
    gt = np.full((1, 4, 2), 10.0)
    scores = score(replay, query, gt, np.zeros((1, 4), bool), np.array([0]))
    # Held: frames 1, 2 at 0 px, frame 3 at 3 px. Thresholds 1 and 2: 2 hits, 1 false positive
    # -> 2 / (3 + 1); thresholds 4, 8, 16: 3 / 3.
    assert scores["held"]["average_jaccard"] == pytest.approx((0.5 + 0.5 + 1 + 1 + 1) / 5)
    assert scores["held"]["average_pts_within_thresh"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1 + 1) / 5)
    # Matched: frame 2 only (frame 0 is the query frame, not scored): 3 px off.
    assert scores["matched"]["average_jaccard"] == pytest.approx((0 + 0 + 1 + 1 + 1) / 5)


class FakeClock:
    """Time passes only in sleep, and by a microsecond at each reading (work takes time)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 1e-6
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_lk_replay_on_a_fake_clock_answers_every_frame_on_arrival():
    import cv2

    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (200, 150), interpolation=cv2.INTER_CUBIC)
    video = np.stack([image[20:120, 20 + 2 * t:120 + 2 * t] for t in range(5)])  # the scene moves 2 px left
    queries = np.array([[0, 50.5, 50.5], [2, 40.5, 60.5]], np.float32)
    clock = FakeClock()
    replay, ids = replay_clip("lk", video, queries, fps=25.0, clock=clock, sleep=clock.sleep)
    assert [a.frame for a in replay.answers] == [0, 1, 2, 3, 4]
    assert [a.time for a in replay.answers] == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16], abs=1e-4)
    tracks, occluded = held_predictions(replay, ids, queries[:, [2, 1]])
    np.testing.assert_allclose(tracks[0, 4], [50.5 - 8, 50.5], atol=0.1)
    assert occluded[1].tolist() == [True, True, False, False, False]  # added on frame 2
    np.testing.assert_allclose(tracks[1, 4], [60.5 - 4, 40.5], atol=0.1)
    with pytest.raises(ValueError, match="system must be one of"):
        replay_clip("kalman", video, queries, fps=25.0)
