"""bootstap-bench's exit codes: 2 for bad arguments or input, 1 for a failure while running."""

import json

import pytest

from bootstap_ros.bench import step as bench

TINY = ('{"backbone_channels": [16, 32, 32, 48], "backbone_blocks": [1, 1, 1, 1], "stem_channels": 16, '
        '"extra_conv_blocks": 1, "extra_conv_multiplier": 2, "mixer_hidden_dim": 32, "mixer_blocks": 2, '
        '"refinement_iters": 2, "resolution": [64, 64]}')


def _run(tmp_path, *args):
    return bench.main(list(args) + ["--output", str(tmp_path / "out")])


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "x.pt", "--model-config", TINY], "--model-config goes with --random-weights"),
    (["--random-weights", "--model-config", "{not json"], "--model-config is not JSON"),
    (["--random-weights", "--model-config", '{"no_such_field": 1}'], "no_such_field"),
    (["--random-weights", "--backends", "torch,jax"], "--backends: unknown jax; choose from auto, torch"),
    (["--random-weights", "--precisions", "int4"], "--precisions: unknown int4"),
    (["--random-weights", "--devices", "tpu"], "--devices: unknown tpu"),
    (["--random-weights", "--points", "8,many"], "--points takes whole numbers"),
    (["--random-weights", "--points", "0"], "--points takes numbers of at least 1"),
    (["--random-weights", "--frames", "0"], "--frames must be at least 1"),
])
def test_bad_arguments_exit_with_2_and_say_what_to_fix(tmp_path, capsys, args, message):
    assert _run(tmp_path, *args) == 2
    error = capsys.readouterr().err
    assert error.startswith("bootstap-bench: error: ") and message in error
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_missing_checkpoint_exits_with_2(tmp_path, capsys):
    assert _run(tmp_path, "--checkpoint", str(tmp_path / "missing.pt"), "--points", "2") == 2
    assert "missing.pt" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_exits_with_2(tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert _run(tmp_path, "--random-weights", "--model-config", TINY, "--points", "2") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_failure_while_running_exits_with_1(tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(bench, "run_benchmark", out_of_memory)
    assert _run(tmp_path, "--random-weights", "--model-config", TINY, "--points", "2") == 1
    assert "not enough memory" in capsys.readouterr().err


def test_openvino_rows_run_beside_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    code = _run(tmp_path, "--random-weights", "--model-config", TINY, "--backends", "torch,openvino",
                "--precisions", "fp32,bf16", "--points", "3", "--frames", "2", "--warmup", "1", "--block-size", "4",
                "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [r.get("error") for r in runs] == [None] * len(runs)
    rows = {(r["backend"], r["precision"]): r for r in runs}
    assert set(rows) == {("torch-eager", "fp32"), ("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"),
                         ("openvino", "bf16")}
    assert rows["openvino", "fp32"]["track_diff_max_px"] < 1e-3
