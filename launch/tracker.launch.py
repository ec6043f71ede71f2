"""Launch the BootsTAPIR tracker_node, and with `video:=...` a video_source feeding it.

    ros2 launch bootstap_ros tracker.launch.py image_topic:=/camera/image_raw \
        checkpoint:=/path/to/causal_bootstapir_checkpoint.pt
    ros2 launch bootstap_ros tracker.launch.py video:=/path/to/clip.mp4 checkpoint:=...

Arguments (`ros2 launch bootstap_ros tracker.launch.py --show-args`):
  image_topic   the camera image topic the tracker subscribes to (default: image);
                with image_transport: compressed it reads <image_topic>/compressed
  params_file   parameter file (default: this package's config/tracker.yaml)
  checkpoint    model file; empty: the params_file's value (default there: the embedded model)
  backend       auto | torch | onnxruntime | tensorrt; empty: the params_file's value
  namespace     namespace for the nodes and their relative topics (default: none)
  video         a video file, image folder, .npy clip or camera index: also starts
                video_source publishing it on image_topic (default: none)
  loop, rate, frame_id   video_source's looping (default true), frame rate (0: the file's)
                and header frame_id (default camera)
  click_topic   geometry_msgs/Point topic whose messages add points, e.g. rqt_image_view's
                <image_topic>_mouse_left (default: none, i.e. ~/add_point)
  grid_points   an NxN grid of points seeded on the first frame (or a list [x0, y0, ...]);
                not given: the params_file's (none), but 8 (64 points) with video:=,
                so that `video:=clip.mp4` alone shows tracks on ~/debug_image
  device, precision, resolution, max_points   the tracker parameters of those names
  use_sim_time  both nodes use /clock (true | false)
  propagation   lk | none: every image answered at once (Lucas-Kanade between network
                results), or only the images the network ran on
  query_set     a query set (.npz made by bootstap-queries): points defined on a
                demonstration image, tracked from the start
  use_depth     true: also read depth_topic and camera_info_topic and publish tracks_3d
  depth_topic, camera_info_topic   the depth image (registered to the colour image) and
                the colour image's CameraInfo (defaults: depth, camera_info)
  log_level     the nodes' log level (debug | info | warn | error | fatal)
  adapt         true: also start bootstap_adapter beside the tracker: it records clips of
                image_topic and bootstraps the tracker's model on them in the background,
                swapping in a better one (docs/adapter.md). Default false
  adapter_params_file   the adapter's parameter file (default: config/adapter.yaml)
  adapter_store the adapter's store folder; empty: the adapter_params_file's

Each of these is passed on only when given: otherwise the params_file's value holds.
When the tracker or video_source exits (a missing video, a start-up error, the end of
a video without loop), the whole launch stops; `ros2 launch` then exits with 1 if that
node failed (launch turns an exception raised by an action into exit status 1). The
adapter is different: when it exits or is killed, the tracker goes on with the model
it has (launch logs the exit).
"""

from pathlib import Path

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "bootstap_ros"
# Installed as share/bootstap_ros/launch/, beside share/bootstap_ros/config/ (as in the source tree).
DEFAULT_PARAMS = str(Path(__file__).resolve().parent.parent / "config" / "tracker.yaml")
DEFAULT_ADAPTER_PARAMS = str(Path(__file__).resolve().parent.parent / "config" / "adapter.yaml")

ARGUMENTS = (
    ("image_topic", "image", "Image topic the tracker subscribes to"),
    ("params_file", DEFAULT_PARAMS, "Parameter file of the tracker node"),
    ("checkpoint", "", "Model checkpoint (.pt); empty: the params_file's (the embedded model)"),
    ("backend", "", "auto | torch | onnxruntime | tensorrt; empty: the params_file's"),
    ("namespace", "", "Namespace of the nodes"),
    ("video", "", "Video file, image folder, .npy clip or camera index to publish on image_topic"),
    ("loop", "true", "video_source: start over at the end of the video"),
    ("rate", "0.0", "video_source: frames per second (0: the file's)"),
    ("frame_id", "camera", "video_source: frame_id of the images"),
    ("click_topic", "", "Point topic that adds points (e.g. <image_topic>_mouse_left)"),
    ("grid_points", "", "NxN grid of points seeded on the first frame, or [x0, y0, ...]; empty: "
                        "the params_file's (none), or 8 with video:="),
    ("device", "", "auto | cpu | cuda | cuda:N; empty: the params_file's"),
    ("precision", "", "fp32 | fp16 | bf16 (or auto); empty: the params_file's"),
    ("resolution", "", "Model input resolution, a multiple of 8; empty: the params_file's"),
    ("max_points", "", "Most points tracked at once; empty: the params_file's"),
    ("use_sim_time", "", "true | false: the nodes use /clock; empty: false"),
    ("propagation", "", "lk | none: every image answered at once, or only those the network ran on; "
                        "empty: the params_file's (lk)"),
    ("log_level", "", "debug | info | warn | error | fatal; empty: info"),
    ("query_set", "", "Query set (.npz from bootstap-queries) tracked from the start; empty: the "
                      "params_file's (none)"),
    ("use_depth", "", "true | false: also read depth_topic and camera_info_topic and publish "
                      "tracks_3d; empty: the params_file's (false)"),
    ("depth_topic", "depth", "Depth image registered to the colour image (16UC1 mm or 32FC1 m)"),
    ("camera_info_topic", "camera_info", "CameraInfo of the colour image"),
    ("adapt", "false", "true | false: also run bootstap_adapter, which bootstraps the tracker's model "
                       "on clips of image_topic in the background (docs/adapter.md)"),
    ("adapter_params_file", DEFAULT_ADAPTER_PARAMS, "Parameter file of the adapter node"),
    ("adapter_store", "", "The adapter's store folder (clips, rounds, models); empty: the "
                          "adapter_params_file's"),
)
# grid_points when video:= is given and grid_points is not: a video alone shows tracks.
VIDEO_GRID_POINTS = 8
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
# Seconds launch waits after SIGINT before it escalates to SIGTERM (then SIGKILL 5 s later).
# launch's 5 s is shorter than a CPU network step on a busy machine plus clean-up: the
# tracker, still finishing its frame, was sent SIGTERM (which it ignores while stopping) and
# then SIGKILL. The tracker gives up waiting for its worker after 10 s itself
# (tracker_node.WORKER_STOP_TIMEOUT_S) and exits with status 1; launch must not act first.
TRACKER_SIGTERM_TIMEOUT_S = 15


