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

from bootstap_ros.bench.processes import stop_process_groups
from helpers.launch_file import launch_nodes, load_launch_file

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "bootstap_ros"


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
    for script in ("tracker_node", "video_source", "bootstap_adapter"):
        path = prefix / "lib" / PACKAGE / script
        assert path.is_file() and os.access(path, os.X_OK), f"{script} not installed at {path}"
    assert (prefix / "share" / PACKAGE / "launch" / "tracker.launch.py").is_file()
    assert (prefix / "share" / PACKAGE / "config" / "tracker.yaml").is_file()
    assert (prefix / "share" / PACKAGE / "config" / "adapter.yaml").is_file()


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
    actions = make_nodes(defaults)
    nodes = [a for a in actions if "executable" in a.kwargs]
    assert len(nodes) == 1
    tracker = nodes[0].kwargs
    assert tracker["executable"] == "tracker_node" and tracker["package"] == PACKAGE
    assert tracker["parameters"] == [arguments["params_file"]]  # empty arguments override nothing
    assert ("image", "image") in tracker["remappings"]

    given = dict(defaults, image_topic="/camera/image_raw", checkpoint="/m.pt", backend="torch",
                 namespace="robot", video="/clip.mp4", click_topic="/camera/image_raw_mouse_left")
    tracker, source = (a.kwargs for a in make_nodes(given) if "executable" in a.kwargs)
    # With video:= and no grid_points, a default grid: the video alone shows tracks.
    assert tracker["parameters"] == [arguments["params_file"], {
        "checkpoint": "/m.pt", "backend": "torch", "grid_points": module.VIDEO_GRID_POINTS}]
    assert ("image", "/camera/image_raw") in tracker["remappings"]
    assert ("image/compressed", "/camera/image_raw/compressed") in tracker["remappings"]
    assert ("~/add_point", "/camera/image_raw_mouse_left") in tracker["remappings"]
    assert tracker["namespace"] == source["namespace"] == "robot"
    assert source["executable"] == "video_source"
    assert source["parameters"][0]["source"] == "/clip.mp4" and source["parameters"][0]["loop"] is True
    assert source["remappings"] == [("image", "/camera/image_raw")]


def test_launch_arguments_reach_the_nodes_only_when_given(monkeypatch):
    module = load_launch_file(monkeypatch)
    nodes, _ = launch_nodes(module)
    assert nodes["tracker_node"]["parameters"][1:] == [] and nodes["tracker_node"]["arguments"] == []

    nodes, _ = launch_nodes(module, video="/clip.mp4", grid_points="4", device="cpu",
                            precision="bf16", resolution="192", max_points="64",
                            use_sim_time="true", log_level="WARN")
    tracker, source = nodes["tracker_node"], nodes["video_source"]
    assert tracker["parameters"][1] == {"grid_points": 4, "device": "cpu", "precision": "bf16",
                                        "resolution": 192, "max_points": 64, "use_sim_time": True}
    assert source["parameters"][0]["use_sim_time"] is True
    assert tracker["arguments"] == source["arguments"] == ["--ros-args", "--log-level", "warn"]
    nodes, _ = launch_nodes(module, grid_points="[10.0, 20.5, 30, 40]")
    assert nodes["tracker_node"]["parameters"][1] == {"grid_points": [10.0, 20.5, 30, 40]}
    nodes, _ = launch_nodes(module, video="/clip.mp4", grid_points="0")  # explicitly none
    assert nodes["tracker_node"]["parameters"][1] == {"grid_points": 0}
    nodes, _ = launch_nodes(module, checkpoint="/models/run: 2.pt", device="cuda:1")
    strings = nodes["tracker_node"]["parameters"][1]
    assert strings == {"checkpoint": "/models/run: 2.pt", "device": "cuda:1"}
    # Strings reach the node as strings: launch_ros would read a bare one as YAML.
    assert all(value.value_type is str for value in strings.values())
    nodes, _ = launch_nodes(module, propagation="none")
    assert nodes["tracker_node"]["parameters"][1] == {"propagation": "none"}
    assert nodes["tracker_node"]["parameters"][1]["propagation"].value_type is str

    for name, bad in (("grid_points", "eight"), ("max_points", "1.5"), ("use_sim_time", "yes please"),
                      ("log_level", "loud")):
        with pytest.raises(ValueError, match=f"launch argument {name}:="):
            launch_nodes(module, **{name: bad})


