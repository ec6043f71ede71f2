"""ROS 2 interface of bootstap_ros: the only modules that import rclpy or message types.

Three layers, as in ros2/demos: the algorithm, outside this package (the tracking
session `tracking.session` drives the tracker with queued requests; `depth` makes
tracks_3d; `render` draws the debug image), pieces that need no running ROS
(`conversions` between messages and numpy, `settings` and `parameters` with the node's
parameters and their defaults, `interfaces` with its topics, `queues` between callbacks
and the worker), and the nodes (`tracker_node`, `video_source`) with their `main` entry
points (`entry`). Importing this package imports nothing heavy; each module imports what
it uses.
"""
