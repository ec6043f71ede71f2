"""The bootstrapping cost benchmark (training/bench/bootstrap.py) runs every kind of step
and writes its figures; timings themselves are not asserted (no timed tests)."""

import json

import pytest

from helpers.small_model import SMALL
from bootstap_ros_training.bench.bootstrap import KINDS, main


def test_benchmark_runs_each_step_kind_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    model = json.dumps(SMALL.to_dict())
    assert main(["--model", model, "--repeats", "2", "--warmup", "0", "--threads", "1", "--profile",
                 "--output", str(out), "teacher=fixed", "clip_frames=3", "num_points=8",
                 "supervised_points=8", "supervised_frames=3"]) == 0
    results = json.loads(out.read_text())
    for kind in KINDS:
        assert len(results["seconds"][kind]) == 2 and min(results["seconds"][kind]) > 0
        # Ratios are the medians over the previous defaults' step, from the same run.
        assert results["ratio_to_previous"][kind] == pytest.approx(
            results["median_s"][kind] / results["median_s"]["previous"])
    assert results["configs"]["previous"]["teacher"] == "ema"
    assert results["configs"]["previous"]["supervised_batch_size"] == 4
    default = results["configs"]["default"]
    assert default["teacher"] == "fixed" and default["clip_frames"] == 3 and default["batch_size"] == 1
    assert results["model"]["resolution"] == [64, 64]
    assert {"backbone forward + backward", "optimiser step"} <= set(results["profile_s"])
    printed = capsys.readouterr().out
    assert f"{results['ratio_to_previous']['default']:.2f}x" in printed


def test_benchmark_refuses_a_checkpoint_and_an_architecture_together(tmp_path):
    with pytest.raises(SystemExit):
        main(["--model", "small", "--init", "x.pt", "--output", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "b.json"), "no_such_setting=1"])
