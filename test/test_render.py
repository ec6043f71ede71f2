"""Tests for bootstap_ros.render: markers, trails, colours, rendered videos and a stream's trails."""

import numpy as np
import pytest

from bootstap_ros.render import Trails, colors_for_ids, default_radius, draw_tracks, render_video
from bootstap_ros.video import open_video

WHITE = np.array([255, 255, 255], np.uint8)


def _blank(height=64, width=64):
    return np.zeros((height, width, 3), np.uint8)


def _pixel(frame, x, y):
    """The pixel that holds raster position (x, y)."""
    return frame[int(y), int(x)].astype(int)


def test_colors_are_stable_distinct_and_rgb():
    colors = colors_for_ids(range(20))
    assert colors.shape == (20, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 20
    np.testing.assert_array_equal(colors_for_ids([7, 3]), colors[[7, 3]])
    np.testing.assert_array_equal(colors_for_ids([0])[0], (255, 35, 35))  # hue 0 is red


def test_default_radius_scales_with_image():
    assert default_radius((256, 256)) == 3
    assert default_radius((480, 640)) == 4
    assert default_radius((1080, 1920)) == 8
    assert default_radius((10, 10)) == 3


def test_visible_point_colours_its_surroundings_only():
    frame = _blank()
    out = draw_tracks(frame, np.array([[20.5, 30.5]]), np.array([True]),
                      colors=WHITE[None], radius=3)
    assert not frame.any(), "the input frame is left untouched"
    np.testing.assert_array_equal(_pixel(out, 20.5, 30.5), WHITE)
    np.testing.assert_array_equal(_pixel(out, 22.5, 30.5), WHITE)  # inside the disc
    changed_rows, changed_cols = np.nonzero(out.any(axis=-1))
    assert abs(changed_cols - 20).max() <= 4 and abs(changed_rows - 30).max() <= 4


def test_occluded_point_is_a_hollow_ring():
    out = draw_tracks(_blank(), np.array([[32.5, 32.5]]), np.array([False]),
                      colors=WHITE[None], radius=6)
    assert not _pixel(out, 32.5, 32.5).any(), "ring centre stays untouched"
    assert _pixel(out, 38.5, 32.5).min() > 200, "ring drawn at the radius"
    visible = draw_tracks(_blank(), np.array([[32.5, 32.5]]), np.array([True]),
                          colors=WHITE[None], radius=6)
    assert not np.array_equal(out, visible)


def test_nan_points_are_skipped():
    xy = np.array([[np.nan, np.nan], [10.5, 10.5]])
    out = draw_tracks(_blank(), xy, np.array([True, True]), radius=2)
    colors = colors_for_ids([0, 1])
    np.testing.assert_array_equal(_pixel(out, 10.5, 10.5), colors[1])
    assert not (out == colors[0]).all(axis=-1).any()


def test_trail_draws_visible_segments_and_fades():
    # Point walks right along y = 32.5; the middle entry is a gap (occluded).
    trail = np.array([[[5.5, 32.5], [15.5, 32.5], [25.5, 32.5], [np.nan, np.nan],
                       [45.5, 32.5], [55.5, 32.5]]])
    out = draw_tracks(_blank(), trail[:, -1], np.array([True]), trail=trail,
                      colors=WHITE[None], radius=2)
    oldest, newest = _pixel(out, 10.5, 32.5)[0], _pixel(out, 50.5, 32.5)[0]
    assert 0 < oldest < newest, "older segments are fainter"
    assert not _pixel(out, 35.5, 32.5).any(), "no segment across the gap"
    assert not out[:20].any() and not out[45:].any(), "nothing far from the trail"


def test_shape_errors():
    with pytest.raises(ValueError, match="visible"):
        draw_tracks(_blank(), np.zeros((2, 2)), np.array([True]))
    with pytest.raises(ValueError, match="trail"):
        draw_tracks(_blank(), np.zeros((1, 2)), np.array([True]), trail=np.zeros((1, 3)))


def test_render_video_writes_every_frame(tmp_path):
    num_frames, num_points = 6, 3
    frames = [_blank(48, 64) for _ in range(num_frames)]
    tracks = np.zeros((num_points, num_frames, 2))
    tracks[..., 0] = np.linspace(10, 50, num_frames)
    tracks[..., 1] = np.array([10.5, 24.5, 38.5])[:, None]
    tracks[2, :2] = np.nan  # queried at frame 2
    occluded = np.zeros((num_points, num_frames), bool)
    occluded[1, 3] = True
    path = tmp_path / "render" / "tracks.mp4"
    assert render_video(iter(frames), tracks, occluded, path, fps=10, trail=4) == num_frames
    source = open_video(path)
    video = source.read_all()
    assert video.shape == (num_frames, 48, 64, 3)
    assert source.fps == pytest.approx(10)
    # Point 0 is drawn in its colour (approximately, after lossy compression).
    expected = colors_for_ids([0])[0].astype(int)
    assert np.abs(video[0, 10, 10].astype(int) - expected).max() < 60


def test_render_video_frame_count_mismatch(tmp_path):
    tracks, occluded = np.zeros((1, 2, 2)), np.zeros((1, 2), bool)
    with pytest.raises(ValueError, match="only 1 frames"):
        render_video([_blank()], tracks, occluded, tmp_path / "a.mp4", fps=5)
    with pytest.raises(ValueError, match="more frames"):
        render_video([_blank()] * 3, tracks, occluded, tmp_path / "b", fps=5)


def test_no_points_draw_nothing_and_colour_nothing():
    # The node's state before any point is added and after every reset.
    colors = colors_for_ids(np.zeros(0, np.int64))
    assert colors.shape == (0, 3) and colors.dtype == np.uint8
    frame = np.arange(16 * 24 * 3, dtype=np.uint8).reshape(16, 24, 3)
    out = draw_tracks(frame, np.zeros((0, 2)), np.zeros(0, bool), trail=np.zeros((0, 8, 2)),
                      colors=colors)
    np.testing.assert_array_equal(out, frame)
    assert out is not frame


def test_trails_keep_each_points_last_visible_positions_hand_computed():
    nan = [np.nan, np.nan]
    trails = Trails(3)
    trail = trails.update(np.array([1, 2]), np.array([[1.0, 1.0], [5.0, 5.0]]), np.array([True, False]))
    np.testing.assert_array_equal(trail, [[nan, nan, [1, 1]], [nan, nan, nan]])  # occluded: NaN
    trail = trails.update([2, 1], [[6.0, 6.0], [2.0, 2.0]], [True, True])  # by id, in any order
    np.testing.assert_array_equal(trail, [[nan, nan, [6, 6]], [nan, [1, 1], [2, 2]]])
    trail = trails.update([1], [[3.0, 3.0]], [True])  # point 2 is gone, and forgotten
    np.testing.assert_array_equal(trail, [[[1, 1], [2, 2], [3, 3]]])
    np.testing.assert_array_equal(trails.update([2], [[7.0, 7.0]], [True]), [[nan, nan, [7, 7]]])
    trails.length = 2  # a shorter trail keeps the latest positions
    np.testing.assert_array_equal(trails.update([2], [[8.0, 8.0]], [True]), [[[7, 7], [8, 8]]])
    trails.length = 1
    assert trails.update([2], [[9.0, 9.0]], [True]) is None
    trails.length = 3  # on again: the trail goes on from before (nothing was added while off)
    np.testing.assert_array_equal(trails.update([2], [[9.0, 9.0]], [True]), [[[7, 7], [8, 8], [9, 9]]])
    # The trails draw as draw_tracks draws any trail.
    frame = draw_tracks(_blank(), np.array([[30.5, 30.5]]), np.array([True]),
                        Trails(4).update([0], [[30.5, 30.5]], [True]))
    assert frame.any()
