"""Dataset readers and TAP-Vid query sampling, on pickles the tests write."""

import os

import numpy as np
import pytest

from bootstap_ros.eval.datasets import (
    DatasetFormatError,
    TapVidDataset,
    resize_video,
    sample_queries_first,
    sample_queries_strided,
)
from helpers.eval_fixtures import (
    make_entry,
    random_entry,
    write_davis,
    write_pickle,
    write_rgb_stacking,
    write_robotap,
)

T, F = True, False
# Four tracks over 7 frames (True = occluded):
OCCLUDED = np.array([
    [T, T, T, T, T, T, T],  # 0: never visible
    [T, T, T, F, F, F, F],  # 1: first visible at frame 3
    [F, F, T, T, T, T, F],  # 2: visible, hidden for frames 2-5, back at 6
    [T, T, T, T, T, F, T],  # 3: visible only at frame 5
])


def points_for(occluded):
    """Distinct positions: track i at frame t is at x = 10 i + t, y = 100 + 10 i - t."""
    tracks, frames = np.meshgrid(np.arange(occluded.shape[0]), np.arange(occluded.shape[1]), indexing="ij")
    return np.stack([10.0 * tracks + frames, 100.0 + 10 * tracks - frames], axis=-1)


def test_first_mode_queries_each_track_at_its_first_visible_frame():
    points = points_for(OCCLUDED)
    queries, targets, occluded, track_ids = sample_queries_first(OCCLUDED, points)
    # Track 0 is dropped; the others keep their order. Query = (t, y, x).
    np.testing.assert_array_equal(track_ids, [1, 2, 3])
    np.testing.assert_array_equal(queries, [[3, 107, 13], [0, 120, 20], [5, 125, 35]])
    assert queries.dtype == np.float32
    np.testing.assert_array_equal(targets, points[[1, 2, 3]])
    np.testing.assert_array_equal(occluded, OCCLUDED[[1, 2, 3]])


def test_strided_mode_queries_every_fifth_frame_where_visible():
    points = points_for(OCCLUDED)
    queries, targets, occluded, track_ids = sample_queries_strided(OCCLUDED, points)
    # Frames 0 and 5 (7 frames). Frame 0: only track 2 visible. Frame 5: tracks
    # 1 and 3 (track 2 is hidden there). Ordered by frame, then track; track 0
    # never appears, and track 2 is not queried at frame 6 (not a stride frame).
    np.testing.assert_array_equal(track_ids, [2, 1, 3])
    np.testing.assert_array_equal(queries, [[0, 120, 20], [5, 105, 15], [5, 125, 35]])
    np.testing.assert_array_equal(targets, points[[2, 1, 3]])
    np.testing.assert_array_equal(occluded, OCCLUDED[[2, 1, 3]])


def test_strided_mode_last_stride_frame_and_repeated_tracks():
    # 6 frames -> stride frames 0 and 5; a track visible at both gives two queries.
    occluded = np.zeros((2, 6), bool)
    occluded[1, 0] = True
    points = points_for(occluded)
    queries, _, _, track_ids = sample_queries_strided(occluded, points)
    np.testing.assert_array_equal(track_ids, [0, 0, 1])
    np.testing.assert_array_equal(queries[:, 0], [0, 5, 5])
    # With 5 frames only frame 0 is a stride frame.
    queries, _, _, track_ids = sample_queries_strided(occluded[:, :5], points[:, :5])
    np.testing.assert_array_equal(track_ids, [0])


def test_no_visible_point_gives_no_query():
    occluded = np.ones((3, 7), bool)
    points = points_for(occluded)
    for sampler in (sample_queries_first, sample_queries_strided):
        queries, targets, occ, ids = sampler(occluded, points)
        assert queries.shape == (0, 3) and targets.shape == (0, 7, 2) and occ.shape == (0, 7)


