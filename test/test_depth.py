"""Depth for tracks_3d, without ROS: readings, window medians, back-projection, pairing,
camera models. Hand-computed cases and invariants (a known plane comes back as that plane)."""

import threading

import numpy as np
import pytest

from bootstap_ros.depth import (CameraModel, DepthError, DepthPairing, Tracks3D, back_project,
                                depth_at, depth_in_metres, tracks_to_3d)

NAN = np.nan


def test_16uc1_millimetres_and_32fc1_metres_with_invalid_readings():
    mm = np.array([[0, 1500], [65535, 1]], np.uint16)
    np.testing.assert_allclose(depth_in_metres(mm, "16UC1"), [[NAN, 1.5], [65.535, 0.001]], rtol=1e-6)
    metres = np.array([[0.0, NAN], [np.inf, 2.25], [-1.0, 0.5]], np.float32)
    np.testing.assert_array_equal(depth_in_metres(metres, "32FC1"), [[NAN, NAN], [NAN, 2.25], [NAN, 0.5]])
    assert depth_in_metres(metres[:, :, None], "32FC1").shape == (3, 2)
    with pytest.raises(DepthError, match="unsupported depth encoding 'mono8'.*16UC1 or 32FC1"):
        depth_in_metres(mm, "mono8")
    with pytest.raises(DepthError, match="16UC1 depth must be uint16"):
        depth_in_metres(metres, "16UC1")
    with pytest.raises(DepthError, match=r"expected a depth image \[H, W\]"):
        depth_in_metres(np.zeros((2, 2, 3), np.float32), "32FC1")


def test_window_median_of_valid_depths():
    depth = np.arange(25, dtype=np.float32).reshape(5, 5)  # depth[row, col] = 5 row + col
    depth[1, 1] = depth[1, 2] = NAN
    xy = np.array([
        [2.5, 2.5],    # pixel (col 2, row 2): rows/cols 1..3 are [NaN NaN 8; 11 12 13; 16 17 18]
        [2.99, 2.01],  # the same pixel
        [0.5, 0.5],    # the corner: the window's inside part is [0 1; 5 NaN]
        [3.0, 2.0],    # pixel (3, 2): [NaN 8 9; 12 13 14; 17 18 19]
        [5.0, 2.0],    # x == width: outside the image
        [-0.1, 2.0],   # outside
        [NAN, 1.0],    # not a position
    ], np.float32)
    expected = [13.0, 13.0, 1.0, 13.5, NAN, NAN, NAN]
    np.testing.assert_allclose(depth_at(depth, xy, window=3), expected)
    np.testing.assert_allclose(depth_at(depth, xy[:1], window=1), [12.0])
    # An even window reaches one pixel further right/down: cols and rows 2..3 -> [12, 13, 17, 18].
    np.testing.assert_allclose(depth_at(depth, xy[:1], window=2), [15.0])
    assert np.isnan(depth_at(np.full((5, 5), NAN, np.float32), xy[:1], window=5)).all()
    assert depth_at(depth, np.zeros((0, 2)), window=3).shape == (0,)
    with pytest.raises(DepthError, match="window must be >= 1"):
        depth_at(depth, xy, window=0)


def test_a_depth_image_of_another_size_is_looked_up_at_the_scaled_position():
    depth = np.arange(50, dtype=np.float32).reshape(5, 10)  # half of a 10x20 colour image
    # Colour (13.0, 7.0) -> depth (6.5, 3.5) -> pixel col 6, row 3 -> 36.
    np.testing.assert_allclose(depth_at(depth, [[13.0, 7.0]], window=1, colour_size=(10, 20)), [36.0])
    np.testing.assert_allclose(depth_at(depth, [[13.0, 7.0]], window=1), [np.nan])  # no scaling: outside


def test_back_projection_hand_computed_and_opencv_pixel_convention():
    K = np.array([[500.0, 0, 319.5], [0, 400.0, 239.5], [0, 0, 1]])
    # TAPIR (320, 240) is OpenCV (319.5, 239.5): the principal point, on the optical axis.
    xyz = back_project([[320.0, 240.0], [820.0, 640.0], [0.5, 0.5], [10.0, 10.0]], [2.0, 2.0, 4.0, NAN], K)
    np.testing.assert_allclose(xyz[:3], [[0, 0, 2], [2, 2, 2], [-319.5 / 500 * 4, -239.5 / 400 * 4, 4]],
                               atol=1e-6)
    assert np.isnan(xyz[3]).all()


