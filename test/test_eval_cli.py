"""bootstap-eval end to end with the Lucas-Kanade tracker on tiny datasets."""

import hashlib
import json
import os

import numpy as np
import pytest

from bootstap_ros.eval.cli import EvalConfig, format_table, main, parse_config
from bootstap_ros.eval.metrics import METRIC_NAMES
from helpers.eval_fixtures import translating_square, write_davis, write_robotap


@pytest.fixture
def square_dataset(tmp_path):
    """Two videos of a textured square in known motion; one is not square."""
    wide = translating_square(num_frames=8, height=96, width=128, size=40, start=(10, 12), step=(2, 1))
    wide["occluded"][0, :3] = True  # first visible late
    wide["occluded"][1, 4:6] = True  # hidden stretch
    entries = {
        "square_256": translating_square(num_frames=10, step=(3, 2)),
        "wide_96x128": wide,
    }
    return write_davis(tmp_path / "tapvid_davis.pkl", entries)


@pytest.mark.parametrize("query_mode", ["first", "strided"])
def test_lk_end_to_end_writes_results_predictions_and_report(tmp_path, square_dataset, query_mode, capsys):
    pytest.importorskip("matplotlib")
    results_path = tmp_path / "out" / "results.json"
    preds_path = tmp_path / "out" / "preds.npz"
    report_dir = tmp_path / "report"
    code = main([
        square_dataset, "--tracker", "lk", "--output", str(results_path), "--query-mode", query_mode,
        "--save-predictions", str(preds_path), "--report", str(report_dir),
    ])
    assert code == 0

    results = json.loads(results_path.read_text())
    for name in METRIC_NAMES:
        assert 0.0 <= results[name] <= 1.0, name
    # Known motion on a clean texture: LK must be nearly perfect, apart from
    # the occlusions it cannot know about.
    assert results["average_jaccard"] > 0.6
    assert results["pts_within_4"] > 0.9
    assert set(results["per_video"]) == {"square_256", "wide_96x128"}
    assert results["per_video"]["square_256"]["average_jaccard"] > 0.8
    config = results["config"]
    assert config["tracker"] == "lk" and config["query_mode"] == query_mode
    assert config["format"] == "davis" and config["resolution"] == 256
    assert config["checkpoint"] is None and config["checkpoint_sha256"] is None
    assert config["dataset"] == os.path.abspath(square_dataset)
    assert set(config["versions"]) >= {"bootstap_ros", "numpy", "torch", "opencv"}
    assert config["date"]

    with np.load(preds_path) as preds:
        queries = preds["wide_96x128/query_points"]
        tracks = preds["wide_96x128/tracks"]
        assert queries.shape[1] == 3 and tracks.shape == (len(queries), 8, 2)
        assert preds["wide_96x128/occluded"].shape == (len(queries), 8)
        assert preds["wide_96x128/gt_tracks"].shape == tracks.shape
        assert preds["wide_96x128/gt_occluded"].dtype == bool
        if query_mode == "first":
            # The late-visible track is queried at its first visible frame.
            assert queries[0, 0] == 3
        else:
            assert set(np.unique(queries[:, 0])) <= {0, 5}

    written = sorted(os.listdir(report_dir))
    assert {"per_video.csv", "per_video_aj.png", "thresholds.png"} <= set(written)
    assert len([f for f in written if f.startswith("worst_")]) == 2
    assert (report_dir / "per_video.csv").read_text().count("\n") == 3

    table = capsys.readouterr().out
    assert "AJ" in table and "<delta_avg" in table and f"davis ({query_mode}, clock-free)" in table  # says which scores these are
    assert f"{100 * results['average_jaccard']:.1f}" in table


def test_max_videos_and_robotap_folder(tmp_path):
    folder = write_robotap(tmp_path / "robotap", [
        {"a": translating_square(num_frames=6)},
        {"b": translating_square(num_frames=6, seed=1)},
    ])
    out = tmp_path / "results.json"
    assert main([folder, "--tracker", "lk", "--output", str(out), "--max-videos", "1"]) == 0
    results = json.loads(out.read_text())
    assert list(results["per_video"]) == ["a"] and results["num_videos"] == 1
    assert results["config"]["format"] == "robotap"
    assert len(results["config"]["dataset_files"]) == 2


