"""Writes the tracker node's reference page (docs/node-reference.md) from the code.

    python tools/node_reference.py            # writes docs/node-reference.md (make docs-reference)
    python tools/node_reference.py --check    # exit status 1 when the page differs

The page lists the node's topics and service (`interfaces`), the layout of its point
clouds, its parameters (`settings.PARAMETERS`, defaults from `TrackerNodeConfig`) and
the launch file's arguments (read from launch/tracker.launch.py without importing
launch, which is not on PyPI). A test fails when the checked-in page differs, so the
page follows the code. A maintenance tool of the source checkout: no rclpy here, and
nothing of the installed package runs it.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from bootstap_ros.ros.interfaces import INTERFACES, ROLES
from bootstap_ros.ros.settings import PARAMETERS

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "node-reference.md"
LAUNCH_FILE = REPO / "launch" / "tracker.launch.py"
COMMAND = "python tools/node_reference.py"


def cell(text: str) -> str:
    """Text for a Markdown table cell: `|` escaped, and `<` outside code spans too
    (a bare `<image_topic>` would be read as an HTML tag)."""
    parts = re.split(r"(`[^`]*`)", str(text).replace("\n", " "))
    out = []
    for part in parts:
        if not part.startswith("`"):
            part = part.replace("<", "&lt;")
        out.append(part.replace("|", "\\|"))
    return "".join(out)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def yaml_value(value: Any) -> str:
    """A default as it is written in a parameter file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return repr(value)


def parameter_type(spec) -> str:
    if spec.dynamic_typing:
        return "integer or double array"
    value = spec.default
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return "integer array"


def changes(spec) -> str:
    """When a change to the parameter takes effect."""
    if spec.read_only:
        return "restart"
    return "model swap" if spec.swap else "at runtime"


def launch_arguments(path: Path) -> List[Tuple[str, str, str]]:
    """(name, default, description) of each entry of the launch file's ARGUMENTS table."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "ARGUMENTS" for target in node.targets):
            rows = []
            for entry in node.value.elts:
                name, default, description = entry.elts
                if isinstance(default, ast.Constant):
                    default_text = f"`{default.value}`" if default.value else "empty"
                elif isinstance(default, ast.Name) and default.id == "DEFAULT_ADAPTER_PARAMS":
                    default_text = "this package's config/adapter.yaml"
                else:  # DEFAULT_PARAMS: a path computed when the launch file runs
                    default_text = "this package's config/tracker.yaml"
                rows.append((ast.literal_eval(name), default_text, ast.literal_eval(description)))
            return rows
    raise ValueError(f"{path}: no ARGUMENTS = (...) table")


def render(launch_file: Path = LAUNCH_FILE) -> str:
    lines = [
        "# tracker_node reference",
        "",
        f"<!-- Written by `{COMMAND}` from bootstap_ros/ros/interfaces.py, "
        "bootstap_ros/ros/settings.py and launch/tracker.launch.py. Do not edit by hand: "
        "change those files and run the command again. -->",
        "",
        "Everything the node subscribes to, publishes and offers, its parameters and the "
        "launch file's arguments. How the node behaves, with examples: [The ROS 2 node](node.md).",
        "",
        "## Topics and service",
        "",
        "Relative names resolve in the node's namespace (remap them: `-r image:=/camera/image_raw`); "
        "`~/` names are private to the node (`/tracker_node/reset`).",
        "",
    ]
    rows = []
    for role in ROLES:
        for interface in INTERFACES:
            if interface.role == role:
                rows.append((f"`{interface.name}`", role, f"`{interface.type}`",
                             interface.condition or "always", interface.qos or "-",
                             interface.description))
    lines += table(("name", "role", "type", "when", "QoS", "what"), rows)

    lines += ["", "## Point clouds", "",
              "Each point cloud is unordered (height 1, one point per track) and uses the "
              "machine's byte order (`is_bigendian`); padding bytes are zero. Read one with "
              "`sensor_msgs_py.point_cloud2.read_points(msg)` or "
              "`bootstap_ros.ros.conversions.cloud_to_array(msg)`."]
    for interface in INTERFACES:
        if not interface.fields:
            continue
        lines += ["", f"### `{interface.name}`", "", f"`point_step` {interface.point_step}.", ""]
        lines += table(("field", "offset", "type", "meaning"),
                       [(f"`{f.name}`", f.offset, f.type, f.meaning) for f in interface.fields])

    lines += ["", "## Parameters", "",
              "Set them in a parameter file (config/tracker.yaml lists them all with their "
              "defaults; the launch file's `params_file`), with `-p name:=value`, or, where "
              "*changes* says at runtime, with `ros2 param set /tracker_node name value`. A "
              "change to a *model swap* parameter loads a new model in the background, which "
              "takes over between two frames, every point keeping its id "
              "([Swapping the model](model-swap.md)). The others are read at start-up.", ""]
    rows = [(f"`{spec.name}`", parameter_type(spec), f"`{yaml_value(spec.default)}`",
             changes(spec), spec.constraints or "-", spec.description) for spec in PARAMETERS]
    lines += table(("name", "type", "default", "changes", "range or choices", "what"), rows)

    lines += ["", "## Launch arguments", "",
              "`ros2 launch bootstap_ros tracker.launch.py name:=value ...` "
              "(`--show-args` lists them). An argument left empty is not passed on, so the "
              "`params_file`'s value holds.", ""]
    lines += table(("argument", "default", "what"),
                   [(f"`{name}`", default, description)
                    for name, default, description in launch_arguments(launch_file)])
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=PAGE, help=f"default: {PAGE}")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the page differs from what would be written")
    args = parser.parse_args(argv)
    if not LAUNCH_FILE.is_file():
        parser.error(f"{LAUNCH_FILE} not found: run this from a source checkout of bootstap_ros")
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