def test_a_known_tilted_plane_comes_back_as_that_plane():
    height, width = 48, 64
    K = np.array([[50.0, 0, 31.5], [0, 55.0, 23.5], [0, 0, 1]])
    normal, offset = np.array([0.2, -0.3, 1.0]), 2.0  # plane: normal . X = offset
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([(u - 31.5) / 50.0, (v - 23.5) / 55.0, np.ones_like(u, float)], -1)
    depth = (offset / (rays @ normal)).astype(np.float32)  # z of the plane along each pixel's ray
    rng = np.random.default_rng(0)
    xy = (np.floor(rng.uniform([1, 1], [width - 1, height - 1], (20, 2))) + 0.5).astype(np.float32)
    points = tracks_to_3d(xy, depth, K, (height, width), window=1)
    np.testing.assert_allclose(points @ normal, offset, rtol=1e-5)
    projected = (points / points[:, 2:]) @ K.T  # and they project back onto their pixels
    np.testing.assert_allclose(projected[:, :2], xy - 0.5, atol=1e-4)


def returns_at_once(call):
    """call()'s result, from a thread; fails if it is still waiting a minute later (the waits
    the calls could make are an hour long: only a wait cut short returns)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "it waited for a depth image that cannot come"
    return result[0]


def test_pairing_exact_nearest_slop_capacity_and_waiting():
    pairing = DepthPairing(capacity=3)
    assert pairing.latest_stamp is None
    for stamp in (1_000_000_000, 1_010_000_000, 1_030_000_000):
        pairing.add(stamp, stamp)
    assert pairing.match(1_010_000_000, 0.02) == 1_010_000_000
    assert pairing.latest_stamp == 1_030_000_000
    assert pairing.match(1_024_000_000, 0.02) == 1_030_000_000  # nearest within slop
    assert pairing.match(1_100_000_000, 0.02) is None
    pairing.add(1_040_000_000, "new")  # drops the oldest
    assert pairing.match(1_000_000_000, 0.005) is None

    later = 2_000_000_000
    threading.Timer(0.05, pairing.add, (later, "late")).start()
    assert pairing.match(later, 0.0, wait_s=10.0) == "late"
    # A depth image past stamp + slop is in: no point in waiting, an hour's wait_s or not.
    assert returns_at_once(lambda: pairing.match(1_500_000_000, 0.02, wait_s=3600.0)) is None


def test_a_frame_takes_the_nearest_depth_image_and_waits_only_for_a_live_stream():
    tracks = Tracks3D(slop_s=0.02, window=1, wait_s=3600.0)
    assert returns_at_once(lambda: tracks.pair(1_000_000_000)) is None  # no depth stream yet: no wait
    # Before the first depth image a frame waits for it only while a depth publisher is there.
    first = Tracks3D(slop_s=0.02, window=1, wait_s=3600.0)
    threading.Timer(0.05, first.add, (1_000_000_000, "first")).start()
    assert first.pair(1_000_000_000, publisher=True) == "first"
    for stamp, name in ((1_000_000_000, "a"), (1_033_000_000, "b"), (1_066_000_000, "c")):
        tracks.add(stamp, name)
    assert tracks.pair(1_033_000_000) == "b"
    # 1.050 s: "b" is 17 ms away, "c" 16 ms: the nearest within the 20 ms slop.
    assert tracks.pair(1_050_000_000) == "c"
    assert tracks.pair(1_045_000_000) == "b"  # "b" 12 ms, "c" 21 ms
    # 5 s after the last depth image: the stream is not alive, so no wait for one.
    assert returns_at_once(lambda: tracks.pair(6_066_000_000)) is None
    # 33 ms after it: alive, so the frame waits for its depth image.
    threading.Timer(0.05, tracks.add, (1_099_000_000, "d")).start()
    assert tracks.pair(1_099_000_000) == "d"
    tracks.slop_s, tracks.wait_s = 0.0, 0.1  # a runtime change applies to the next frame
    assert tracks.pair(1_100_000_000) is None


def test_points_of_a_frame_hand_computed_with_each_note_given_once():
    # Pixel (3, 2) has its centre at raster (3.5, 2.5), OpenCV (3, 2): with fx = fy = 2 and the
    # principal point (2.5, 1.5), 2 m away it is at x = (3 - 2.5) / 2 * 2 = 0.5, y = 0.5.
    K = [[2.0, 0.0, 2.5], [0.0, 2.0, 1.5], [0.0, 0.0, 1.0]]
    tracks = Tracks3D(slop_s=0.02, window=1, wait_s=0.0)
    depth = np.full((4, 6), 2.0, np.float32)
    xyz, notes = tracks.points(np.array([[3.5, 2.5]]), (4, 6), depth, CameraModel(6, 4, K))
    np.testing.assert_allclose(xyz, [[0.5, 0.5, 2.0]], atol=1e-6)
    assert notes == []
    # A depth image of half the size, a camera model for images twice the size (OpenCV's
    # convention: cx = (5.5 + 0.5) / 2 - 0.5 = 2.5 when halved) and distortion: the same
    # point, and one note for each.
    K_big = [[4.0, 0.0, 5.5], [0.0, 4.0, 3.5], [0.0, 0.0, 1.0]]
    big = CameraModel(12, 8, K_big, D=[0.1, 0, 0, 0, 0])
    xyz, notes = tracks.points(np.array([[3.5, 2.5]]), (4, 6), depth[::2, ::2], big)
    np.testing.assert_allclose(xyz, [[0.5, 0.5, 2.0]], atol=1e-6)
    assert len(notes) == 3
    assert "depth image is 3x2, the colour image 6x4" in notes[0]
    assert "camera_info is for 12x8 images" in notes[1] and "distortion" in notes[2]
    assert tracks.points(np.array([[3.5, 2.5]]), (4, 6), depth[::2, ::2], big)[1] == []


def test_camera_models_pinhole_yaml_and_scaling(tmp_path):
    pinhole = CameraModel.pinhole((480, 640), fov_deg=90.0)
    np.testing.assert_allclose(pinhole.K, [[320, 0, 319.5], [0, 320, 239.5], [0, 0, 1]])
    np.testing.assert_allclose(pinhole.P[:, :3], pinhole.K)
    (tmp_path / "cam.yaml").write_text(
        "image_width: 640\nimage_height: 480\ncamera_name: wrist\n"
        "camera_matrix: {rows: 3, cols: 3, data: [600.0, 0.0, 320.5, 0.0, 610.0, 240.25, 0.0, 0.0, 1.0]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.2, 0.0, 0.0, 0.05]}\n"
        "rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}\n"
        "projection_matrix: {rows: 3, cols: 4, data: [590, 0, 321, 0, 0, 600, 241, 0, 0, 0, 1, 0]}\n")
    model = CameraModel.from_yaml(tmp_path / "cam.yaml")
    assert (model.width, model.height, model.name, model.distortion_model) == (640, 480, "wrist", "plumb_bob")
    np.testing.assert_allclose(model.K, [[600, 0, 320.5], [0, 610, 240.25], [0, 0, 1]])
    np.testing.assert_allclose(model.D, [0.1, -0.2, 0, 0, 0.05])
    np.testing.assert_allclose(model.P[0], [590, 0, 321, 0])
    half = pinhole.scaled_to((240, 320))
    # Half size: f halves; the centre pixel (319.5, 239.5) maps to (159.5, 119.5).
    np.testing.assert_allclose(half.K, [[160, 0, 159.5], [0, 160, 119.5], [0, 0, 1]])
    (tmp_path / "bad.yaml").write_text("image_width: 640\nimage_height: 480\n")
    with pytest.raises(DepthError, match="lacks camera_matrix"):
        CameraModel.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(DepthError, match="cannot read camera calibration"):
        CameraModel.from_yaml(tmp_path / "missing.yaml")