def test_checkpoint_hash_is_recorded(tmp_path, square_dataset):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    out = tmp_path / "results.json"
    main([square_dataset, "--tracker", "lk", "--checkpoint", str(checkpoint), "--output", str(out),
          "--max-videos", "1"])
    config = json.loads(out.read_text())["config"]
    assert config["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert config["checkpoint"] == str(checkpoint)


def test_corrupt_dataset_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "broken.pkl"
    path.write_bytes(b"\x80\x04\x95 truncated")
    code = main([str(path), "--tracker", "lk", "--output", str(tmp_path / "r.json")])
    assert code == 2  # the input the user gave is wrong
    error = capsys.readouterr().err
    assert "broken.pkl" in error and "cannot be unpickled" in error
    assert not (tmp_path / "r.json").exists()


def test_bootstapir_defaults_to_the_embedded_model(tmp_path):
    assert parse_config(["data.pkl", "--output", str(tmp_path / "r.json")]).checkpoint is None


def test_config_defaults_and_flags():
    config = parse_config(["d.pkl", "--output", "r.json", "--tracker", "lk", "--no-causal",
                           "--mode", "offline", "--query-mode", "strided", "--device", "cpu"])
    assert config == EvalConfig(dataset="d.pkl", output="r.json", tracker="lk", causal=False,
                                mode="offline", query_mode="strided", device="cpu")
    assert parse_config(["d.pkl", "--output", "r.json", "--tracker", "lk"]).causal is None


def test_table_layout():
    mean = {name: 0.5 for name in METRIC_NAMES}
    mean.update(average_jaccard=0.6912, average_pts_within_thresh=0.8, occlusion_accuracy=0.88888)
    lines = format_table(mean, "robotap (first)").splitlines()
    assert lines[0].split() == ["Dataset", "(query", "mode)", "AJ", "<delta_avg", "OA"]
    assert lines[1].split() == ["robotap", "(first)", "69.1", "80.0", "88.9"]


def test_video_without_visible_points_is_skipped_and_listed(tmp_path):
    hidden = translating_square(num_frames=6)
    hidden["occluded"][:] = True
    path = write_davis(tmp_path / "d.pkl", {"hidden": hidden, "fine": translating_square(num_frames=6)})
    out = tmp_path / "results.json"
    assert main([path, "--tracker", "lk", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["skipped_videos"] == ["hidden"]
    assert list(results["per_video"]) == ["fine"] and results["num_videos"] == 1


def test_frame_stride_keeps_every_kth_frame_and_requeries_on_them():
    from bootstap_ros.eval.cli import keep_every_kth_frame
    from bootstap_ros.eval.datasets import EvalSample

    num_frames = 7
    occluded = np.array([[True, False, False, False, False, False, False],   # first visible on frame 1
                         [False, False, True, True, True, False, True],     # visible on 0, 5
                         [True, True, True, True, True, True, False]])      # visible on 6 only
    points = np.stack(np.meshgrid(np.arange(num_frames), np.arange(3)), -1)[..., ::-1].astype(np.float64)
    points = points * [10.0, 1.0] + [0.5, 0.5]  # x = 10 * track + 0.5, y = t + 0.5
    video = np.arange(num_frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    from bootstap_ros.eval.datasets import sample_queries

    # The kept frames 0, 3, 6 become frames 0, 1, 2, and the queries are sampled on them by the
    # dataset's rule. first: track 0 is first seen on frame 1 (was 3), track 1 on 0, track 2 on 2
    # (was 6). strided (every 5th kept frame: frame 0 only): track 1 alone is visible there.
    expected = {"first": ([0, 1, 2], [[1, 3.5, 0.5], [0, 0.5, 10.5], [2, 6.5, 20.5]]),
                "strided": ([1], [[0, 0.5, 10.5]])}
    for mode, (expected_ids, expected_queries) in expected.items():
        query_points, target, occ, ids = sample_queries(occluded, points, mode)
        sample = EvalSample("v", video, query_points, target, occ, ids, "x.pkl", (4, 4))
        kept = keep_every_kth_frame(sample, 3, mode)
        assert kept.video[:, 0, 0, 0].tolist() == [0, 3, 6]
        assert kept.track_ids.tolist() == expected_ids
        assert kept.occluded.tolist() == [occluded[i, ::3].tolist() for i in expected_ids]
        np.testing.assert_array_equal(kept.target_points, points[expected_ids][:, ::3])
        np.testing.assert_array_equal(kept.query_points, expected_queries)


def test_frame_stride_on_the_command_line(tmp_path, square_dataset):
    results_path = tmp_path / "results.json"
    assert main([square_dataset, "--tracker", "lk", "--output", str(results_path), "--frame-stride", "3"]) == 0
    results = json.loads(results_path.read_text())
    assert results["config"]["frame_stride"] == 3
    assert {v["num_frames"] for v in results["per_video"].values()} == {4, 3}  # 10 and 8 frames
    with pytest.raises(SystemExit):
        parse_config([square_dataset, "--output", "x.json", "--frame-stride", "0"])


def test_pixel_points_are_refused_before_the_progress_bar_with_the_fix(tmp_path, capsys):
    entry = translating_square(num_frames=6, height=64, width=96, size=30, start=(10, 10), step=(2, 1))
    entry["points"] = entry["points"] * np.array([96, 64], np.float32)
    path = write_davis(tmp_path / "pixels.pkl", {"pixels": entry})
    assert main([str(path), "--tracker", "lk", "--output", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err
    assert "look like pixels" in error and "divide x by the width (96)" in error
    assert "video/s" not in error and "0video" not in error  # no empty progress bar first
    assert not (tmp_path / "r.json").exists()


def test_output_paths_are_checked_before_evaluating(tmp_path, square_dataset, capsys):
    (tmp_path / "a_file").write_text("")
    assert main([square_dataset, "--tracker", "lk", "--output", str(tmp_path / "a_file" / "r.json")]) == 2
    error = capsys.readouterr().err
    assert "a_file is a file, not a folder" in error and "video/s" not in error
    assert main([square_dataset, "--tracker", "lk", "--output", str(tmp_path / "r.json"),
                 "--save-predictions", str(tmp_path / "a_file" / "p.npz")]) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err
    assert main([square_dataset, "--tracker", "lk", "--output", str(tmp_path / "new" / "r.json")]) == 0
    assert (tmp_path / "new" / "r.json").is_file()


def test_exit_code_1_for_a_failure_while_running(tmp_path, square_dataset, capsys, monkeypatch):
    import bootstap_ros.eval.cli as cli

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(cli, "predict_tracks", failing)
    assert main([square_dataset, "--tracker", "lk", "--output", str(tmp_path / "r.json")]) == 1
    assert "bootstap-eval: error: CUDA out of memory" in capsys.readouterr().err


def test_realtime_lk_replays_each_video_as_a_camera_and_says_so(tmp_path, square_dataset, capsys):
    results_path = tmp_path / "rt.json"
    clock_free_path = tmp_path / "free.json"
    assert main([square_dataset, "--tracker", "lk", "--output", str(clock_free_path), "--max-points", "1"]) == 0
    assert main([square_dataset, "--tracker", "lk", "--output", str(results_path), "--realtime", "200",
                 "--max-points", "1"]) == 0
    results = json.loads(results_path.read_text())
    free = json.loads(clock_free_path.read_text())
    assert results["clock"] == "real time, 200 FPS" and free["clock"] == "clock-free"
    for video in results["per_video"].values():
        assert video["num_queries"] == 1 and video["system"] == "lk"
        assert 0 < video["frames_answered"] <= 1 and video["latency_p50_ms"] >= 0
    # LK answers within a frame: the answers at their own frames are the clock-free tracks.
    assert results["matched_average_jaccard"] == pytest.approx(free["average_jaccard"])
    assert "real time, 200 FPS" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--realtime", "0"], ["--realtime", "30", "--query-mode", "strided"],
                                   ["--realtime", "30", "--mode", "offline"], ["--max-points", "0"]])
def test_realtime_arguments_are_checked(tmp_path, square_dataset, flags):
    with pytest.raises(SystemExit) as raised:
        parse_config([square_dataset, "--output", str(tmp_path / "r.json"), *flags])
    assert raised.value.code == 2
