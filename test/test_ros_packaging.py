"""The ROS side of packaging: installed nodes, `colcon test`, and the launch file.

launch and launch_ros are not on PyPI: the launch file's logic is checked here with
stand-ins for their classes, and the real `ros2 launch` run only where ros2launch is
importable (a full ROS install, or a local checkout on PYTHONPATH).
"""

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "bootstap_ros"
LAUNCH_FILE = REPO / "launch" / "tracker.launch.py"


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def tail(result, lines=40):
    return "\n".join((result.stdout + "\n" + result.stderr).strip().splitlines()[-lines:])


def colcon(*args, base, timeout=300):
    executable = Path(sys.executable).parent / "colcon"
    if not executable.exists():
        pytest.fail(f"colcon not found at {executable}: run `make setup`")
    env = dict(os.environ, COLCON_HOME=str(base / "colcon_home"))
    return run([str(executable), "--log-base", str(base / "log"), *args], cwd=base, env=env,
               timeout=timeout)


def sourced(install: Path, *cmd, timeout=120, env=None):
    """Run `cmd` in a shell that sourced the workspace, as a user would."""
    return run(["bash", "-c", 'source "$1/setup.bash" && shift && exec "$@"', "bash", str(install),
                *map(str, cmd)], timeout=timeout, env=env)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("ws")
    result = colcon("build", "--base-paths", str(REPO), "--packages-select", PACKAGE,
                    "--build-base", str(base / "build"), "--install-base", str(base / "install"),
                    base=base)
    assert result.returncode == 0, f"colcon build failed:\n{tail(result)}"
    return base


def test_nodes_launch_file_and_parameters_are_installed(workspace):
    prefix = workspace / "install" / PACKAGE
    for script in ("tracker_node", "video_source"):
        path = prefix / "lib" / PACKAGE / script
        assert path.is_file() and os.access(path, os.X_OK), f"{script} not installed at {path}"
    assert (prefix / "share" / PACKAGE / "launch" / "tracker.launch.py").is_file()
    assert (prefix / "share" / PACKAGE / "config" / "tracker.yaml").is_file()


def test_installed_tracker_node_explains_a_missing_model(workspace, tmp_path):
    # What `ros2 run bootstap_ros tracker_node` executes.
    script = workspace / "install" / PACKAGE / "lib" / PACKAGE / "tracker_node"
    result = sourced(workspace / "install", script, "--ros-args", "-p",
                     f"checkpoint:={tmp_path / 'missing.pt'}")
    assert result.returncode == 1, tail(result)
    assert "cannot start: cannot load the model: checkpoint not found" in result.stderr
    assert "Set the checkpoint parameter" in result.stderr and "Traceback" not in result.stderr


def test_colcon_test_runs_the_package_tests(workspace):
    result = colcon("test", "--base-paths", str(REPO), "--packages-select", PACKAGE,
                    "--build-base", str(workspace / "build"),
                    "--install-base", str(workspace / "install"),
                    "--pytest-args", "test/test_ros_conversions.py", base=workspace)
    assert result.returncode == 0, f"colcon test failed:\n{tail(result)}"
    result = colcon("test-result", "--test-result-base", str(workspace / "build"), base=workspace)
    assert result.returncode == 0, f"colcon test-result reports failures:\n{tail(result)}"
    assert " 0 failures" in result.stdout and " 0 tests" not in result.stdout, result.stdout


# ------------------------------------------------------------------ the launch file's logic
class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


def load_launch_file(monkeypatch):
    """The launch module, with launch and launch_ros stood in for by recorders."""
    stubs = {
        "launch": types.SimpleNamespace(LaunchDescription=_Recorded),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=_Recorded,
                                                OpaqueFunction=_Recorded),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=_LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=_Recorded),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("tracker_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_arguments_and_nodes(monkeypatch):
    module = load_launch_file(monkeypatch)
    description = module.generate_launch_description()
    actions = description.args[0]
    arguments = {a.args[0] if a.args else a.kwargs["name"]: a.kwargs["default_value"]
                 for a in actions if "default_value" in a.kwargs}
    assert {"image_topic", "params_file", "checkpoint", "backend", "namespace", "video"} <= set(arguments)
    assert Path(arguments["params_file"]) == REPO / "config" / "tracker.yaml"
    make_nodes = actions[-1].kwargs["function"]

    defaults = dict(arguments)
    nodes = make_nodes(defaults)
    assert len(nodes) == 1
    tracker = nodes[0].kwargs
    assert tracker["executable"] == "tracker_node" and tracker["package"] == PACKAGE
    assert tracker["parameters"] == [arguments["params_file"]]  # empty arguments override nothing
    assert ("image", "image") in tracker["remappings"]

    given = dict(defaults, image_topic="/camera/image_raw", checkpoint="/m.pt", backend="torch",
                 namespace="robot", video="/clip.mp4", click_topic="/camera/image_raw_mouse_left")
    tracker, source = (node.kwargs for node in make_nodes(given))
    assert tracker["parameters"] == [arguments["params_file"], {"checkpoint": "/m.pt", "backend": "torch"}]
    assert ("image", "/camera/image_raw") in tracker["remappings"]
    assert ("image/compressed", "/camera/image_raw/compressed") in tracker["remappings"]
    assert ("~/add_point", "/camera/image_raw_mouse_left") in tracker["remappings"]
    assert tracker["namespace"] == source["namespace"] == "robot"
    assert source["executable"] == "video_source"
    assert source["parameters"][0]["source"] == "/clip.mp4" and source["parameters"][0]["loop"] is True
    assert source["remappings"] == [("image", "/camera/image_raw")]


# ------------------------------------------------------------------ the real `ros2 launch`
@pytest.mark.skipif(importlib.util.find_spec("ros2launch") is None
                    or importlib.util.find_spec("launch_ros") is None,
                    reason="ros2launch/launch_ros are not installed (not on PyPI; a full ROS 2 "
                           "install or a checkout on PYTHONPATH has them)")
def test_ros2_launch_runs_the_tracker_on_a_video(workspace, tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    from bootstap_ros.model import save_checkpoint
    from small_model import moving_clip, small_model

    save_checkpoint(tmp_path / "small.pt", small_model())
    np.save(tmp_path / "clip.npy", moving_clip(num_frames=10))
    namespace = "launch_" + uuid.uuid4().hex[:8]
    log = open(tmp_path / "launch.log", "w")
    ros2 = "from ros2cli.cli import main; import sys; sys.argv[0] = 'ros2'; sys.exit(main())"
    process = subprocess.Popen(
        ["bash", "-c", 'source "$1/setup.bash" && shift && exec "$@"', "bash",
         str(workspace / "install"), sys.executable, "-c", ros2, "launch", PACKAGE,
         "tracker.launch.py", f"namespace:={namespace}", f"video:={tmp_path / 'clip.npy'}",
         f"checkpoint:={tmp_path / 'small.pt'}", "image_topic:=camera/image", "rate:=20.0"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        # Background jobs may inherit an ignored SIGINT; launch must get it to stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_listener", context=context)
    received = threading.Event()
    node.create_subscription(PointCloud2, f"/{namespace}/tracks", lambda msg: received.set(), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 90
        while not received.is_set() and process.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert received.is_set(), (tmp_path / "launch.log").read_text()[-3000:]
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert text.count("process has finished cleanly") == 2, text[-3000:]