def test_davis_pickle_non_square_is_resized_and_scaled(tmp_path):
    rng = np.random.default_rng(1)
    wide = random_entry(rng, num_frames=6, height=24, width=40)
    square = random_entry(rng, num_frames=11, height=256, width=256)
    path = write_davis(tmp_path / "tapvid_davis.pkl", {"zebra": wide, "ant": square})
    dataset = TapVidDataset(path, "auto", "first")
    assert dataset.format is None  # only known once the file is read
    samples = list(dataset)
    assert dataset.format == "davis"
    # Dict insertion order, as the official reader (not sorted).
    assert [s.name for s in samples] == ["zebra", "ant"]
    zebra, ant = samples
    assert zebra.video.shape == (6, 256, 256, 3) and zebra.video.dtype == np.uint8
    assert zebra.original_size == (24, 40)
    np.testing.assert_array_equal(ant.video, square["video"])  # already 256 x 256
    # x scaled by the resized width and y by the resized height: both 256.
    # Track 0 (never visible) has no first-mode query.
    expected_points = wide["points"][1:].astype(np.float64) * 256
    np.testing.assert_array_equal(zebra.target_points, expected_points)
    assert zebra.target_points.dtype == np.float64
    assert zebra.source == path


def test_resize_keeps_flat_colour_and_size():
    video = np.zeros((2, 30, 50, 3), np.uint8)
    video[..., 0] = 200
    video[..., 2] = 17
    resized = resize_video(video, 256)
    assert resized.shape == (2, 256, 256, 3)
    np.testing.assert_array_equal(resized[..., 0], 200)
    np.testing.assert_array_equal(resized[..., 2], 17)
    assert resize_video(resized, 256) is resized


def test_rgb_stacking_list_names_are_indices(tmp_path):
    rng = np.random.default_rng(2)
    path = write_rgb_stacking(tmp_path / "stacking.pkl", [random_entry(rng) for _ in range(3)])
    dataset = TapVidDataset(path, "auto", "strided")
    samples = list(dataset)
    assert dataset.format == "rgb_stacking"
    assert [s.name for s in samples] == ["0", "1", "2"]
    for sample in samples:
        assert np.all(sample.query_points[:, 0] % 5 == 0)


def test_robotap_folder_reads_splits_in_sorted_order(tmp_path):
    rng = np.random.default_rng(3)
    folder = write_robotap(tmp_path / "robotap", [
        {"b": random_entry(rng), "a": random_entry(rng)},
        {"c": random_entry(rng)},
    ])
    # A non-split pickle in the folder is not read.
    write_pickle(os.path.join(folder, "notes.pkl"), {"x": random_entry(rng)})
    dataset = TapVidDataset(folder)
    assert dataset.format == "robotap"
    assert [os.path.basename(f) for f in dataset.files] == ["robotap_split0.pkl", "robotap_split1.pkl"]
    assert [s.name for s in dataset] == ["b", "a", "c"]
    # One split file on its own is recognised by its name.
    single = TapVidDataset(os.path.join(folder, "robotap_split1.pkl"))
    assert [s.name for s in single] == ["c"] and single.format == "robotap"


def test_videos_are_read_lazily(tmp_path):
    rng = np.random.default_rng(4)
    folder = write_robotap(tmp_path / "robotap", [{"good": random_entry(rng)}])
    with open(os.path.join(folder, "robotap_split1.pkl"), "wb") as file:
        file.write(b"not a pickle")
    videos = iter(TapVidDataset(folder))
    assert next(videos).name == "good"  # the bad second file is not opened yet
    with pytest.raises(DatasetFormatError, match="robotap_split1.pkl"):
        next(videos)


def test_points_never_visible_first_visible_late_and_hidden_stretches(tmp_path):
    video = np.zeros((7, 16, 16, 3), np.uint8)
    points = points_for(OCCLUDED) / 256.0
    path = write_davis(tmp_path / "d.pkl", {"v": make_entry(video, points, OCCLUDED)})
    sample = next(iter(TapVidDataset(path, "davis", "first")))
    np.testing.assert_array_equal(sample.track_ids, [1, 2, 3])
    np.testing.assert_allclose(sample.query_points, [[3, 107, 13], [0, 120, 20], [5, 125, 35]], atol=1e-4)
    sample = next(iter(TapVidDataset(path, "davis", "strided")))
    np.testing.assert_array_equal(sample.track_ids, [2, 1, 3])