def _typed(name, text):
    """A launch argument's text as the parameter's type; a clear error names the fix."""
    def fail(expected):
        return ValueError(f"launch argument {name}:={text} is not {expected}")

    if name not in ("grid_points", "resolution", "max_points", "use_sim_time", "use_depth", "adapt"):
        # A string parameter (a path, a choice): launch_ros would read a bare string as
        # YAML, so that a path with ': ' became a mapping or an error.
        return ParameterValue(text, value_type=str)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise fail("valid YAML") from None
    if name == "grid_points":
        numbers = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not (numbers or (isinstance(value, int) and not isinstance(value, bool))):
            raise fail("an integer N (an NxN grid) or a list [x0, y0, x1, y1, ...]")
    elif name in ("resolution", "max_points"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("an integer")
    elif name in ("use_sim_time", "use_depth", "adapt"):
        if not isinstance(value, bool):
            raise fail("true or false")
    return value


def _stop_with(event, context):
    """When a node exits, the launch stops; a failed node makes `ros2 launch` exit non-zero."""
    name = event.action.name
    if event.returncode and not context.is_shutdown:
        # launch returns 1 when an action raises; a Shutdown event alone would return 0.
        raise RuntimeError(f"{name} exited with code {event.returncode}: stopping the launch "
                           "(its log above says why)")
    return [EmitEvent(event=Shutdown(reason=f"{name} exited"))]


def _nodes(context):
    def value(name):
        return LaunchConfiguration(name).perform(context)

    namespace, image_topic = value("namespace"), value("image_topic")
    parameters = [value("params_file")] if value("params_file") else []
    # Only arguments that were given override the file, so an empty one keeps its value.
    overrides = {name: _typed(name, value(name))
                 for name in ("checkpoint", "backend", "grid_points", "device", "precision",
                              "resolution", "max_points", "query_set", "use_depth", "propagation")
                 if value(name)}
    if value("video") and not value("grid_points"):
        overrides["grid_points"] = VIDEO_GRID_POINTS
    common = {}
    if value("use_sim_time"):
        common["use_sim_time"] = _typed("use_sim_time", value("use_sim_time"))
    overrides.update(common)
    if overrides:
        parameters.append(overrides)
    arguments = []
    if value("log_level"):
        if value("log_level").lower() not in LOG_LEVELS:
            raise ValueError(f"launch argument log_level:={value('log_level')} is not one of "
                             f"{', '.join(LOG_LEVELS)}")
        arguments = ["--ros-args", "--log-level", value("log_level").lower()]
    remappings = [("image", image_topic), ("image/compressed", image_topic + "/compressed"),
                  ("depth", value("depth_topic")), ("camera_info", value("camera_info_topic"))]
    if value("click_topic"):
        remappings.append(("~/add_point", value("click_topic")))
    nodes = [Node(package=PACKAGE, executable="tracker_node", name="tracker_node",
                  namespace=namespace, parameters=parameters, remappings=remappings,
                  arguments=arguments, output="screen", emulate_tty=True,
                  sigterm_timeout=str(TRACKER_SIGTERM_TIMEOUT_S))]
    if value("video"):
        nodes.append(Node(
            package=PACKAGE, executable="video_source", name="video_source", namespace=namespace,
            parameters=[{"source": value("video"), "loop": value("loop").lower() == "true",
                         "rate": float(value("rate")), "frame_id": value("frame_id"), **common}],
            remappings=[("image", image_topic)], arguments=arguments, output="screen",
            emulate_tty=True))
    handlers = [RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_stop_with))
                for node in nodes]
    if value("adapt") and _typed("adapt", value("adapt")):
        # No exit handler: the tracker runs on whatever becomes of the adapter.
        adapter_parameters = [value("adapter_params_file")] if value("adapter_params_file") else []
        adapter_overrides = dict(common)
        if value("adapter_store"):
            adapter_overrides["store"] = _typed("adapter_store", value("adapter_store"))
        if adapter_overrides:
            adapter_parameters.append(adapter_overrides)
        nodes.append(Node(
            package=PACKAGE, executable="bootstap_adapter", name="bootstap_adapter",
            namespace=namespace, parameters=adapter_parameters,
            remappings=[("image", image_topic), ("image/compressed", image_topic + "/compressed")],
            arguments=arguments, output="screen", emulate_tty=True))
    return nodes + handlers


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
