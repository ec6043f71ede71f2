"""Clean shutdown of the nodes under real signals, as `ros2 launch` and a terminal send them.

A launcher process (a session and process-group leader, like `ros2 launch`) starts
tracker_node and video_source as real subprocesses in its group; once `tracks`
flow, the whole group gets SIGINT (Ctrl-C in a terminal), SIGINT twice (the
terminal's and launch's own), or SIGTERM. Every node must exit with status 0,
without `terminate called` (an abort from C++ code still running at exit) and
without a traceback. The tracker runs the embedded model, so its worker is in the
middle of a real network step whenever the signal comes.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import PointCloud2

from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
from helpers.small_model import moving_clip

# Each child program starts with Python's usual SIGINT and SIGTERM handling, as under a
# terminal or ros2 launch, also where the tests run in a background job (whose SIGINT the
# shell ignores, and an ignored signal stays ignored across exec).
USUAL_SIGNALS = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n")
STARTUP_TIMEOUT = 120.0  # importing torch and loading the model on a loaded 2-core machine
EXIT_TIMEOUT = 60.0

# Runs the two nodes in its own process group and reports how they ended. Its own
# handlers only keep it alive to collect them (a handler, unlike SIG_IGN, is not
# inherited by the children).
LAUNCHER = textwrap.dedent("""
    import json, signal, subprocess, sys
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    out, namespace, clip = sys.argv[1:4]
    common = ["--ros-args", "-r", "__ns:=" + namespace]
    commands = {
        "tracker_node": [sys.executable, "-m", "bootstap_ros.ros.tracker_node", *common,
                         "-p", "grid_points:=4"],
        "video_source": [sys.executable, "-m", "bootstap_ros.ros.video_source", *common,
                         "-p", "source:=" + clip, "-p", "loop:=true", "-p", "rate:=30.0"],
    }
    processes = {name: subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=open(out + "/" + name + ".out", "w"),
                                        stderr=open(out + "/" + name + ".err", "w"))
                 for name, command in commands.items()}
    codes = {name: process.wait() for name, process in processes.items()}
    with open(out + "/codes.json", "w") as f:
        json.dump(codes, f)
