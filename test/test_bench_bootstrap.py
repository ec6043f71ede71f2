"""The bootstrapping cost benchmark (training/bench_bootstrap.py) runs every kind of step
and writes its figures; timings themselves are not asserted (no timed tests)."""

import json

import pytest

from small_model import SMALL
from training.bench_bootstrap import KINDS, main


def test_benchmark_runs_each_step_kind_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    model = json.dumps(SMALL.to_dict())
    assert main(["--model", model, "--batch-size", "1", "--frames", "3", "--points", "8", "--repeats", "2",
                 "--warmup", "0", "--threads", "1", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    for kind in KINDS:
        assert len(results["seconds"][kind]) == 2 and min(results["seconds"][kind]) > 0
        # Ratios are the medians over the supervised step's median, from the same run.
        assert results["ratio_to_supervised"][kind] == pytest.approx(
            results["median_s"][kind] / results["median_s"]["supervised"])
    assert results["settings"]["supervised_batch_in_bootstrap_step"] == 2
    assert results["model"]["resolution"] == [64, 64]
    printed = capsys.readouterr().out
    assert f"{results['ratio_to_supervised']['bootstrap']:.2f}x" in printed


def test_benchmark_refuses_a_checkpoint_and_an_architecture_together(tmp_path):
    with pytest.raises(SystemExit):
        main(["--model", "small", "--init", "x.pt", "--output", str(tmp_path / "b.json")])
