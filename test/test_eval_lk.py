"""The Lucas-Kanade baseline on videos with known motion."""

import numpy as np

from bootstap_ros.eval.lk import LucasKanadePredictor
from bootstap_ros.eval.predictors import Predictor, predict_tracks
from helpers.eval_fixtures import smooth_texture, translating_square


def raster(entry, size=256):
    return entry["points"].astype(np.float64) * size


def test_lk_fits_the_protocol_and_is_forward_only():
    predictor = LucasKanadePredictor()
    assert isinstance(predictor, Predictor) and predictor.forward_only


def test_lk_follows_a_translating_square_from_mid_video_queries():
    entry = translating_square(num_frames=8, step=(3, 2))
    gt = raster(entry)
    query_frames = np.array([0, 3, 7] * 6)[: len(gt)]
    xy = gt[np.arange(len(gt)), query_frames]
    queries = np.stack([query_frames, xy[:, 1], xy[:, 0]], -1).astype(np.float32)
    tracks, occluded = LucasKanadePredictor().predict(entry["video"], queries)
    after = np.arange(8)[None] >= query_frames[:, None]
    assert not occluded[after].any()
    assert occluded[~after].all()  # forward only: earlier frames are not tracked
    error = np.linalg.norm(tracks - gt, axis=-1)[after]
    assert error.max() < 0.5, error.max()


def test_lk_strided_fills_earlier_frames_through_the_reversed_video():
    entry = translating_square(num_frames=8, step=(-2, 3), start=(100, 40))
    gt = raster(entry)
    queries = np.stack([np.full(len(gt), 5), gt[:, 5, 1], gt[:, 5, 0]], -1).astype(np.float32)
    tracks, occluded = predict_tracks(LucasKanadePredictor(), entry["video"], queries, "strided")
    assert not occluded.any()
    assert np.linalg.norm(tracks - gt, axis=-1).max() < 0.5


def test_lost_point_stays_occluded_at_its_last_position():
    # The square leaves through the right edge; a point near its right side is
    # lost when it leaves the image and must stay lost afterwards.
    texture = smooth_texture(64)
    video = np.full((8, 256, 256, 3), 128, np.uint8)
    for frame in range(8):
        x0 = 150 + 12 * frame
        inside = min(64, 256 - x0)
        if inside > 0:
            video[frame, 80:144, x0:x0 + inside] = texture[:, :inside]
    point = np.array([[0, 80 + 32.5, 150 + 50.5]], np.float32)  # (t, y, x), right part of the square
    tracks, occluded = LucasKanadePredictor().predict(video, point)
    # True x = 200.5 + 12 f leaves the 256-pixel image after frame 4.
    assert not occluded[0, :5].any()
    lost_at = int(np.argmax(occluded[0]))
    assert lost_at >= 5 and occluded[0, lost_at:].all()
    np.testing.assert_array_equal(tracks[0, lost_at:], np.repeat(tracks[0, lost_at - 1:lost_at], 8 - lost_at, 0))
