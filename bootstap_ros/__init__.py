"""bootstap_ros: real-time causal BootsTAPIR point tracking for ROS 2.

Importing this package is cheap: torch, rclpy, onnxruntime and the like are
imported by the modules that use them, never here.
"""

__version__ = "0.1.0"
