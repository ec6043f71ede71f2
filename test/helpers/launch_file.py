"""The launch file loaded with recorders standing in for launch and launch_ros (not on PyPI),
and the nodes it makes for given launch arguments."""

import importlib.util
import sys
import types
from pathlib import Path

LAUNCH_FILE = Path(__file__).resolve().parents[2] / "launch" / "tracker.launch.py"


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _ParameterValue(str):
    """launch_ros's ParameterValue for a string: compares as the string, keeps value_type."""

    def __new__(cls, value, value_type=None):
        made = super().__new__(cls, value)
        made.value_type = value_type
        return made


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


def load_launch_file(monkeypatch):
    """The launch module, with launch and launch_ros stood in for by recorders."""
    stubs = {
        "launch": types.SimpleNamespace(LaunchDescription=_Recorded),
        "launch.actions": types.SimpleNamespace(
            DeclareLaunchArgument=_Recorded, OpaqueFunction=_Recorded, EmitEvent=_Recorded,
            RegisterEventHandler=_Recorded),
        "launch.event_handlers": types.SimpleNamespace(OnProcessExit=_Recorded),
        "launch.events": types.SimpleNamespace(Shutdown=_Recorded),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=_LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=_Recorded),
        "launch_ros.parameter_descriptions": types.SimpleNamespace(ParameterValue=_ParameterValue),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("tracker_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_nodes(module, **given):
    """The nodes and the other actions the launch file makes for these arguments."""
    description = module.generate_launch_description()
    actions = description.args[0]
    arguments = {a.args[0] if a.args else a.kwargs["name"]: a.kwargs["default_value"]
                 for a in actions if "default_value" in a.kwargs}
    unknown = set(given) - set(arguments)
    assert not unknown, f"not declared: {unknown}"
    made = actions[-1].kwargs["function"](dict(arguments, **given))
    nodes = {a.kwargs["executable"]: a.kwargs for a in made if "executable" in a.kwargs}
    return nodes, [a for a in made if "executable" not in a.kwargs]
