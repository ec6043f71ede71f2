"""The entry-point life cycle shared by the package's nodes: init, spin, clean shutdown."""

from __future__ import annotations

from typing import Callable, Tuple, Type

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(name: str, make_node: Callable[[], Node], startup_errors: Tuple[Type[Exception], ...],
             spin: Callable[[Node], None] = rclpy.spin, args=None) -> int:
    """Create the node and spin it; returns the exit status (1 when it cannot start).

    A start-up error is logged as one fatal line that says what to do, never a
    traceback; Ctrl-C and an external shutdown end the node cleanly.
    """
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = make_node()
        spin(node)
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        _shut_down(node)
    return status


def _shut_down(node) -> None:
    # Ctrl-C in a terminal under `ros2 launch` delivers SIGINT twice (from the terminal
    # and from launch): a second one during clean-up must not end in a traceback.
    steps = ([node.destroy_node] if node is not None else []) + [rclpy.try_shutdown]
    for step in steps:
        try:
            step()
        except KeyboardInterrupt:
            pass
