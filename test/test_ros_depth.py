"""tracks_3d with the real rclpy: an independent client publishes colour, depth and camera_info
and checks the node's 3D tracks against its own back-projection (plain loops, written here)."""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from bootstap_ros.ros.conversions import cloud_to_array
from helpers.ros_client import Client, STAMPS, set_stamp, stamp_of, wait_until
from helpers.small_model import moving_clip

HEIGHT, WIDTH = 48, 80
K = np.array([[70.0, 0.0, 39.0], [0.0, 72.0, 24.5], [0.0, 0.0, 1.0]])


def camera_info(width=WIDTH, height=HEIGHT):
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.k = K.reshape(-1).tolist()
    msg.p = np.concatenate([K, np.zeros((3, 1))], 1).reshape(-1).tolist()
    msg.d = [0.0] * 5
    return msg


def depth_message(depth, stamp):
    """A depth Image built by hand: 16UC1 from uint16 millimetres, 32FC1 from float32 metres."""
    msg = Image(height=depth.shape[0], width=depth.shape[1], is_bigendian=0)
    msg.encoding = "16UC1" if depth.dtype == np.uint16 else "32FC1"
    msg.step = depth.shape[1] * depth.dtype.itemsize
    msg.data = depth.astype("<" + depth.dtype.str[1:]).tobytes()
    return set_stamp(msg, stamp)


