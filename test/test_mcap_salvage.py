"""Cut-short MCAP files (a killed recording: no summary, no footer) read up to the cut.

The reference for what a file holds is rosbags' own reader on the complete file; the
cut files are that file with its end removed, as a killed recorder leaves it.
"""

import logging
import os
import shutil

import numpy as np
import pytest

from bootstap_ros_training.logs import LogClips, prepare_logs, write_image_bag
from bootstap_ros_training.mcap_salvage import McapSalvageError, TruncatedMcap
from helpers.log_frames import config, manifest_of, moving, stamps

TOPIC = "/camera/image_raw"
# 48 frames of 160x160 RGB (77 kB each): rosbags' writer closes a chunk past 1 MiB,
# so the file holds four chunks, the last one short.
COUNT, SIZE = 48, 160


@pytest.fixture(scope="module", params=[None, "storage"], ids=["uncompressed", "zstd-chunks"])
def recording(request, tmp_path_factory):
    frames = moving(COUNT, size=SIZE, speed=1)
    bag = write_image_bag(tmp_path_factory.mktemp("bag") / "bag", frames, stamps(COUNT),
                          topic=TOPIC, compression=request.param, extra_topics={"/notes": "string"})
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:  # the independent reading of the complete file
        reference = [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in reader.messages()]
    return frames, bag, next(bag.glob("*.mcap")), reference


def _salvaged(path, topic=None):
    return [(c.topic, c.msgtype, t, raw) for c, t, raw in TruncatedMcap(path).messages(topic)]


def test_a_complete_file_reads_as_rosbags_reads_it(recording):
    _, _, mcap, reference = recording
    assert _salvaged(mcap) == reference
    assert _salvaged(mcap, TOPIC) == [m for m in reference if m[0] == TOPIC]
    assert TruncatedMcap(mcap).topics() == {TOPIC: "sensor_msgs/msg/Image", "/notes": "std_msgs/msg/String"}


# keep: the fraction of the file left, or (negative) the bytes cut off its end: -45 is
# the footer record and the closing magic bytes.
@pytest.mark.parametrize("keep, read", [(0.2, "none"), (0.45, "some"), (0.8, "some"), (-45, "all")])
def test_a_cut_file_gives_the_messages_before_the_cut(recording, tmp_path, keep, read):
    _, _, mcap, reference = recording
    cut = tmp_path / "cut.mcap"
    shutil.copy(mcap, cut)
    size = cut.stat().st_size
    os.truncate(cut, size + keep if keep < 0 else int(size * keep))
    reader = TruncatedMcap(cut)
    salvaged = [(c.topic, c.msgtype, t, raw) for c, t, raw in reader.messages()]
    # A prefix of the file's messages: whole chunks, up to the one the cut reached (the
    # chunks end near 1/3, 2/3 and 99.9% of the file; then come its indexes and summary).
    assert salvaged == reference[:len(salvaged)]
    assert {"none": len(salvaged) == 0, "some": 0 < len(salvaged) < len(reference),
            "all": len(salvaged) == len(reference)}[read], len(salvaged)
    assert 0 < reader.complete_bytes <= reader.file_bytes == cut.stat().st_size


def test_what_is_not_mcap_is_refused(tmp_path):
    other = tmp_path / "other.mcap"
    other.write_bytes(b"SQLite format 3\x00" + bytes(100))
    with pytest.raises(McapSalvageError, match="MCAP magic"):
        TruncatedMcap(other)


def test_prepare_logs_keeps_the_clips_before_the_cut(recording, tmp_path, caplog):
    frames, bag, mcap, reference = recording
    killed = tmp_path / "killed"  # a killed recording: no metadata.yaml, the file cut short
    killed.mkdir()
    shutil.copy(mcap, killed / "killed_0.mcap")
    os.truncate(killed / "killed_0.mcap", int(mcap.stat().st_size * 0.8))
    with caplog.at_level(logging.WARNING, logger="bootstap_ros_training.logs"):
        manifest = manifest_of(prepare_logs([killed], tmp_path / "out", config(size=64)))
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(killed.resolve()) in warning and "killed_0.mcap" in warning and "cut short" in warning
    source = manifest["sources"][0]
    read = source["stats"]["frames"]
    expected = len(_salvaged(killed / "killed_0.mcap", TOPIC))
    assert source["status"] == "partial" and 0 < read == expected < COUNT
    dataset = LogClips(tmp_path / "out" / "manifest.json")
    assert len(dataset) == read // 8
    # The clips are the first frames, resized to the clip size: compare at that size.
    import cv2

    first = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames[:8]])
    assert np.abs(dataset[0]["video"].astype(int) - first).mean() < 3