@pytest.mark.parametrize("fmt", ["davis", "robotap", "rgb_stacking"])
def test_explicit_format_must_match_the_layout(tmp_path, fmt):
    rng = np.random.default_rng(5)
    entry = random_entry(rng)
    data = [entry] if fmt != "rgb_stacking" else {"v": entry}
    path = write_pickle(tmp_path / "data.pkl", data)
    with pytest.raises(DatasetFormatError, match=f"data.pkl: --format {fmt} expects"):
        list(TapVidDataset(path, fmt))


def test_auto_format_rejects_other_top_level_types(tmp_path):
    path = write_pickle(tmp_path / "odd.pkl", ("a", "tuple"))
    with pytest.raises(DatasetFormatError, match=r"odd.pkl: expected a dict .* found a tuple of length 2"):
        list(TapVidDataset(path))


def test_truncated_pickle_names_the_file(tmp_path):
    rng = np.random.default_rng(6)
    path = write_davis(tmp_path / "davis.pkl", {"v": random_entry(rng)})
    data = open(path, "rb").read()
    with open(path, "wb") as file:
        file.write(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="davis.pkl: cannot be unpickled .*truncated") as info:
        list(TapVidDataset(path))
    assert info.value.path == path and info.value.video is None


def broken(entry, **changes):
    entry = dict(entry)
    for key, value in changes.items():
        if value is None:
            del entry[key]
        else:
            entry[key] = value
    return entry


@pytest.mark.parametrize("changes, message", [
    ({"occluded": None}, r"missing key\(s\) \['occluded'\]"),
    ({"video": np.zeros((6, 32, 48, 3), np.float32)}, r"'video' must be a non-empty uint8 array .* float32"),
    ({"video": np.zeros((6, 32, 48), np.uint8)}, r"'video' must be .* shape \(6, 32, 48\)"),
    ({"points": np.zeros((4, 5, 2), np.float32)}, r"'points' must be a float array \[N, 6, 2\]"),
    ({"points": np.zeros((4, 6, 2), np.int64)}, r"'points' must be a float array .* int64"),
    ({"occluded": np.zeros((4, 6), np.uint8)}, r"'occluded' must be a bool array \[4, 6\] .* uint8"),
    ({"occluded": np.zeros((3, 6), bool)}, r"'occluded' must be a bool array \[4, 6\] .* \(3, 6\)"),
])
def test_malformed_video_names_file_video_and_problem(tmp_path, changes, message):
    rng = np.random.default_rng(7)
    good = random_entry(rng)
    path = write_davis(tmp_path / "davis.pkl", {"fine": good, "bad one": broken(good, **changes)})
    videos = iter(TapVidDataset(path))
    assert next(videos).name == "fine"
    with pytest.raises(DatasetFormatError, match=r"davis.pkl, video 'bad one': " + message) as info:
        next(videos)
    assert info.value.video == "bad one"


def test_record_that_is_not_a_dict(tmp_path):
    path = write_rgb_stacking(tmp_path / "s.pkl", [np.zeros(3)])
    with pytest.raises(DatasetFormatError, match=r"video '0': expected a dict .* float64 array"):
        list(TapVidDataset(path))


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TapVidDataset(str(tmp_path / "missing.pkl"))
    with pytest.raises(DatasetFormatError, match="no robotap_split"):
        TapVidDataset(str(tmp_path))
    with pytest.raises(DatasetFormatError, match="folder, which only the robotap format reads"):
        TapVidDataset(str(tmp_path), "davis")
    with pytest.raises(ValueError, match="query_mode"):
        TapVidDataset(str(tmp_path), query_mode="last")
    with pytest.raises(ValueError, match="format"):
        TapVidDataset(str(tmp_path), "kinetics")


def test_points_in_pixels_are_named_with_the_fix(tmp_path):
    rng = np.random.default_rng(7)
    entry = random_entry(rng, height=32, width=48)
    entry["points"] = entry["points"] * np.array([48, 32], np.float32)  # pixels, not 0..1
    path = write_davis(tmp_path / "davis.pkl", {"pixels": entry})
    with pytest.raises(DatasetFormatError, match=r"video 'pixels': 'points' .* look like pixels.*divide x by the "
                                                 r"width \(48\) and y by the height \(32\)"):
        list(TapVidDataset(path))