def test_a_node_that_exits_stops_the_launch_and_a_failure_is_an_error(monkeypatch):
    module = load_launch_file(monkeypatch)
    nodes, handlers = launch_nodes(module, video="/missing.mp4")
    watched = [h.args[0].kwargs for h in handlers]
    assert len(watched) == 2  # both nodes
    on_exit = watched[0]["on_exit"]
    assert {h["target_action"].kwargs["executable"] for h in watched} == set(nodes)

    def exited(returncode, shutting_down=False):
        event = types.SimpleNamespace(action=types.SimpleNamespace(name="video_source-2"),
                                      returncode=returncode)
        return on_exit(event, types.SimpleNamespace(is_shutdown=shutting_down))

    # A failure raises: launch logs it, shuts down and `ros2 launch` exits with 1.
    with pytest.raises(RuntimeError, match="video_source-2 exited with code 1"):
        exited(1)
    for actions in (exited(0), exited(-2, shutting_down=True)):  # the end of a video; Ctrl-C
        assert [type(a.kwargs["event"]).__name__ for a in actions] == ["_Recorded"]
        assert "reason" in actions[0].kwargs["event"].kwargs


def test_adapt_starts_the_adapter_beside_the_tracker_and_its_exit_stops_nothing(monkeypatch):
    module = load_launch_file(monkeypatch)
    nodes, _ = launch_nodes(module)
    assert "bootstap_adapter" not in nodes  # off by default
    nodes, handlers = launch_nodes(module, adapt="true", image_topic="/camera/image_raw", namespace="robot",
                                   video="/clip.mp4", adapter_store="/data/adapter", use_sim_time="true")
    adapter = nodes["bootstap_adapter"]
    assert adapter["package"] == PACKAGE and adapter["name"] == "bootstap_adapter"
    assert adapter["namespace"] == nodes["tracker_node"]["namespace"] == "robot"
    assert Path(adapter["parameters"][0]) == REPO / "config" / "adapter.yaml"
    assert adapter["parameters"][1] == {"store": "/data/adapter", "use_sim_time": True}
    # The tracker's image topic, raw or compressed.
    assert ("image", "/camera/image_raw") in adapter["remappings"]
    assert ("image/compressed", "/camera/image_raw/compressed") in adapter["remappings"]
    # The tracker and the video stop the launch when they exit; the adapter does not.
    watched = {h.args[0].kwargs["target_action"].kwargs["executable"] for h in handlers}
    assert watched == {"tracker_node", "video_source"}
    nodes, _ = launch_nodes(module, adapt="false")
    assert "bootstap_adapter" not in nodes
    with pytest.raises(ValueError, match="launch argument adapt:="):
        launch_nodes(module, adapt="sometimes")

# ------------------------------------------------------------------ the real `ros2 launch`
needs_ros2_launch = pytest.mark.skipif(
    importlib.util.find_spec("ros2launch") is None or importlib.util.find_spec("launch_ros") is None,
    reason="ros2launch/launch_ros are not installed (not on PyPI; a full ROS 2 install or a "
           "checkout on PYTHONPATH has them)")
ROS2 = "from ros2cli.cli import main; import sys; sys.argv[0] = 'ros2'; sys.exit(main())"


