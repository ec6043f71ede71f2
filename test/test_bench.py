"""bootstap-bench runs end to end on a tiny model (figures are printed, never asserted)."""

import json
import sys

import pytest

from bootstap_ros.bench import step as bench

TINY = ('{"backbone_channels": [16, 32, 32, 48], "backbone_blocks": [1, 1, 1, 1], "stem_channels": 16, '
        '"extra_conv_blocks": 1, "extra_conv_multiplier": 2, "mixer_hidden_dim": 32, "mixer_blocks": 2, '
        '"refinement_iters": 2, "resolution": [64, 64]}')


def test_bench_writes_json_plot_and_table(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    code = bench.main(["--random-weights", "--model-config", TINY, "--backends", "torch,onnxruntime",
                       "--points", "3,8", "--frames", "2", "--warmup", "1", "--block-size", "4",
                       "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out")])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (tmp_path / "out" / "latency.png").stat().st_size > 0
    runs = results["runs"]
    # Every configuration asked for ran (torch and onnxruntime are installed here): a row
    # with an error is a failure, not a row to skip.
    assert [r.get("error") for r in runs] == [None] * len(runs)
    assert {(r["backend"], r["points"]) for r in runs} == {
        (backend, points) for backend in ("torch-eager", "torch", "onnxruntime") for points in (3, 8)}
    for run in runs:
        assert run["p50_ms"] > 0 and run["fps"] > 0 and run["peak_rss_mb"] > 0 and run["first_frame_s"] > 0
        assert run["track_diff_max_px"] < 1e-3  # every fp32 backend reproduces the eager step
        assert run["visibility_agreement"] == 1.0
    assert "speed-up" in capsys.readouterr().out


def test_synthetic_clip_moves():
    clip = bench.synthetic_clip(3, size=32)
    assert clip.shape == (3, 32, 32, 3) and clip.dtype.name == "uint8"
    assert (clip[0] != clip[1]).any()


def test_refine_resolutions_run_on_the_same_frames_and_count_the_ladders_arithmetic(tmp_path):
    code = bench.main(["--random-weights", "--model-config", TINY, "--refine-resolutions", "64x64,128x128",
                       "--points", "4", "--frames", "2", "--warmup", "1", "--output", str(tmp_path / "out")])
    assert code == 0
    runs = {r["backend"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]}
    assert set(runs) == {"torch-eager", "torch", "torch@128x128"}
    one, ladder = runs["torch"], runs["torch@128x128"]
    assert one["refinement_resolutions"] == [[64, 64]]
    assert ladder["refinement_resolutions"] == [[64, 64], [128, 128]]
    assert one["input"] == ladder["input"] == [128, 128]  # every configuration gets the same frames
    # The ladder adds a backbone pass at 4x the pixels (convolutions dominate): 3x to 6x the one level.
    assert 3 < ladder["gflop_per_frame"] / one["gflop_per_frame"] < 6


def test_without_matplotlib_the_figures_are_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets where it is absent
    code = bench.main(["--random-weights", "--model-config", TINY, "--points", "2", "--frames", "1",
                       "--warmup", "0", "--block-size", "2", "--output", str(tmp_path / "out")])
    assert code == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert not (tmp_path / "out" / "latency.png").exists()
    assert "no plot (matplotlib is not installed" in capsys.readouterr().out


def test_bench_times_the_propagation_step_at_a_camera_size(tmp_path):
    code = bench.main(["--random-weights", "--model-config", TINY, "--points", "4", "--frames", "2",
                       "--warmup", "1", "--propagation", "96x64", "--output", str(tmp_path / "out")])
    assert code == 0
    rows = [r for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
            if r["backend"] == "propagation"]
    assert len(rows) == 1 and rows[0]["points"] == 4 and rows[0]["input"] == [64, 96] and rows[0]["p50_ms"] > 0
    assert bench.main(["--random-weights", "--model-config", TINY, "--propagation", "big",
                       "--output", str(tmp_path / "o2")]) == 2
