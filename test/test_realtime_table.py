"""The commands of the real-time table (tools/realtime_table.py), read back by bootstap-eval's
own parser: every model job runs the model asked for, Lucas-Kanade jobs run Lucas-Kanade."""

import argparse

import pytest

from bootstap_ros.eval.cli import parse_config
from helpers.tools import load_tool


@pytest.fixture(scope="module")
def table():
    return load_tool("realtime_table")


@pytest.mark.parametrize("checkpoint", [None, "runs/other/model.pt"])
def test_each_job_runs_the_tracker_and_model_it_names(table, tmp_path, checkpoint):
    args = argparse.Namespace(python="python", points=64, precision="fp32", backend="torch", fps=30.0,
                              checkpoint=checkpoint)
    dataset = tmp_path / "robot_test.pkl"
    dataset.write_bytes(b"")
    for name, flags in table.RUNS:
        command = table.eval_command(args, dataset, name, flags, tmp_path / f"{name}.json")
        assert command[1:3] == ["-m", "bootstap_ros.eval.cli"]
        config = parse_config([str(part) for part in command[3:]])
        if name.startswith("lk_"):
            assert config.tracker == "lk", name
        else:
            assert config.tracker != "lk", name
            assert config.checkpoint == checkpoint, name
        assert (config.realtime is not None) == name.endswith("_rt"), name