@needs_ros2_launch
def test_ros2_launch_runs_the_tracker_on_a_video(workspace, tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    from bootstap_ros.model import save_checkpoint
    from helpers.small_model import moving_clip, small_model

    save_checkpoint(tmp_path / "small.pt", small_model())
    np.save(tmp_path / "clip.npy", moving_clip(num_frames=10))
    namespace = "launch_" + uuid.uuid4().hex[:8]
    log = open(tmp_path / "launch.log", "w")
    process = subprocess.Popen(
        ["bash", "-c", 'source "$1/setup.bash" && shift && exec "$@"', "bash",
         str(workspace / "install"), sys.executable, "-c", ROS2, "launch", PACKAGE,
         "tracker.launch.py", f"namespace:={namespace}", f"video:={tmp_path / 'clip.npy'}",
         f"checkpoint:={tmp_path / 'small.pt'}", "image_topic:=camera/image", "rate:=20.0",
         "grid_points:=4"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        # Background jobs may inherit an ignored SIGINT; launch must get it to stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_listener", context=context)
    received = threading.Event()
    sizes = []

    def on_tracks(msg):
        sizes.append(msg.width)
        received.set()

    node.create_subscription(PointCloud2, f"/{namespace}/tracks", on_tracks, 10)
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
        stop_process_groups([process])
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert text.count("process has finished cleanly") == 2, text[-3000:]
    assert set(sizes) == {16}  # grid_points:=4 on the launch line: a 4x4 grid


def ros2(workspace, *arguments, **kwargs):
    """`ros2 ARGUMENTS...` in a shell that sourced the workspace, started (not waited for)."""
    return subprocess.Popen(
        ["bash", "-c", 'source "$1/setup.bash" && shift && exec "$@"', "bash",
         str(workspace / "install"), sys.executable, "-c", ROS2, *map(str, arguments)],
        stdin=subprocess.DEVNULL, **kwargs)


@needs_ros2_launch
@pytest.mark.skipif(importlib.util.find_spec("ros2param") is None,
                    reason="ros2param (the `ros2 param` verb) is not installed")
def test_ros2_param_set_swaps_the_model_under_ros2_launch(workspace, tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    from bootstap_ros.model import save_checkpoint
    from bootstap_ros.ros.conversions import cloud_to_array
    from helpers.small_model import moving_clip, small_model

    save_checkpoint(tmp_path / "small.pt", small_model())
    save_checkpoint(tmp_path / "other.pt", small_model(seed=1))
    np.save(tmp_path / "clip.npy", moving_clip(num_frames=10))
    namespace = "swap_" + uuid.uuid4().hex[:8]
    log = open(tmp_path / "launch.log", "w")
    process = ros2(workspace, "launch", PACKAGE, "tracker.launch.py", f"namespace:={namespace}",
                   f"video:={tmp_path / 'clip.npy'}", f"checkpoint:={tmp_path / 'small.pt'}",
                   "image_topic:=camera/image", "rate:=20.0", "grid_points:=4",
                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("swap_listener", context=context)
    ids = []
    node.create_subscription(PointCloud2, f"/{namespace}/tracks",
                             lambda msg: ids.append(cloud_to_array(msg)["id"].tolist()), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_until(condition, what, timeout=90):
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, f"the launch ended while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            executor.spin_once(timeout_sec=0.1)

    def param(verb, *value):
        """`ros2 param set|get` of the checkpoint, as a user types it: (status, output)."""
        cli = ros2(workspace, "param", verb, "--no-daemon", "--timeout", "30",
                   f"/{namespace}/tracker_node", "checkpoint", *value,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        spin_until(lambda: cli.poll() is not None, f"ros2 param {verb}")  # tracks keep arriving
        return cli.returncode, cli.stdout.read()

    def logged(text):
        return text in (tmp_path / "launch.log").read_text()

    try:
        spin_until(lambda: len(ids) > 0, "the first tracks")
        status, output = param("set", tmp_path / "other.pt")
        assert status == 0 and "Set parameter successful" in output, output
        spin_until(lambda: logged(f"now tracking with the project checkpoint {tmp_path / 'other.pt'}"),
                   "the swap")
        swapped = len(ids)
        spin_until(lambda: len(ids) >= swapped + 10, "tracks after the swap")
        status, output = param("set", tmp_path / "missing.pt")  # refused at once
        assert "Setting parameter failed" in output and "checkpoint not found" in output, output
        (tmp_path / "notes.pt").write_text("not a model\n")
        status, output = param("set", tmp_path / "notes.pt")  # refused once it fails to load
        assert "Set parameter successful" in output, output
        spin_until(lambda: logged(f"could not read checkpoint {tmp_path / 'notes.pt'}"), "the refusal")
        spin_until(lambda: str(tmp_path / "other.pt") in param("get")[1], "checkpoint set back")
        refused = len(ids)
        spin_until(lambda: len(ids) >= refused + 10, "tracks after the refusals")
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process_groups([process])
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert text.count("process has finished cleanly") == 2, text[-3000:]
    assert all(frame == list(range(16)) for frame in ids), ids  # the same ids throughout
    assert "re-encoded from their query image 16" in text, text[-3000:]


def _descendants(pid):
    """Process ids below `pid` (Linux /proc)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


@needs_ros2_launch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_adapter_under_ros2_launch_leaves_the_tracker_running(workspace, tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    from bootstap_ros.model import save_checkpoint
    from helpers.small_model import moving_clip, small_model

    save_checkpoint(tmp_path / "small.pt", small_model())
    np.save(tmp_path / "clip.npy", moving_clip(num_frames=10))
    namespace = "adapt_" + uuid.uuid4().hex[:8]
    log = open(tmp_path / "launch.log", "w")
    process = ros2(workspace, "launch", PACKAGE, "tracker.launch.py", f"namespace:={namespace}",
                   f"video:={tmp_path / 'clip.npy'}", f"checkpoint:={tmp_path / 'small.pt'}",
                   "image_topic:=camera/image", "rate:=20.0", "grid_points:=4", "adapt:=true",
                   f"adapter_store:={tmp_path / 'store'}",
                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("adapt_listener", context=context)
    tracks = []
    node.create_subscription(PointCloud2, f"/{namespace}/tracks", tracks.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_until(condition, what, timeout=90):
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, f"the launch ended while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            executor.spin_once(timeout_sec=0.1)

    def adapters():
        return [pid for pid in _descendants(process.pid)
                if b"bootstap_adapter" in Path(f"/proc/{pid}/cmdline").read_bytes()
                and b"--ros-args" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    try:
        spin_until(lambda: len(tracks) > 0, "the first tracks")
        spin_until(lambda: bool(adapters()) and (tmp_path / "store" / "clips").is_dir(), "the adapter")
        os.kill(adapters()[0], signal.SIGKILL)
        spin_until(lambda: "bootstap_adapter-3]: process has died" in (tmp_path / "launch.log").read_text(),
                   "launch to see the adapter die")
        before = len(tracks)
        spin_until(lambda: len(tracks) >= before + 20, "tracks after the kill")
        assert process.poll() is None  # the launch goes on
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process_groups([process])
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert text.count("process has finished cleanly") == 2, text[-3000:]  # the tracker and the video
    assert process.returncode == 0, text[-3000:]

@needs_ros2_launch
def test_ros2_launch_exits_non_zero_when_a_node_fails(workspace, tmp_path):
    process = subprocess.Popen(
        ["bash", "-c", 'source "$1/setup.bash" && shift && exec "$@"', "bash",
         str(workspace / "install"), sys.executable, "-c", ROS2, "launch", PACKAGE,
         "tracker.launch.py", f"namespace:=fail_{uuid.uuid4().hex[:8]}",
         f"video:={tmp_path / 'missing.mp4'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True)
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # the launch did not stop: stop it and all it started
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 1, output[-3000:]
    assert "video_source-2 exited with code 1" in output, output[-3000:]
    assert "finished cleanly" in output  # the tracker was stopped


# ------------------------------------------------------------------ package.xml
# Python modules the ROS code imports that are not ROS packages: their rosdep keys.
# torch has none on every platform (package.xml says to pip-install it).
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml",
               "tqdm": "python3-tqdm", "torch": None}


def imported_modules(paths):
    """Top-level names of every module the files import, also inside functions."""
    import ast

    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_declares_every_ros_package_the_code_imports():
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(REPO / "package.xml").getroot()
    declared = {element.text.strip() for tag in ("depend", "exec_depend")
                for element in root.iter(tag)}
    sources = sorted((REPO / PACKAGE / "ros").glob("*.py")) + sorted((REPO / "launch").glob("*.py"))
    modules = imported_modules(sources) - set(sys.stdlib_module_names) - {PACKAGE, "__future__"}
    assert {"rclpy", "sensor_msgs", "launch_ros"} <= modules  # the scan sees the code's imports
    needed = {ROSDEP_KEYS.get(name, name) for name in modules} - {None}
    assert not needed - declared, f"package.xml lacks <exec_depend> for {sorted(needed - declared)}"


# ------------------------------------------------------------------ Python 3.10 (ROS 2 Humble)
def test_code_needs_at_most_python_3_10(tmp_path):
    # Humble (JetPack 6) runs Python 3.10 and has no wheels to test with; vermin reads the
    # code for the newest syntax, module or member it needs. A file with 3.11-only code
    # is checked alongside, so the check is seen to fail where it should.
    executable = Path(sys.executable).parent / "vermin"
    if not executable.exists():
        pytest.fail(f"vermin not found at {executable}: run `make setup`")
    canary = tmp_path / "needs_3_11.py"
    canary.write_text("import tomllib\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    result = run([str(executable), "--no-tips", "--violations", "--eval-annotations",
                  "--target=3.10-", str(REPO / PACKAGE), str(REPO / "launch"),
                  str(REPO / "training"), str(canary)], timeout=300)
    assert result.returncode != 0 and "except*" in result.stdout, tail(result)
    # One unindented line per file that needs more ("!2, 3.11     path.py"), its reasons below.
    flagged = [line.split()[-1] for line in result.stdout.splitlines()
               if line.rstrip().endswith(".py") and not line[:1].isspace()]
    assert flagged == [str(canary)], f"code that needs Python > 3.10:\n{result.stdout}"


# rclpy APIs that appeared after Humble (Iron and later): the node must run on Humble too.
AFTER_HUMBLE_METHODS = {"add_post_set_parameters_callback", "add_pre_set_parameters_callback",
                        "get_type_description"}
AFTER_HUMBLE_MODULES = {"rclpy.event_handler", "rclpy.type_hash", "rclpy.service_introspection"}


def test_ros_code_uses_only_apis_humble_has():
    import ast

    found = []
    for path in sorted((REPO / PACKAGE / "ros").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                names = [node.attr] if node.attr in AFTER_HUMBLE_METHODS else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {name}" for name in names
                      if name in AFTER_HUMBLE_METHODS or name in AFTER_HUMBLE_MODULES]
    assert not found, "APIs ROS 2 Humble lacks:\n" + "\n".join(found)
