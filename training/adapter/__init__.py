"""The on-robot adapter: the clip store, the bootstrapping rounds and their decision
(`clip_store`, `adaptation`, no ROS), and the ROS node with its settings (`node`, `settings`)."""