def expected_points(tracks, depth, window):
    """The client's own tracks_3d: per track, the median of the valid depths (metres) in the
    window around its pixel of the depth image, back-projected with K (u = x - 0.5)."""
    metres = depth.astype(np.float64) / 1000.0 if depth.dtype == np.uint16 else depth.astype(np.float64)
    valid = np.isfinite(metres) & (metres > 0)
    dh, dw = depth.shape
    out = []
    for x, y in zip(tracks["x"].astype(np.float64), tracks["y"].astype(np.float64)):
        col, row = int(np.floor(x * dw / WIDTH)), int(np.floor(y * dh / HEIGHT))
        first = -((window - 1) // 2)
        values = [metres[r, c] for r in range(row + first, row + first + window)
                  for c in range(col + first, col + first + window)
                  if 0 <= r < dh and 0 <= c < dw and valid[r, c]] if 0 <= col < dw and 0 <= row < dh else []
        z = float(np.median(values)) if values else np.nan
        u, v = x - 0.5, y - 0.5
        out.append(((u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z))
    return np.array(out)


def check_cloud(cloud, tracks, depth, window):
    points, reference = cloud_to_array(cloud), cloud_to_array(tracks)
    assert cloud.header == tracks.header
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "id", "visible"]
    assert points["id"].tolist() == reference["id"].tolist()  # same points, same order
    assert points["visible"].tolist() == reference["visible"].tolist()
    xyz = np.stack([points["x"], points["y"], points["z"]], -1)
    np.testing.assert_allclose(xyz, expected_points(reference, depth, window), rtol=1e-5, atol=1e-6)
    assert cloud.is_dense == bool(np.isfinite(xyz).all())
    return xyz


def test_tracks_3d_equal_an_independent_back_projection(ros, checkpoint):
    window = 3
    # depth_wait well above the default: the depth image goes out just before its colour image
    # on another topic, and on a loaded machine it can reach the node after the frame is tracked.
    h = Client(ros, checkpoint=checkpoint, grid_points=3, use_depth=True, depth_window=window,
               depth_wait=1.0, diagnostics_period=0.2)
    try:
        tracks_3d = h.subscribe(PointCloud2, "tracks_3d")
        diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
        depth_pub = h.publisher(Image, "depth")
        info_pub = h.publisher(CameraInfo, "camera_info")
        info_pub.publish(set_stamp(camera_info(), next(STAMPS)))  # in before the first frame
        wait_until(lambda: h.node._camera_info is not None, what="the node's camera_info")
        rng = np.random.default_rng(0)
        clip = moving_clip(num_frames=6, height=HEIGHT, width=WIDTH)

        def frame_with_depth(index, depth, offset_ns=0, info=None):
            stamp = next(STAMPS)
            info_pub.publish(set_stamp(info or camera_info(), stamp))
            if depth is not None:
                depth_pub.publish(depth_message(depth, stamp + offset_ns))
            msg = h.frame(clip[index], stamp=stamp)
            return msg, h.send(msg)

        def cloud_for(msg):
            return tracks_3d.wait_for(lambda m: stamp_of(m) == stamp_of(msg), what="tracks_3d")

        # 32FC1 metres with holes (0 and NaN): the window median skips them.
        metres = rng.uniform(0.5, 3.0, (HEIGHT, WIDTH)).astype(np.float32)
        metres[rng.random((HEIGHT, WIDTH)) < 0.2] = 0.0
        metres[10:20, 30:50] = np.nan
        msg, tracks = frame_with_depth(0, metres)
        xyz = check_cloud(cloud_for(msg), tracks, metres, window)
        assert np.isfinite(xyz).any()

        # 16UC1 millimetres, stamped 10 ms after the colour image (within depth_slop 0.02).
        millimetres = rng.integers(0, 4000, (HEIGHT, WIDTH)).astype(np.uint16)
        msg, tracks = frame_with_depth(1, millimetres, offset_ns=10_000_000)
        check_cloud(cloud_for(msg), tracks, millimetres, window)

        # A depth image of half the size: looked up at the scaled positions.
        small = rng.uniform(1.0, 2.0, (HEIGHT // 2, WIDTH // 2)).astype(np.float32)
        msg, tracks = frame_with_depth(2, small)
        check_cloud(cloud_for(msg), tracks, small, window)

        # No valid depth at all: every point is still published, with NaN x, y, z.
        msg, tracks = frame_with_depth(3, np.zeros((HEIGHT, WIDTH), np.uint16))
        xyz = check_cloud(cloud_for(msg), tracks, np.zeros((HEIGHT, WIDTH), np.uint16), window)
        assert len(xyz) == 9 and np.isnan(xyz).all()

        # Depth 100 ms older than its colour image (beyond depth_slop, and frames are 33 ms
        # apart) and no depth at all: tracks, but no tracks_3d. (A depth image stamped ahead of
        # the colour images would end the node's wait for the ones after it: depth comes in
        # stamp order.)
        late, _ = frame_with_depth(4, metres, offset_ns=-100_000_000)
        missing, _ = frame_with_depth(5, None)
        final, tracks = frame_with_depth(0, metres)
        check_cloud(cloud_for(final), tracks, metres, window)  # in order: earlier ones came first
        stamps = [stamp_of(m) for m in tracks_3d.messages]
        assert stamp_of(late) not in stamps and stamp_of(missing) not in stamps
        assert h.node.warning_counts.get("no_depth") == 2

        key = "frames without tracks_3d (no depth pair or camera_info)"

        def counted(message):
            return any(kv.key == key and kv.value == "2" for status in message.status
                       if status.name.startswith(h.namespace) for kv in status.values)

        diagnostics.wait_for(counted, what="the frames without tracks_3d in /diagnostics")
    finally:
        h.close()


def test_camera_info_of_another_size_is_scaled_and_depth_off_means_no_subscription(ros, checkpoint):
    h = Client(ros, checkpoint=checkpoint, grid_points=2, use_depth=True, depth_window=1, depth_wait=2.0)
    try:
        tracks_3d = h.subscribe(PointCloud2, "tracks_3d")
        depth_pub = h.publisher(Image, "depth")
        info_pub = h.publisher(CameraInfo, "camera_info")
        frame = moving_clip(num_frames=1, height=HEIGHT, width=WIDTH)[0]
        # Calibrated at twice the size: K at 160x96; the node scales it to 80x48, which
        # (OpenCV's convention, u -> (u + 0.5) / 2 - 0.5) gives back K above.
        double = K.copy()
        double[0, 0], double[1, 1] = 2 * K[0, 0], 2 * K[1, 1]
        double[0, 2], double[1, 2] = (K[0, 2] + 0.5) * 2 - 0.5, (K[1, 2] + 0.5) * 2 - 0.5
        info = camera_info(WIDTH * 2, HEIGHT * 2)
        info.k = double.reshape(-1).tolist()
        depth = np.full((HEIGHT, WIDTH), 1.5, np.float32)
        stamp = next(STAMPS)
        info_pub.publish(set_stamp(info, stamp))
        wait_until(lambda: h.node._camera_info is not None, what="the node's camera_info")
        depth_pub.publish(depth_message(depth, stamp))
        msg = h.frame(frame, stamp=stamp)
        tracks = h.send(msg)
        check_cloud(tracks_3d.wait_for(lambda m: stamp_of(m) == stamp), tracks, depth, 1)
    finally:
        h.close()
    plain = Client(ros, checkpoint=checkpoint, grid_points=1)
    try:
        wait_until(lambda: plain.client.count_publishers(plain.namespace + "/tracks") > 0)
        assert plain.client.count_subscribers(plain.namespace + "/depth") == 0
        assert plain.client.count_publishers(plain.namespace + "/tracks_3d") == 0
    finally:
        plain.close()


def test_launch_arguments_for_depth_and_query_sets(monkeypatch):
    from helpers.launch_file import launch_nodes, load_launch_file

    module = load_launch_file(monkeypatch)
    nodes, _ = launch_nodes(module)
    assert ("depth", "depth") in nodes["tracker_node"]["remappings"]
    nodes, _ = launch_nodes(module, use_depth="true", depth_topic="/cam/aligned_depth",
                            camera_info_topic="/cam/color/camera_info", query_set="/sets/demo.npz")
    tracker = nodes["tracker_node"]
    assert tracker["parameters"][1] == {"use_depth": True, "query_set": "/sets/demo.npz"}
    assert ("depth", "/cam/aligned_depth") in tracker["remappings"]
    assert ("camera_info", "/cam/color/camera_info") in tracker["remappings"]
    with pytest.raises(ValueError, match="launch argument use_depth:=maybe is not true or false"):
        launch_nodes(module, use_depth="maybe")


def test_depth_wait_pairs_a_depth_image_that_lags_the_colour_image(ros, checkpoint):
    # A depth stream 0.5 s behind its colour images (a slow depth pipeline, or a loaded
    # computer): the default 0.1 s wait gives up on it, the longest depth_wait pairs it (2 s, so
    # that a slow delivery of the tracks to this client cannot use the wait up).
    h = Client(ros, checkpoint=checkpoint, grid_points=2, use_depth=True, depth_window=1, depth_wait=2.0)
    try:
        tracks_3d = h.subscribe(PointCloud2, "tracks_3d")
        depth_pub = h.publisher(Image, "depth")
        info_pub = h.publisher(CameraInfo, "camera_info")
        clip = moving_clip(num_frames=2, height=HEIGHT, width=WIDTH)
        depth = np.full((HEIGHT, WIDTH), 2.0, np.float32)
        first = next(STAMPS)  # an on-time pair first: the node then knows depth is coming
        info_pub.publish(set_stamp(camera_info(), first))
        wait_until(lambda: h.node._camera_info is not None, what="the node's camera_info")
        depth_pub.publish(depth_message(depth, first))
        h.send(h.frame(clip[0], stamp=first))
        tracks_3d.wait_for(lambda m: stamp_of(m) == first, what="tracks_3d of the on-time pair")
        late = next(STAMPS)
        tracks = h.send(h.frame(clip[1], stamp=late))  # tracked; the node now waits for depth
        time.sleep(0.5)  # the lag under test, not a wait for a condition
        depth_pub.publish(depth_message(depth, late))
        check_cloud(tracks_3d.wait_for(lambda m: stamp_of(m) == late, what="tracks_3d of the late depth"),
                    tracks, depth, 1)
    finally:
        h.close()


def test_tracks_3d_follow_the_answer_of_every_image_with_propagation(ros, checkpoint):
    # propagation lk: every image is answered at once, from Lucas-Kanade between network results;
    # its tracks_3d are those answers in 3D, with the image's header, also while the depth image
    # comes after the answer (the wait happens beside the image callback, not in it).
    window = 3
    h = Client(ros, checkpoint=checkpoint, grid_points=3, use_depth=True, depth_window=window,
               depth_wait=1.0, propagation="lk")
    try:
        tracks_3d = h.subscribe(PointCloud2, "tracks_3d")
        depth_pub = h.publisher(Image, "depth")
        info_pub = h.publisher(CameraInfo, "camera_info")
        info_pub.publish(set_stamp(camera_info(), next(STAMPS)))
        wait_until(lambda: h.node._camera_info is not None, what="the node's camera_info")
        rng = np.random.default_rng(1)
        clip = moving_clip(num_frames=8, height=HEIGHT, width=WIDTH)
        answered = []  # the images answered with points
        deadline = time.monotonic() + 60.0
        for count in range(1000):
            depth = rng.uniform(0.5, 3.0, (HEIGHT, WIDTH)).astype(np.float32)
            stamp = next(STAMPS)
            if count % 2 == 0:  # the depth image before its colour image, or just after the answer
                depth_pub.publish(depth_message(depth, stamp))
            msg = h.frame(clip[count % len(clip)], stamp=stamp)
            tracks = h.send(msg)
            if count % 2:
                depth_pub.publish(depth_message(depth, stamp))
            cloud = tracks_3d.wait_for(lambda m: stamp_of(m) == stamp, what="tracks_3d")
            if tracks.width == 0:  # before the network's first result
                assert cloud.header == tracks.header and cloud.width == 0
                continue
            check_cloud(cloud, tracks, depth, window)
            answered.append(count)
            if len(answered) >= 6:
                break
            assert time.monotonic() < deadline, "timed out waiting for the network's grid in the answers"
        assert h.node.warning_counts.get("no_depth", 0) == 0
        assert h.node._stats.propagated >= count + 1
    finally:
        h.close()
