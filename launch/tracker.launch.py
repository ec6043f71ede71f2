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
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "bootstap_ros"
# Installed as share/bootstap_ros/launch/, beside share/bootstap_ros/config/ (as in the source tree).
DEFAULT_PARAMS = str(Path(__file__).resolve().parent.parent / "config" / "tracker.yaml")

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
)


def _nodes(context):
    def value(name):
        return LaunchConfiguration(name).perform(context)

    namespace, image_topic = value("namespace"), value("image_topic")
    parameters = [value("params_file")] if value("params_file") else []
    # Only arguments that were given override the file, so an empty one keeps its value.
    overrides = {name: value(name) for name in ("checkpoint", "backend") if value(name)}
    if overrides:
        parameters.append(overrides)
    remappings = [("image", image_topic), ("image/compressed", image_topic + "/compressed")]
    if value("click_topic"):
        remappings.append(("~/add_point", value("click_topic")))
    nodes = [Node(package=PACKAGE, executable="tracker_node", name="tracker_node",
                  namespace=namespace, parameters=parameters, remappings=remappings,
                  output="screen", emulate_tty=True)]
    if value("video"):
        nodes.append(Node(
            package=PACKAGE, executable="video_source", name="video_source", namespace=namespace,
            parameters=[{"source": value("video"), "loop": value("loop").lower() == "true",
                         "rate": float(value("rate")), "frame_id": value("frame_id")}],
            remappings=[("image", image_topic)], output="screen", emulate_tty=True))
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