""")

# (signals, seconds between them): the second signal right after the first, or while
# the first one's clean-up waits for the worker to finish its frame.
SCENARIOS = {
    "sigint": ([signal.SIGINT], 0.0),
    "sigint_twice_at_once": ([signal.SIGINT, signal.SIGINT], 0.05),
    "sigint_twice_during_cleanup": ([signal.SIGINT, signal.SIGINT], 0.4),
    "sigint_then_sigterm": ([signal.SIGINT, signal.SIGTERM], 0.2),
    "sigterm": ([signal.SIGTERM], 0.0),
}


@pytest.fixture(scope="module")
def listener():
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("shutdown_listener", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def run_and_signal(listener, folder, signals, gap):
    """Start both nodes, wait for tracks, signal the group; the nodes' exit codes and stderr."""
    node, executor = listener
    namespace = "/shutdown_" + uuid.uuid4().hex[:8]
    clip = folder / "clip.npy"
    np.save(clip, moving_clip(num_frames=30, height=120, width=160))
    tracks = threading.Event()
    subscription = node.create_subscription(PointCloud2, namespace + "/tracks",
                                            lambda msg: tracks.set(), 10)
    launcher = subprocess.Popen([sys.executable, "-c", USUAL_SIGNALS + LAUNCHER, str(folder), namespace, str(clip)],
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not tracks.is_set():
            assert launcher.poll() is None, "the launcher ended before tracks came"
            assert time.monotonic() < deadline, f"no tracks within {STARTUP_TIMEOUT:.0f} s"
            executor.spin_once(timeout_sec=0.1)
        for index, signum in enumerate(signals):
            if index:
                time.sleep(gap)  # a second signal while the first one's clean-up runs
            os.killpg(launcher.pid, signum)
        launcher.wait(timeout=EXIT_TIMEOUT)
    finally:
        node.destroy_subscription(subscription)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
    codes = json.loads((folder / "codes.json").read_text())
    errors = {name: (folder / f"{name}.err").read_text() for name in codes}
    return codes, errors


@pytest.mark.skipif(not EMBEDDED_CHECKPOINT.is_file(),
                    reason=f"the embedded default model ({EMBEDDED_CHECKPOINT}) is not shipped")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_signals_to_the_process_group_end_every_node_cleanly(listener, tmp_path, scenario):
    signals, gap = SCENARIOS[scenario]
    codes, errors = run_and_signal(listener, tmp_path, signals, gap)
    for name, code in codes.items():
        assert code == 0, f"{name} exited with {code} after {scenario}:\n{errors[name][-3000:]}"
        assert "terminate called" not in errors[name], errors[name][-3000:]
        assert "Traceback" not in errors[name], errors[name][-3000:]


# A node whose worker is inside a long torch computation that does not end (as a frame
# that takes minutes: a first TensorRT engine build, a huge resolution on a CPU).
BUSY_NODE = textwrap.dedent("""
    import sys, threading
    import torch
    from rclpy.node import Node
    from bootstap_ros.ros.entry import run_node

    class BusyNode(Node):
        def __init__(self):
            super().__init__("busy_node")
            self.worker = threading.Thread(target=self.work, daemon=True)
            self.worker.start()

        def work(self):
            a = torch.randn(1000, 1000)
            print("working", flush=True)
            while True:
                a = torch.tanh(a @ a)

        @property
        def worker_alive(self):
            return self.worker.is_alive()

        def destroy_node(self):
            self.worker.join(timeout=1.0)  # TrackerNode waits longer; the test need not
            super().destroy_node()

    sys.exit(run_node("busy_node", BusyNode, ()))
""")


def test_a_worker_that_does_not_stop_in_time_gives_status_1_not_an_abort():
    process = subprocess.Popen([sys.executable, "-c", USUAL_SIGNALS + BUSY_NODE], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "working"  # blocks until the worker runs
        os.killpg(process.pid, signal.SIGINT)
        _, errors = process.communicate(timeout=EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 1, errors[-3000:]
    assert "did not finish its frame in time" in errors and "terminate called" not in errors


# ------------------------------------------------------------------ signals while starting
# A node module whose import is slow (torch and the model code take seconds on a busy machine).
SLOW_MODULE = textwrap.dedent("""
    import time
    print("importing", flush=True)
    time.sleep(60)

    def main():
        return 3
""")
STARTER = "import sys; from bootstap_ros.ros.entry import _start; sys.exit(_start('slow_node'))"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_node_module_imports_ends_it_at_once_with_status_0(tmp_path, signum):
    (tmp_path / "slow_node.py").write_text(SLOW_MODULE)
    process = subprocess.Popen([sys.executable, "-c", USUAL_SIGNALS + STARTER], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}"
                                        f"{os.environ.get('PYTHONPATH', '')}"),
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "importing"  # blocks until it imports
        os.kill(process.pid, signum)
        _, errors = process.communicate(timeout=EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 0, errors[-3000:]
    assert "Traceback" not in errors, errors[-3000:]


# A node that takes a while to construct (a model loading), then creates its ROS parts.
LOADING_NODE = textwrap.dedent("""
    import sys, time
    from rclpy.node import Node
    from std_msgs.msg import String
    from bootstap_ros.ros.entry import run_node

    def make_node():
        print("loading", flush=True)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # Python code, as model loading mostly is
            sum(range(10000))
        node = Node("loading_node")
        node.create_subscription(String, "text", print, 10)
        return node

    sys.exit(run_node("loading_node", make_node, ()))
""")


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGINT, signal.SIGINT],
                                     [signal.SIGTERM], [signal.SIGINT, signal.SIGTERM]])
def test_signals_while_the_node_is_created_end_it_cleanly(signals):
    process = subprocess.Popen([sys.executable, "-c", USUAL_SIGNALS + LOADING_NODE], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "loading"
        for signum in signals:  # back to back, as a terminal's Ctrl-C and launch's SIGINT come
            os.kill(process.pid, signum)
        _, errors = process.communicate(timeout=EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 0, errors[-3000:]
    assert "Traceback" not in errors, errors[-3000:]
