"""ROS 2 interface of bootstap_ros: the only modules that import rclpy or message types.

Three layers, as in ros2/demos: pure pieces that need no running ROS
(`conversions` between messages and numpy, `session` which drives the tracker
with queued requests, `settings` with the node's parameters and their defaults,
`queues`), the nodes (`tracker_node`, `video_source`) and their `main` entry
points. Importing this package imports nothing heavy; each module imports what it uses.
"""
