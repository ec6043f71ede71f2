"""How the evaluation runs a predictor: forward-only merging by time reversal."""

import numpy as np
import pytest

from bootstap_ros.eval.predictors import Predictor, predict_tracks


class RampPredictor:
    """A fake tracker: x moves +1 per frame after the query, y stays.

    Frames before the query come back visible at a far-off position (1000,
    1000), the garbage a forward-only tracker can give there; the evaluation
    must not use them.
    """

    def __init__(self, forward_only=True):
        self.forward_only = forward_only
        self.calls = []

    def predict(self, video, query_points):
        self.calls.append((video.copy(), query_points.copy()))
        num_frames = len(video)
        frames = np.arange(num_frames)[None, :]
        query_frames = np.round(query_points[:, :1]).astype(int)
        after = frames - query_frames
        tracks = np.stack([query_points[:, 2:3] + after, np.repeat(query_points[:, 1:2], num_frames, 1)], -1)
        tracks[after < 0] = 1000.0
        occluded = np.zeros((len(query_points), num_frames), bool)
        return tracks.astype(np.float32), occluded


def video_with_frame_numbers(num_frames):
    return np.arange(num_frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)


QUERIES = np.array([[0, 7, 10], [3, 8, 20], [5, 9, 30]], np.float32)  # (t, y, x)


def test_ramp_predictor_fits_the_protocol():
    assert isinstance(RampPredictor(), Predictor)


def test_strided_forward_only_runs_backward_on_reversed_video():
    video = video_with_frame_numbers(6)
    predictor = RampPredictor()
    tracks, occluded = predict_tracks(predictor, video, QUERIES, "strided")
    assert len(predictor.calls) == 2
    back_video, back_queries = predictor.calls[1]
    # Only queries with earlier frames go backward, at frame T - 1 - t.
    np.testing.assert_array_equal(back_video[:, 0, 0, 0], [5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(back_queries, [[2, 8, 20], [0, 9, 30]])
    # Forward: x = x_q + (f - t); backward on the reversed video gives
    # x_q + (t - f) for frames before t. Merged: x_q + |f - t|, all visible.
    frames = np.arange(6)
    expected_x = QUERIES[:, 2:3] + np.abs(frames[None] - QUERIES[:, :1])
    np.testing.assert_array_equal(tracks[..., 0], expected_x)
    np.testing.assert_array_equal(tracks[..., 1], np.repeat(QUERIES[:, 1:2], 6, 1))
    assert not occluded.any()


def test_first_mode_forward_only_needs_one_call_and_hides_earlier_frames():
    video = video_with_frame_numbers(6)
    predictor = RampPredictor()
    tracks, occluded = predict_tracks(predictor, video, QUERIES, "first")
    assert len(predictor.calls) == 1
    before = np.arange(6)[None] < QUERIES[:, :1]
    np.testing.assert_array_equal(occluded, before)
    # Earlier frames sit at the query position, not at the tracker's garbage.
    np.testing.assert_array_equal(tracks[1, :3], [[20, 8]] * 3)
    np.testing.assert_array_equal(tracks[2, 5:, 0], [30])


def test_bidirectional_predictor_is_used_as_is():
    predictor = RampPredictor(forward_only=False)
    tracks, _ = predict_tracks(predictor, video_with_frame_numbers(6), QUERIES, "strided")
    assert len(predictor.calls) == 1
    assert tracks[2, 0, 0] == 1000.0


def test_no_queries_means_no_call():
    predictor = RampPredictor()
    tracks, occluded = predict_tracks(predictor, video_with_frame_numbers(4), np.zeros((0, 3)), "first")
    assert tracks.shape == (0, 4, 2) and occluded.shape == (0, 4) and not predictor.calls


def test_wrong_output_shapes_are_reported():
    class Short(RampPredictor):
        def predict(self, video, query_points):
            tracks, occluded = super().predict(video, query_points)
            return tracks[:, :-1], occluded

    with pytest.raises(ValueError, match=r"Short.predict returned tracks \(3, 5, 2\).* expected \(3, 6, 2\)"):
        predict_tracks(Short(), video_with_frame_numbers(6), QUERIES, "first")
