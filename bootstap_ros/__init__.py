"""bootstap_ros: real-time causal BootsTAPIR point tracking for ROS 2.

Importing this package is cheap: torch, rclpy, onnxruntime and the like are
imported by the modules that use them, never here. `__version__` is read from
package.xml on first use (`bootstap_ros._version`).
"""


def __getattr__(name):
    if name == "__version__":
        from bootstap_ros._version import version

        return version()
    raise AttributeError(f"module 'bootstap_ros' has no attribute {name!r}")
